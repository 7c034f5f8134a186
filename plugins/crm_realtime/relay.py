"""The health of the Redis relay between processes: up or down, logged once per change.

With ``redis.url`` set, each process publishes its emits on a Redis channel and listens to the
others'. When Redis is unreachable, python-socketio logs two errors per emit ("Cannot publish to
redis... retrying", "... giving up") and one per listener retry, and nothing says when it is back.
:class:`RelayHealth` replaces that with a state: it is fed by the publishing side (every emit) and
the listening side (every message heard, every listener error), logs the change to ``down`` once
and the change back to ``up`` once, counts outages and failed relays in metrics, and answers
``GET /ready`` (check ``relay``). Nothing is lost meanwhile: each process reads the events the
relay did not bring from the event log (:mod:`plugins.crm_realtime.feed`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ListenerLog", "RelayHealth"]

log = logging.getLogger("zaphub.crm_realtime")

Side = Literal["publish", "listen"]


class RelayHealth:
    """Whether this process can publish to and hear from the Redis channel.

    Args:
        registry: where its metrics go.
        describe: the Redis URL as shown in logs (password masked).
    """

    def __init__(self, registry: CollectorRegistry, describe: str) -> None:
        self.describe = describe
        self._broken: dict[Side, str] = {}
        self._down_since: float | None = None
        self._lost = 0
        self.m_up = Gauge(
            "zaphub_crm_relay_up", "1 while the Redis relay publishes and listens, else 0.", registry=registry
        )
        self.m_outages = Counter(
            "zaphub_crm_relay_outages", "Times the Redis relay went down.", registry=registry
        )
        self.m_failures = Counter(
            "zaphub_crm_relay_failures",
            "Relay failures by side: publish (an event not relayed), listen (the listener lost Redis).",
            ["side"],
            registry=registry,
        )
        self.m_up.set(1)

    @property
    def up(self) -> bool:
        """Both sides work (as far as the last attempt of each tells)."""
        return not self._broken

    def failed(self, side: Side, cause: str) -> None:
        """One side failed (``cause``: the error, a few words); logs only the change to down."""
        self.m_failures.labels(side=side).inc()
        if side == "publish":
            self._lost += 1
        if side in self._broken:
            return
        self._broken[side] = cause
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self.m_up.set(0)
        self.m_outages.inc()
        log.error(
            "Redis relay DOWN (%s: %s, %s): until it is back, events reach the other processes from the "
            "event log (about a second late, counted in zaphub_crm_events_from_log_total); failures are "
            "counted in zaphub_crm_relay_failures_total",
            side,
            cause,
            self.describe,
        )

    def worked(self, side: Side) -> None:
        """One side worked; logs the change back to up once both do."""
        if self._broken.pop(side, None) is None or self._broken or self._down_since is None:
            return
        lasted = time.monotonic() - self._down_since
        lost, self._lost = self._lost, 0
        self._down_since = None
        self.m_up.set(1)
        log.warning(
            "Redis relay back after %.0f s; %d events could not be relayed meanwhile (read from the log)",
            lasted,
            lost,
        )

    def problem(self) -> str | None:
        """``None`` while up; else what is broken (for ``GET /ready``)."""
        if self.up or self._down_since is None:
            return None
        since = time.monotonic() - self._down_since
        parts = "; ".join(f"{side}: {cause}" for side, cause in self._broken.items())
        return f"Redis relay down for {since:.0f} s ({parts})"


class ListenerLog:
    """The logger python-socketio's Redis manager gets: its errors become :class:`RelayHealth` state.

    The manager's own publishing is replaced (see ``realtime._RedisDirectEmit``), so the errors
    it still logs come from its listener ("Cannot receive from redis... retrying in N secs").
    Everything else goes to the ``socketio`` logger at debug level.
    """

    def __init__(self, health: RelayHealth) -> None:
        self.health = health
        self._debug = logging.getLogger("socketio")

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """A listener failure."""
        extra = kwargs.get("extra") or {}
        cause = str(extra.get("redis_exception") or (msg % args if args else msg))
        self.health.failed("listen", cause[:200])

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Same as :meth:`error`."""
        self.error(msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Debug output."""
        self._debug.debug(msg, *args, **kwargs)

    info = warning
    debug = warning
