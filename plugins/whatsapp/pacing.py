"""Client-side pacing, so ordinary use never earns Meta's throttling errors.

Two token buckets must both have a token before a message goes out:

- one per business number, ``rate`` messages per second with ``burst`` capacity: Meta's
  throughput limit (80 mps by default, 20 for coexistence numbers; over it → ``130429``);
- one per (business number, recipient) pair, one message per ``pair_interval`` seconds with
  ``pair_burst`` capacity: Meta's pair rate limit (1 message / 6 s to the same user, short
  bursts tolerated; over it → ``131056``).

:meth:`Pacer.try_acquire` never blocks: it takes both tokens or tells the caller how long to
wait, so the outbox worker can serve other recipients meanwhile. Not thread-safe; meant for one
event loop (it never awaits, so calls are atomic there).

With ``redis.url`` set, :class:`SharedPacer` keeps the same two buckets in Redis, so every process
sending for a number draws from one budget: N processes send at the configured rate, not N times
it. Taking both tokens is one Lua script (atomic in Redis, timed by Redis's clock, so the
processes' clocks need not agree). While Redis cannot be reached, each process falls back to its
own :class:`Pacer` (sends go on; with several processes the combined rate may exceed Meta's limit,
whose ``130429`` answers are retried), logged once when pacing degrades and once when it is shared
again, and counted in metrics.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["Pacer", "SharedPacer"]

log = logging.getLogger("zaphub.whatsapp.pacing")

_EPSILON = 1e-9


class _Bucket:
    """A token bucket refilled lazily from the clock (no timers)."""

    __slots__ = ("capacity", "per_second", "tokens", "updated")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.tokens = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.per_second)
            self.updated = now

    def wait(self) -> float:
        """Seconds until one token is available (0.0 if one is there now); call after refill."""
        missing = 1.0 - self.tokens
        # Tolerate float drift from many small refills: a caller that waited exactly the
        # announced time must get its token, not another wait of 1e-16 s.
        return 0.0 if missing <= _EPSILON else missing / self.per_second


class Pacer:
    """Per-number and per-recipient token buckets; see the module docstring.

    Args:
        rate: messages per second per business number.
        burst: how many messages a number may send at once after being idle; default ``rate``.
        pair_interval: seconds per message to one recipient, sustained.
        pair_burst: how many messages one recipient may get at once after being idle.
        clock: a monotonic clock in seconds (inject a fake one in tests).

    Example:
        >>> wait = pacer.try_acquire(phone_number_id, wa_id)
        >>> if wait:  # nothing was taken: serve someone else and come back in `wait` seconds
        ...     requeue(message, delay=wait)
    """

    def __init__(
        self,
        *,
        rate: float = 80.0,
        burst: int | None = None,
        pair_interval: float = 6.0,
        pair_burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or pair_interval <= 0:
            raise ValueError("rate and pair_interval must be positive")
        self._rate = float(rate)
        self._burst = float(burst if burst is not None else max(1, round(rate)))
        if self._burst < 1 or pair_burst < 1:
            raise ValueError("burst and pair_burst must be at least 1")
        self._pair_per_second = 1.0 / pair_interval
        self._pair_burst = float(pair_burst)
        # An untouched pair bucket is full again after this long, i.e. the same as no bucket.
        self._pair_idle = pair_burst * pair_interval
        self._clock = clock
        self._numbers: dict[str, _Bucket] = {}
        # Ordered by last use, oldest first, so forgetting idle pairs only ever looks at the front.
        self._pairs: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many recipients are currently tracked (idle ones are forgotten)."""
        return len(self._pairs)

    def try_acquire(self, phone_number_id: str, recipient: str) -> float:
        """Take a send slot for ``recipient`` on ``phone_number_id`` if both buckets allow it.

        Args:
            phone_number_id: the business number sending.
            recipient: the recipient's ``wa_id``.

        Returns:
            ``0.0`` when a slot was taken (send now); otherwise the seconds to wait before asking
            again, and nothing was taken. Amortised O(1).
        """
        now = self._clock()
        self._forget_idle(now)

        number = self._numbers.get(phone_number_id)
        if number is None:
            number = self._numbers[phone_number_id] = _Bucket(self._burst, self._rate, now)
        else:
            number.refill(now)

        key = (phone_number_id, recipient)
        pair = self._pairs.get(key)
        if pair is not None:
            pair.refill(now)
            self._pairs.move_to_end(key)  # keeps the dict ordered by `updated`
        wait = max(number.wait(), pair.wait() if pair is not None else 0.0)
        if wait > 0:
            return wait

        if pair is None:
            # Created only when a token is taken: refused callers leave no state behind.
            pair = self._pairs[key] = _Bucket(self._pair_burst, self._pair_per_second, now)
        number.tokens -= 1.0
        pair.tokens -= 1.0
        return 0.0

    def _forget_idle(self, now: float) -> None:
        pairs = self._pairs
        while pairs:
            key, oldest = next(iter(pairs.items()))
            if now - oldest.updated < self._pair_idle:
                break
            del pairs[key]


