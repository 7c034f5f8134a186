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
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Pacer"]

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
