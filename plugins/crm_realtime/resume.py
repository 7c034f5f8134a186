"""Resuming a socket: replaying the event log after a client's ``lastEventId``, then going live.

A client that connects with ``auth: {token, lastEventId: N}`` (or joins a room with
``lastEventId``) must receive every event after ``N`` it may see, in order and once, and then the
live events, with no gap and no duplicate at the seam. :class:`DeliveryGate` makes the seam:

1. **hold**: from before the socket enters its rooms, live events for it are kept in a buffer
   instead of being sent;
2. **replay**: the log is read after ``N`` (in pages, filtered like the live rooms) and each event
   is sent to the socket; their ids are remembered;
3. **release**: the buffered live events are sent in order, minus those the replay already sent;
   then the socket is live again. A live event can still come after the release for an id the
   replay sent (committed before the last page was read, emitted a moment later): it is skipped
   too. Live emits are in id order, so once the live path passed the highest replayed id, nothing
   more can repeat and the ids are forgotten.

Ids are dense and in commit order (the event log's counter row), so "every event after ``N``" is a
complete description of what a client missed.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["DeliveryGate", "parse_last_event_id"]


def parse_last_event_id(value: Any) -> int | None:
    """``lastEventId`` from a client: ``None`` (absent or null: no replay) or an integer ≥ 0.

    Raises:
        ValueError: naming the value received and what is expected.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    shown = repr(value)[:40]
    raise ValueError(
        f"lastEventId must be the integer eventId of the last event received (0 for everything kept), "
        f"got {shown}"
    )


class _Held:
    """One socket's replays in progress: the live events kept back and the ids the replays sent."""

    __slots__ = ("events", "holds", "lock", "sent")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.holds = 0
        self.events: list[tuple[int, Any]] = []
        self.sent: set[int] = set()


class DeliveryGate:
    """Which live events a socket gets while, and just after, the log is replayed to it.

    Use: ``lock = gate.hold(sid)`` before the socket enters the rooms; replay under ``lock``,
    calling :meth:`replayed` for each event sent; then, if :meth:`release` says so, send what
    :meth:`next_held` returns until it returns ``None``. Overlapping replays of one socket (a join
    during the connect's replay) keep the events back until the last one is released.

    Sockets that never resumed cost the live path nothing while no replay is going on, one dict
    lookup otherwise. ``frames`` are whatever the emitter sends (opaque here).
    """

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self._after: dict[str, tuple[int, set[int]]] = {}
        """Per socket: (highest id replayed, the replayed ids the live path may still bring)."""

    @property
    def idle(self) -> bool:
        """No replay running or settling: every live event goes to every recipient."""
        return not self._held and not self._after

    def admit(self, sid: str, event_id: int | None, frames: Any) -> bool:
        """Whether a live event goes to ``sid`` now (``False``: kept back, or the replay sent it)."""
        held = self._held.get(sid)
        if held is not None:
            held.events.append((event_id or 0, frames))
            return False
        after = self._after.get(sid)
        return after is None or event_id is None or event_id not in after[1]

    def passed(self, event_id: int | None) -> None:
        """The live path emitted ``event_id``: replayed ids up to it can no longer repeat."""
        if event_id is None or not self._after:
            return
        for sid in [s for s, (top, _) in self._after.items() if top <= event_id]:
            del self._after[sid]

    def hold(self, sid: str) -> asyncio.Lock:
        """Keep live events for ``sid`` back from now on; returns the lock its replays run under."""
        held = self._held.get(sid)
        if held is None:
            held = self._held[sid] = _Held()
        held.holds += 1
        return held.lock

    def replayed(self, sid: str, event_id: int) -> None:
        """A replay sent ``event_id`` to ``sid``."""
        held = self._held.get(sid)
        if held is not None:
            held.sent.add(event_id)

    def release(self, sid: str) -> bool:
        """One replay of ``sid`` is over; ``True`` when it was the last: flush with :meth:`next_held`."""
        held = self._held.get(sid)
        if held is None:
            return False
        held.holds -= 1
        return held.holds <= 0

    def next_held(self, sid: str) -> tuple[int, Any] | None:
        """The oldest live event kept back that no replay sent; ``None`` makes the socket live.

        Between the last kept event returned and the socket going live there is no await, so no
        live event can slip in between or be lost.
        """
        held = self._held.get(sid)
        if held is None:
            return None
        while held.events:
            event_id, frames = held.events.pop(0)
            if event_id not in held.sent:
                return event_id, frames
        if held.holds > 0:  # another replay started meanwhile: it will flush
            return None
        del self._held[sid]
        if held.sent:
            previous = self._after.get(sid)
            top = max(held.sent)
            if previous is not None:
                self._after[sid] = (max(top, previous[0]), previous[1] | held.sent)
            else:
                self._after[sid] = (top, held.sent)
        return None

    def forget(self, sid: str) -> None:
        """The socket is gone."""
        self._held.pop(sid, None)
        self._after.pop(sid, None)