# KEYS: the number's bucket, the pair's bucket. ARGV: rate, burst, pair rate, pair burst.
# Returns "0" when both tokens were taken, else the seconds to wait (nothing taken). Strings,
# because Redis turns a Lua number into an integer. A bucket is a hash {tokens, ts}; an absent
# one is full, and it expires once it would be full again, so idle recipients leave nothing.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, capacity, per_second)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then return capacity end
  if now > ts then tokens = math.min(capacity, tokens + (now - ts) * per_second) end
  return tokens
end
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local pair_rate, pair_burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local number = level(KEYS[1], burst, rate)
local pair = level(KEYS[2], pair_burst, pair_rate)
local wait = 0
if 1 - number > 1e-9 then wait = (1 - number) / rate end
if 1 - pair > 1e-9 then wait = math.max(wait, (1 - pair) / pair_rate) end
if wait > 0 then return string.format('%.6f', wait) end
local stamp = string.format('%.6f', now)
redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', number - 1), 'ts', stamp)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
redis.call('HSET', KEYS[2], 'tokens', string.format('%.9f', pair - 1), 'ts', stamp)
redis.call('PEXPIRE', KEYS[2], math.ceil(pair_burst / pair_rate * 1000) + 1000)
return '0'
"""


class SharedPacer:
    """:class:`Pacer`'s buckets in Redis, shared by every process; see the module docstring.

    Args:
        redis: the client (``redis.url``); short socket timeouts keep a hung Redis from stalling sends.
        fallback: the per-process pacer used while Redis fails.
        registry: where its metrics go.
        describe: the Redis URL as shown in logs (password masked).
        rate, burst, pair_interval, pair_burst: as for :class:`Pacer`.
        prefix: key prefix in Redis.
        recheck_seconds: while down, how long to pace locally before trying Redis again.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        fallback: Pacer,
        registry: CollectorRegistry,
        describe: str,
        rate: float = 80.0,
        burst: int | None = None,
        pair_interval: float = 6.0,
        pair_burst: int = 10,
        prefix: str = "zaphub:pacing:",
        recheck_seconds: float = 5.0,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(_ACQUIRE)
        self._fallback = fallback
        self._args = [
            rate,
            burst if burst is not None else max(1, round(rate)),
            1.0 / pair_interval,
            pair_burst,
        ]
        self._prefix = prefix
        self._describe = describe
        self._recheck = recheck_seconds
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._local_since_down = 0
        self.m_up = Gauge(
            "zaphub_whatsapp_shared_pacing_up",
            "1 while send pacing is shared through Redis, 0 while each process paces alone.",
            registry=registry,
        )
        self.m_local = Counter(
            "zaphub_whatsapp_pacing_local",
            "Sends paced by this process alone because Redis could not be reached.",
            registry=registry,
        )
        self.m_up.set(1)

    @property
    def shared(self) -> bool:
        """Whether the last decision was taken in Redis."""
        return self._down_since is None

    async def try_acquire(self, phone_number_id: str, recipient: str) -> float:
        """As :meth:`Pacer.try_acquire`, across every process sharing Redis."""
        if self._down_since is None or time.monotonic() >= self._retry_at:
            # The hash tag {number} keeps both keys in one Redis Cluster slot (a script needs that).
            base = f"{self._prefix}{{{phone_number_id}}}"
            try:
                answer = await self._script(
                    keys=[f"{base}:rate", f"{base}:pair:{recipient}"], args=self._args
                )
            except (RedisError, OSError) as exc:
                self._went_down(exc)
            else:
                self._came_back()
                return float(answer)
        self._local_since_down += 1
        self.m_local.inc()
        return self._fallback.try_acquire(phone_number_id, recipient)

    def _went_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._retry_at = now + self._recheck
        if self._down_since is not None:
            return
        self._down_since = now
        self._local_since_down = 0
        self.m_up.set(0)
        log.error(
            "send pacing is no longer shared (Redis %s: %s: %s): each process paces alone until Redis is "
            "back, so several processes together may exceed Meta's rate (its 130429 answers are "
            "retried); counted in zaphub_whatsapp_pacing_local_total",
            self._describe,
            type(exc).__name__,
            exc,
        )

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        log.warning(
            "send pacing is shared through Redis again after %.0f s (%d send(s) paced locally meanwhile)",
            time.monotonic() - self._down_since,
            self._local_since_down,
        )
        self._down_since = None
        self.m_up.set(1)
