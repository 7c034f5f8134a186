"""The Socket.IO side: the ``/crm`` namespace, its rooms, and the ordered, non-blocking emit queue.

Rooms (per process; with Redis, emits reach the rooms of every process):

- ``scope:all``: every socket whose token has no scope claim;
- ``pnid:{phone_number_id}``: sockets whose scope lists that business number;
- ``conversation:{id}`` / ``message:{id}``: joined on request, after checking that the
  conversation or message exists and is in the token's scope.

Which rooms an event goes to is one line per event type in :data:`ROUTES` (a logged type
without a line is not emitted, and logged as a mistake): ``whatsapp:message`` and
``whatsapp:message_sent`` go to ``["scope:all", "pnid:{n}"]``; ``whatsapp:message_status`` to
``["conversation:{c}", "message:{m}"]``; ``whatsapp:conversation_updated`` to
``["conversation:{c}", "scope:all", "pnid:{n}"]``; an edit, deletion or reaction
(``whatsapp:message_updated``, ``_deleted``, ``_reaction``) to all four. The same line decides
which resume replays it (:meth:`Realtime._replay`). python-socketio merges the members of the
rooms of one emit into one set (``BaseManager.get_participants``), so a socket in several of
them gets the event once.

A client must connect ``/crm`` (the configured namespace): any other namespace, ``/``
included, is refused with a ``connect_error`` naming the right one. An Engine.IO connection
without a connected namespace holds a file descriptor for nothing, so it is closed: one second
after a refused connect (the ``connect_error`` is delivered first), or ``connect_timeout_seconds``
after it opened.

Hooks only enqueue (``put_nowait``): one task emits in order (:class:`plugins.crm_realtime.feed.SocketFeed`,
which also takes events relayed by other processes and reads the log for anything missed), a
batch of events at a time. Each event is encoded once; each recipient's frames of the batch are
written to its websocket at once, or put on that client's own Engine.IO queue when it is busy
(:mod:`plugins.crm_realtime.wire`), and the emit returns: a slow or dead client delays nobody; it
is dropped by the heartbeat (``ping_interval + ping_timeout``). A client
that reconnects with ``lastEventId`` gets what it missed from the log
(:mod:`plugins.crm_realtime.resume`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import socketio
from prometheus_client import Counter, Gauge

from core.config import redact_url
from core.errors import StorageError
from core.event_payloads import (
    EVENT_CONVERSATION,
    EVENT_DELETED,
    EVENT_MESSAGE,
    EVENT_REACTION,
    EVENT_SENT,
    EVENT_STATUS,
    EVENT_UPDATED,
)
from core.logs import Throttle
from core.models import Conversation, Event, Message
from plugins.crm_realtime.auth import Agent, AuthError, TokenVerifier, forbidden_message
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.crm_realtime.feed import SocketFeed, relay_message, relayed_event
from plugins.crm_realtime.relay import ListenerLog, RelayHealth
from plugins.crm_realtime.resume import DeliveryGate, parse_last_event_id
from plugins.crm_realtime.wire import Frames, SocketWriter, with_event_id

if TYPE_CHECKING:
    from core.host import Host

__all__ = [
    "ALL_ROOM",
    "MAX_ID",
    "ROUTES",
    "CrmNamespace",
    "Realtime",
    "Route",
    "conversation_room",
    "message_room",
    "parse_id",
    "scope_room",
]

log = logging.getLogger("zaphub.crm_realtime")

ALL_ROOM = "scope:all"
MAX_ID = 2**63 - 1
"""Ids are 64-bit in storage; anything larger cannot exist."""

REFUSED_GRACE_SECONDS = 1.0
"""How long a refused connection stays open (to receive ``connect_error`` or connect elsewhere)."""
REAP_INTERVAL_SECONDS = 0.25
RELAY_PROBE_SECONDS = 1.0
RELAY_CONNECT_TIMEOUT_SECONDS = 2.0

EVENT_RESYNC = "resync_required"
REPLAY_PAGE = 500
"""Events read from the log (and sent) at a time when replaying to a resuming socket."""
YIELD_EVERY = 256
"""Sockets written to between two yields to the event loop during one batch's fan-out.

One ``send()`` costs a few µs, so a batch to 1,000 sockets holds the event loop for several ms:
without yields, webhooks arriving meanwhile wait for the whole fan-out before they are read,
stored and acknowledged, and their own fan-out starts later. A yield is one event-loop pass.
"""


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """Which sockets receive an event type, live and when resuming.

    The same rule serves live emits and replays, so a socket resuming gets exactly what it
    would have got connected.
    """

    scope: bool = False
    """Every socket whose token may see the event's business number (rooms ``scope:all`` and
    ``pnid:{phoneNumberId}``). Replayed on connect with ``lastEventId``."""
    conversation: bool = False
    """Sockets in the room ``conversation:{conversationId}``. Replayed by ``join_conversation``
    with ``lastEventId``, unless ``scope`` (then the connect's replay sent it)."""
    message: bool = False
    """Sockets in the room ``message:{messageId}``. Replayed by ``join_message`` likewise."""


ROUTES: dict[str, Route] = {
    EVENT_MESSAGE: Route(scope=True),
    EVENT_SENT: Route(scope=True),
    EVENT_STATUS: Route(conversation=True, message=True),
    EVENT_CONVERSATION: Route(scope=True, conversation=True),
    EVENT_UPDATED: Route(scope=True, conversation=True, message=True),
    EVENT_DELETED: Route(scope=True, conversation=True, message=True),
    EVENT_REACTION: Route(scope=True, conversation=True, message=True),
}
"""Every logged event type's audience: one line per type (docs/events.md, "Who receives what")."""


def replayed_types(kind: str) -> list[str]:
    """The event types a resume replays: ``connect``, or a join of ``conversation`` / ``message``."""
    if kind == "connect":
        return [t for t, r in ROUTES.items() if r.scope]
    return [t for t, r in ROUTES.items() if not r.scope and getattr(r, kind)]


def scope_room(phone_number_id: str) -> str:
    """The room of sockets scoped to one business number."""
    return f"pnid:{phone_number_id}"


def conversation_room(conversation_id: int) -> str:
    """The room of a conversation (``join_conversation``)."""
    return f"conversation:{conversation_id}"


def message_room(message_id: int) -> str:
    """The room of a message (``join_message``)."""
    return f"message:{message_id}"


def parse_id(value: Any, what: str) -> int:
    """A positive integer id from a JSON number or a string of digits.

    The seed's client sends numbers (``{conversationId: 123}``); strings of digits are accepted
    too because ids often travel through URLs and form fields.

    Raises:
        ValueError: with a message naming ``what`` and the value received.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        digits = value.strip().lstrip("0") or "0"
        if len(digits) > len(str(MAX_ID)):  # int() of thousands of digits raises its own error
            raise ValueError(f"{what} must be a positive integer id, got {len(digits)} digits")
        number = int(digits)
    else:
        shown = "nothing" if value is None else repr(value)[:40]
        raise ValueError(f"{what} must be an integer id, got {shown}")
    if not 0 < number <= MAX_ID:
        raise ValueError(f"{what} must be a positive integer id, got {number}")
    return number


class _DirectEmit(socketio.AsyncManager):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's manager, writing through :class:`SocketWriter`, plus the resume gate.

    ``AsyncManager.emit`` encodes the packet for each recipient and wraps each send in an asyncio
    task; here an event is encoded once (:class:`Frames`) and each recipient's frames go to
    :attr:`writer`, which writes them to the websocket at once or queues them on the client's own
    Engine.IO queue: a slow or dead client delays nobody. Emits with an ack callback (a packet per
    client) and emits of anything but one dict keep the library's path.

    Every live emit of an event (a payload with ``eventId``) passes :attr:`gate`, which keeps it
    back from a socket being replayed to and skips what the replay already sent
    (:mod:`plugins.crm_realtime.resume`).
    """

    gate: DeliveryGate
    writer: SocketWriter
    yield_every: int = YIELD_EVERY
    """Sockets written to between two yields to the event loop (:data:`YIELD_EVERY`)."""

    def frames(self, event: str, data: dict[str, Any], namespace: str) -> Frames:
        """One Socket.IO event, encoded once for every recipient."""
        return Frames(namespace, event, msgspec.json.encode(data))

    async def send_frames(self, sid: str, namespace: str, frames: Sequence[Frames]) -> bool:
        """Send encoded events to one socket, in order; ``False`` when it is gone."""
        eio_sid = self.eio_sid_from_sid(sid, namespace)
        if eio_sid is None:
            return False
        await self.writer.deliver([(eio_sid, frames)])
        return True

    async def emit_frames(self, namespace: str, events: Iterable[tuple[list[str], Frames]]) -> None:
        """Emit encoded events (each to its rooms) to this process's sockets.

        Each socket gets all its frames of the batch together. Which socket gets what is decided
        for the whole batch before the first write, without an await, as the gate requires; the
        writes then yield to the event loop every :attr:`yield_every` sockets (:data:`YIELD_EVERY`).
        """
        if namespace not in self.rooms:
            return  # nobody connected yet
        gate = self.gate
        # A socket's frames of the batch. Most sockets get one event of a batch, so they share
        # that event's 1-tuple; a list is made only for a socket that gets a second one. Nothing
        # per socket outlives the fan-out: an object per recipient alive across it (1,000 sockets:
        # 1,000 per event) triggered a young garbage collection per event and, promoted by them,
        # a full collection every few seconds, which walks every session (docs/benchmarks.md).
        batches: dict[str, Sequence[Frames]] = {}
        for rooms, frames in events:
            event_id = frames.event_id
            gated = event_id is not None and not gate.idle
            alone = (frames,)
            for sid, eio_sid in self.get_participants(namespace, rooms):
                if gated and not gate.admit(sid, event_id, frames):
                    continue
                batch = batches.get(eio_sid)
                if batch is None:
                    batches[eio_sid] = alone
                elif type(batch) is tuple:
                    batches[eio_sid] = [*batch, frames]
                else:
                    batch.append(frames)  # type: ignore[attr-defined]  # a list, made just above
            gate.passed(event_id)
        every = self.yield_every
        if len(batches) <= every:
            await self.writer.deliver(batches.items())
            return
        sids = list(batches)  # the keys only: (sid, frames) pairs are made as each is written
        for start in range(0, len(sids), every):
            chunk = sids[start : start + every]
            if start:
                await asyncio.sleep(0)
                if not gate.idle:
                    readmitted = self._readmit(namespace, [(sid, batches[sid]) for sid in chunk])
                    await self.writer.deliver(readmitted)
                    continue
            await self.writer.deliver((sid, batches[sid]) for sid in chunk)

    def _readmit(
        self, namespace: str, chunk: list[tuple[str, Sequence[Frames]]]
    ) -> list[tuple[str, Sequence[Frames]]]:
        """Pass ``chunk``'s logged frames through the gate again: a replay began or ended meanwhile.

        A socket that started resuming during the yield (a ``join_*`` with ``lastEventId``) gets
        them kept back like any live event, and the replay's own copy is not sent twice; one
        whose replay ended meanwhile skips what that replay sent. Admitted once more, a frame
        meets the same rule it would have met had the yield not happened.
        """
        gate = self.gate
        kept: list[tuple[str, Sequence[Frames]]] = []
        for eio_sid, frames in chunk:
            sid = self.sid_from_eio_sid(eio_sid, namespace)
            if sid is None:
                continue  # gone: nothing to deliver to it
            admitted = [f for f in frames if f.event_id is None or gate.admit(sid, f.event_id, f)]
            if admitted:
                kept.append((eio_sid, admitted))
        return kept

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        """Same contract as ``socketio.AsyncManager.emit``."""
        room = to or room
        if callback is not None or skip_sid is not None or not isinstance(data, dict) or not room:
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
            )
            return
        rooms = [room] if isinstance(room, str) else list(room)
        event_id = data.get("eventId")
        frames = self.frames(event, data, namespace)
        frames.event_id = event_id if isinstance(event_id, int) else None
        await self.emit_frames(namespace, [(rooms, frames)])


class _RedisDirectEmit(socketio.AsyncRedisManager, _DirectEmit):  # type: ignore[misc]  # untyped library
    """The Redis manager, delivering its local share (its own emits and relayed ones) directly.

    It reports to :class:`RelayHealth` instead of logging: ``_publish`` and ``_listen`` are
    python-socketio internals (pinned below 6; ``tests/plugins/crm_realtime/test_relay.py``
    fails loudly if they change).
    """

    health: RelayHealth
    feed: SocketFeed

    async def _publish(self, data: Any) -> None:
        # One attempt, its outcome recorded. The library's version retries once and logs two
        # errors per emit; redis-py reconnects by itself on the next publish.
        try:
            if self.redis is None:
                self._redis_connect()
            await self.redis.publish(self.channel, self.json.dumps(data))
        except Exception as exc:
            self.health.failed("publish", _cause(exc))
        else:
            self.health.worked("publish")

    async def _listen(self) -> Any:
        async for raw in super()._listen():
            self.health.worked("listen")  # our own publishes come back too
            try:
                data = self.json.loads(raw) if isinstance(raw, (bytes, str)) else raw
            except ValueError:
                continue
            event = relayed_event(data) if isinstance(data, dict) else None
            if event is None:
                yield data
            elif data.get("host_id") != self.host_id:
                self.feed.offer(event, relay=False)

    async def probe(self) -> None:
        """Publish a no-op on the channel: its echo tells the listener is back (see ``_listen``)."""
        try:
            if self.redis is None:
                self._redis_connect()
            await self.redis.publish(self.channel, self.json.dumps({"method": "zaphub:probe"}))
        except Exception as exc:  # still down; the outage is already known and counted
            log.debug("Redis relay probe failed: %s", _cause(exc))
        else:
            self.health.worked("publish")


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


class Realtime:
    """The Socket.IO server of one host; see the module docstring.

    Args:
        host: the running host (storage for joins, config for Redis, metrics).
        settings: this plugin's settings.
        verifier: checks the tokens clients present at connect.
    """

    def __init__(self, host: Host, settings: CrmRealtimeSettings, verifier: TokenVerifier) -> None:
        self.host = host
        self.settings = settings
        self.verifier = verifier
        self.ns = settings.namespace
        redis = host.config.redis
        self.relay: RelayHealth | None = None
        self.manager: _DirectEmit
        if redis.url:
            self.relay = RelayHealth(host.metrics.registry, redact_url(redis.url))
            relay_manager = _RedisDirectEmit(
                redis.url,
                channel=redis.channel,
                logger=ListenerLog(self.relay),
                # A Redis host that drops packets must not stall the emit loop for minutes.
                redis_options={"socket_connect_timeout": RELAY_CONNECT_TIMEOUT_SECONDS},
            )
            relay_manager.health = self.relay
            self.manager = relay_manager
        else:
            self.manager = _DirectEmit()
        self.gate = DeliveryGate()
        self.feed = SocketFeed(self, settings.event_queue_size)
        self.manager.gate = self.gate
        if isinstance(self.manager, _RedisDirectEmit):
            self.manager.feed = self.feed
        origins: Any = settings.cors_allowed_origins
        if origins is not None and "*" in origins:
            origins = "*"
        self.sio = socketio.AsyncServer(
            async_mode="asgi",  # aiohttp is installed too: without this the mount answers 500
            client_manager=self.manager,
            cors_allowed_origins=origins,
            # Every namespace reaches a handler, so a wrong one is refused with a useful message
            # (by default "/" is accepted without auth and others get "Unable to connect").
            namespaces="*",
            transports=list(settings.transports),
            ping_interval=settings.ping_interval_seconds,
            ping_timeout=settings.ping_timeout_seconds,
            logger=False,
            engineio_logger=False,
        )
        self.manager.writer = SocketWriter(self.sio.eio, host.metrics.registry)
        self.sio.register_namespace(CrmNamespace(self))
        self.sio.register_namespace(_OtherNamespace(self))
        self.asgi = socketio.ASGIApp(self.sio, socketio_path=None)
        self.agents: dict[str, Agent] = {}
        """Authenticated sockets of this process, by sid."""
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._close_at: dict[str, float] = {}
        """Engine.IO sessions without a connected namespace, by when they are closed."""
        self._joins_in_flight: collections.Counter[str] = collections.Counter()
        self._join_budgets: dict[str, tuple[float, float]] = {}
        """Per agent ``sub``: (joins available, when counted); see :meth:`_join_refusal`."""
        self._agent_sockets: collections.Counter[str] = collections.Counter()
        # Joins look rows up: bound them so that a flood leaves the pool to REST and webhooks.
        self._lookups = asyncio.Semaphore(max(1, host.config.storage.pool_size // 2))
        self._throttle = Throttle(log)
        registry = host.metrics.registry
        self.m_sockets = Gauge(
            "zaphub_crm_sockets", "CRM Socket.IO clients connected to this process.", registry=registry
        )
        self.m_refused = Counter(
            "zaphub_crm_auth_refused",
            "Socket.IO connections refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.m_joins_refused = Counter(
            "zaphub_crm_joins_refused",
            "join_conversation/join_message refused before any lookup, by reason: rate, in_flight.",
            ["reason"],
            registry=registry,
        )
        self.m_replayed = Counter(
            "zaphub_crm_events_replayed",
            "Events replayed from the event log to resuming sockets (lastEventId), by event.",
            ["event"],
            registry=registry,
        )
        self.m_resyncs = Counter(
            "zaphub_crm_resync_required",
            "resync_required sent: a lastEventId older than the retention (or unknown to this log).",
            registry=registry,
        )
        self.m_idle_closed = Counter(
            "zaphub_crm_idle_connections_closed",
            "Engine.IO connections closed for having no namespace connected (refused or never connected).",
            registry=registry,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the emit loop and the reaper of idle connections (host tasks)."""
        self._task = self.host.spawn(self.feed.run(), name="crm-realtime-emit")
        self._reaper = self.host.spawn(self._reap(), name="crm-realtime-reaper")
        if isinstance(self.manager, _RedisDirectEmit):
            self._prober = self.host.spawn(self._probe_relay(self.manager), name="crm-realtime-relay-probe")

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Emit what is queued (bounded), stop Socket.IO and its Redis listener."""
        if self._task is not None and not self._task.done():
            self.feed.stop()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
            except TimeoutError:
                self._task.cancel()
        for task in (self._reaper, self._prober):
            if task is not None:
                task.cancel()
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        # Clients are not disconnected one by one: a server-side disconnect tells socket.io
        # clients not to reconnect, while a closed transport makes them reconnect (to another
        # process behind the load balancer, during a rolling restart).
        await self.sio.shutdown()
        if isinstance(self.manager, socketio.AsyncRedisManager):
            # python-socketio neither stops its Redis listener task nor closes its client on
            # shutdown; in-process hosts (tests, embedding) would leak both.
            listener = getattr(self.manager, "thread", None)
            if isinstance(listener, asyncio.Task):
                listener.cancel()
                with contextlib.suppress(BaseException):
                    await listener
            client = getattr(self.manager, "redis", None)
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        for task in list(self._background):
            task.cancel()

    def problem(self) -> str | None:
        """``None`` while events flow; else what is wrong (for ``GET /ready``)."""
        if self._task is None or self._task.done():
            return "the emit loop is not running"
        if self.feed.queue.full():
            return (
                f"the emit queue is full ({self.feed.queue.maxsize} events): events are delivered late, "
                "from the event log"
            )
        return None

    # -- hooks → events ------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Queue a logged event for the sockets :data:`ROUTES` names (relayed to other processes too)."""
        self.feed.offer(event, relay=True)

    def rooms(self, event: Event) -> list[str]:
        """The rooms of an event, by its :data:`ROUTES` line (empty: no line, or no id to route by)."""
        route = ROUTES.get(event.type)
        if route is None:
            return []
        rooms = []
        if route.conversation and event.conversation_id is not None:
            rooms.append(conversation_room(event.conversation_id))
        if route.message and event.message_id is not None:
            rooms.append(message_room(event.message_id))
        if route.scope and event.phone_number_id is not None:
            rooms += [ALL_ROOM, scope_room(event.phone_number_id)]
        return rooms

    async def emit_local(self, events: Sequence[Event]) -> None:
        """Emit logged events, in order, to this process's sockets only (the relay carries events, not emits).

        Each is encoded once, its ``eventId`` spliced into the stored payload; each socket gets
        the frames of all of them in one write when it can (:mod:`plugins.crm_realtime.wire`).
        """
        ns = self.ns
        batch = []
        for event in events:
            rooms = self.rooms(event)
            if not rooms:  # python-socketio reads an empty room list as "every socket": never that
                self._throttle.error(
                    "event %s has no audience: add a line for it to ROUTES in "
                    "plugins/crm_realtime/realtime.py",
                    event.type,
                    key=("unrouted", event.type),
                )
                continue
            batch.append((rooms, Frames(ns, event.type, with_event_id(event.data, event.id), event.id)))
        await self.manager.emit_frames(ns, batch)

    async def relay_event(self, event: Event) -> None:
        """Publish ``event`` to the other processes (no-op without Redis; failures are counted)."""
        if isinstance(self.manager, _RedisDirectEmit):
            await self.manager._publish(relay_message(event, self.manager.host_id))

    def log_failure(self, msg: str, *args: object, exc: BaseException) -> None:
        """Log an unexpected failure, once a minute per kind (a flood must not flood the log)."""
        self._throttle.error(msg, *args, exc_info=exc)

    async def drain(self) -> None:
        """Wait until every event queued so far has been emitted (tests, benchmarks)."""
        await self.feed.queue.join()

    # -- connections ---------------------------------------------------------------------------

    async def connect(self, sid: str, auth: Any) -> None:
        """Authenticate a new socket, put it in its scope rooms, schedule its expiry.

        Raises:
            socketio.exceptions.ConnectionRefusedError: ``"unauthorized"`` with ``{"reason": …}``.
        """
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            agent = self.verifier.verify(token)
        except AuthError as exc:
            self.m_refused.labels(reason=exc.code).inc()
            log.info("Socket.IO client refused: %s", exc.reason)
            self.close_soon(sid, self.ns)
            raise socketio.exceptions.ConnectionRefusedError("unauthorized", {"reason": exc.reason}) from None
        try:
            after = parse_last_event_id(auth.get("lastEventId") if isinstance(auth, dict) else None)
        except ValueError as exc:
            self.m_refused.labels(reason="last_event_id").inc()
            self.close_soon(sid, self.ns)
            raise socketio.exceptions.ConnectionRefusedError("bad request", {"reason": str(exc)}) from None
        self.agents[sid] = agent
        if after is not None:
            # Live events are kept back from before the socket enters its rooms (resume.py).
            self._spawn(self._resume(sid, self.gate.hold(sid), after, "connect", None))
        self._agent_sockets[agent.sub] += 1
        rooms = [ALL_ROOM] if agent.scope is None else [scope_room(n) for n in sorted(agent.scope)]
        for room in rooms:
            await self.sio.enter_room(sid, room, namespace=self.ns)
        delay = max(0.0, agent.expires_at + self.settings.jwt_leeway_seconds - time.time())
        self._expiry[sid] = asyncio.get_running_loop().call_later(delay, self._expire, sid)
        self.m_sockets.inc()
        log.debug("Socket.IO client %s connected as %s", sid, agent.sub)

    def disconnected(self, sid: str) -> None:
        """Forget a socket (its rooms are left by python-socketio)."""
        self.gate.forget(sid)
        agent = self.agents.pop(sid, None)
        if agent is not None:
            self.m_sockets.dec()
            self._agent_sockets[agent.sub] -= 1
            if self._agent_sockets[agent.sub] <= 0:
                del self._agent_sockets[agent.sub]
                self._join_budgets.pop(agent.sub, None)
        self._joins_in_flight.pop(sid, None)
        handle = self._expiry.pop(sid, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, sid: str) -> None:
        self._expiry.pop(sid, None)
        if sid not in self.agents:
            return
        log.info("Socket.IO client %s disconnected: token expired", sid)
        self._spawn(self.sio.disconnect(sid, namespace=self.ns))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def refuse_namespace(self, namespace: str, sid: str) -> None:
        """Refuse a connect to any namespace but ours, saying which one to use.

        Raises:
            socketio.exceptions.ConnectionRefusedError: always.
        """
        self.m_refused.labels(reason="namespace").inc()
        self.close_soon(sid, namespace)
        ns = self.ns
        raise socketio.exceptions.ConnectionRefusedError(
            f"unknown namespace {namespace[:40]}: connect to {ns}, "
            f"e.g. io(url + {ns!r}, {{auth: {{token}}}})",
            {"reason": "unknown namespace", "namespace": ns},
        )

    def close_soon(self, sid: str, namespace: str) -> None:
        """Close a refused socket's Engine.IO connection in a second, unless it connects elsewhere.

        The second lets the ``connect_error`` reach the client first, and lets a client that
        connects several namespaces at once keep its connection.
        """
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        if eio_sid is not None:
            self._close_at[eio_sid] = time.monotonic() + REFUSED_GRACE_SECONDS

    async def _probe_relay(self, manager: _RedisDirectEmit) -> None:
        # While the relay is down, try it every second: without events to publish nothing else
        # would notice that Redis is back.
        while True:
            await asyncio.sleep(RELAY_PROBE_SECONDS)
            if not manager.health.up:
                await manager.probe()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_SECONDS)
            try:
                self._reap_once()
            except Exception:  # never stop reaping over one odd session
                log.exception("closing idle Socket.IO connections failed")

    def _reap_once(self) -> None:
        now = time.monotonic()
        sessions = self.sio.eio.sockets
        for eio_sid in [s for s in self._close_at if s not in sessions]:
            del self._close_at[eio_sid]
        namespaces = list(self.manager.get_namespaces())
        for eio_sid in list(sessions):
            if any(self.manager.sid_from_eio_sid(eio_sid, ns) is not None for ns in namespaces):
                self._close_at.pop(eio_sid, None)
                continue
            deadline = self._close_at.setdefault(eio_sid, now + self.settings.connect_timeout_seconds)
            if now >= deadline:
                del self._close_at[eio_sid]
                self.m_idle_closed.inc()
                task = asyncio.create_task(self._close_transport(eio_sid))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _close_transport(self, eio_sid: str) -> None:
        session = self.sio.eio.sockets.get(eio_sid)
        with contextlib.suppress(TimeoutError):
            # Waits until the queued packets (the connect_error, then CLOSE) are written; a
            # polling client that never polls again would wait forever.
            await asyncio.wait_for(self.sio.eio.disconnect(eio_sid), 5)
        if session is not None and getattr(session, "upgraded", False):
            # engineio's WebSocket writer only notices the close when it next wakes (a client
            # that ignores CLOSE keeps the socket for a heartbeat): wake it so it closes now.
            # Pinned by tests/plugins/crm_realtime/test_hardening.py (the raw-client tests).
            session.queue.put_nowait(None)

    # -- rooms ---------------------------------------------------------------------------------

    def _join_refusal(self, sid: str, agent: Agent) -> str | None:
        """Why this join is refused before any lookup (``None``: go ahead, one join is counted).

        Each agent (token ``sub``) has ``join_burst`` joins, refilled at ``join_rate_per_second``
        and shared by its sockets in this process; each socket has ``max_joins_in_flight``.
        """
        settings = self.settings
        if self._joins_in_flight[sid] >= settings.max_joins_in_flight:
            self.m_joins_refused.labels(reason="in_flight").inc()
            return (
                f"rate limited: {settings.max_joins_in_flight} joins of this socket are still "
                "waiting for their ack; wait for them before joining more"
            )
        now = time.monotonic()
        available, counted = self._join_budgets.get(agent.sub, (float(settings.join_burst), now))
        available = min(
            float(settings.join_burst), available + (now - counted) * settings.join_rate_per_second
        )
        if available < 1.0:
            self._join_budgets[agent.sub] = (available, now)
            self.m_joins_refused.labels(reason="rate").inc()
            retry = (1.0 - available) / settings.join_rate_per_second
            return (
                f"rate limited: more than {settings.join_rate_per_second:g} joins per second for "
                f"{agent.sub}; retry in {max(retry, 0.01):.2f} s"
            )
        self._join_budgets[agent.sub] = (available - 1.0, now)
        return None

    async def join(self, sid: str, data: Any, kind: str, *, leave: bool = False) -> dict[str, Any]:
        """Handle ``join_``/``leave_conversation`` and ``join_``/``leave_message``; returns the ack."""
        agent = self.agents.get(sid)
        if agent is None:
            return {"ok": False, "error": "unauthorized"}
        key = "conversationId" if kind == "conversation" else "messageId"
        value = data.get(key) if isinstance(data, dict) else data
        try:
            ident = parse_id(value, key)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        room = conversation_room(ident) if kind == "conversation" else message_room(ident)
        try:
            after = parse_last_event_id(data.get("lastEventId") if isinstance(data, dict) else None)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        if leave:
            await self.sio.leave_room(sid, room, namespace=self.ns)
            return {"ok": True}
        refusal = self._join_refusal(sid, agent)
        if refusal is not None:
            return {"ok": False, "error": refusal}
        storage = self.host.storage
        found: Conversation | Message | None
        self._joins_in_flight[sid] += 1
        try:
            async with self._lookups:
                if kind == "conversation":
                    found = await storage.get_conversation(ident)
                else:
                    found = await storage.get_message(ident)
        except StorageError:  # REST answers 503 storage_unavailable; the ack says the same
            return {"ok": False, "error": "storage_unavailable: the database is unavailable; retry later"}
        finally:
            if self._joins_in_flight[sid] <= 1:  # a missing sid (disconnected meanwhile) reads 0
                self._joins_in_flight.pop(sid, None)
            else:
                self._joins_in_flight[sid] -= 1
        if found is None:
            return {"ok": False, "error": f"{kind} {ident} does not exist"}
        if not agent.allows(found.phone_number_id):
            refusal = forbidden_message(f"{kind} {ident}", found.phone_number_id)
            return {"ok": False, "error": f"forbidden: {refusal}"}
        if sid not in self.agents:  # disconnected while we looked it up
            return {"ok": False, "error": "disconnected"}
        if after is not None:
            self._spawn(self._resume(sid, self.gate.hold(sid), after, kind, ident))
        await self.sio.enter_room(sid, room, namespace=self.ns)
        return {"ok": True}

    # -- resume ------------------------------------------------------------------------------

    async def _resume(self, sid: str, lock: asyncio.Lock, after: int, kind: str, ident: int | None) -> None:
        """Replay the log after ``after`` to ``sid``, then send the live events kept back meanwhile.

        ``kind`` is ``connect`` (the messages of the token's scope) or ``conversation`` /
        ``message`` (that room's statuses). If the log cannot be read, the transport is closed:
        the client reconnects with the last ``eventId`` it got, and the replay starts over there.
        """
        gate = self.gate
        try:
            async with lock:
                try:
                    await self._replay(sid, after, kind, ident)
                finally:
                    if gate.release(sid):
                        # Taken all at once: the socket is live again when next_held says None.
                        held: list[Frames] = []
                        while (kept := gate.next_held(sid)) is not None:
                            held.append(kept[1])
                        if held:
                            await self.manager.send_frames(sid, self.ns, held)
        except Exception as exc:
            self._throttle.error("replaying events to a resuming socket failed", exc_info=exc)
            eio_sid = self.manager.eio_sid_from_sid(sid, self.ns)
            if eio_sid is not None:
                await self._close_transport(eio_sid)

    async def _replay(self, sid: str, after: int, kind: str, ident: int | None) -> None:
        agent = self.agents.get(sid)
        if agent is None:
            return
        storage = self.host.storage
        bounds = await storage.event_bounds()
        oldest = bounds.oldest if bounds.oldest is not None else bounds.last + 1
        if after + 1 < oldest or after > bounds.last:
            # Pruned by retention (or from another database): only a REST resync is complete.
            self.m_resyncs.inc()
            notice: dict[str, Any] = {"lastEventId": after, "oldestEventId": oldest}
            if kind != "connect":
                notice[f"{kind}Id"] = ident
            await self.manager.send_frames(sid, self.ns, [self.manager.frames(EVENT_RESYNC, notice, self.ns)])
            return
        scope = sorted(agent.scope) if agent.scope is not None else None
        types = replayed_types(kind)
        cursor = after
        while True:
            page = await storage.read_events(
                cursor,
                REPLAY_PAGE,
                types=types,
                phone_number_ids=scope,
                conversation_id=ident if kind == "conversation" else None,
                message_id=ident if kind == "message" else None,
            )
            ns = self.ns
            frames = [Frames(ns, event.type, with_event_id(event.data, event.id)) for event in page]
            if frames and not await self.manager.send_frames(sid, ns, frames):
                return  # gone
            for event in page:
                self.gate.replayed(sid, event.id)
            for name, count in collections.Counter(event.type for event in page).items():
                self.m_replayed.labels(event=name).inc(count)
            if len(page) < REPLAY_PAGE:
                return
            cursor = page[-1].id


class _OtherNamespace(socketio.AsyncNamespace):  # type: ignore[misc]  # python-socketio is untyped
    """Every namespace but ours (``"*"``): refuses the connect, naming the right namespace."""

    def __init__(self, realtime: Realtime) -> None:
        super().__init__("*")
        self.rt = realtime

    async def on_connect(self, namespace: str, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Refuse: ``connect_error`` with ``"unknown namespace /x: connect to /crm, …"``."""
        self.rt.refuse_namespace(namespace, sid)


class CrmNamespace(socketio.AsyncNamespace):  # type: ignore[misc]  # python-socketio is untyped
    """The ``/crm`` namespace: one instance serves every client, state lives in :class:`Realtime`."""

    def __init__(self, realtime: Realtime) -> None:
        super().__init__(realtime.ns)
        self.rt = realtime

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Refuse the client unless ``auth.token`` is a valid JWT."""
        await self.rt.connect(sid, auth)

    def on_disconnect(self, sid: str, reason: Any = None) -> None:
        """Forget the client."""
        self.rt.disconnected(sid)

    async def _ack(self, sid: str, data: Any, kind: str, *, leave: bool = False) -> dict[str, Any]:
        # An exception in a handler would leave the client's ack callback waiting forever.
        try:
            return await self.rt.join(sid, data, kind, leave=leave)
        except Exception as exc:
            self.rt.log_failure("%s_%s failed", "leave" if leave else "join", kind, exc=exc)
            return {"ok": False, "error": "internal error; the server log has the details"}

    async def on_join_conversation(self, sid: str, data: Any = None) -> dict[str, Any]:
        """``join_conversation {conversationId}``: receive the conversation's statuses."""
        return await self._ack(sid, data, "conversation")

    async def on_leave_conversation(self, sid: str, data: Any = None) -> dict[str, Any]:
        """``leave_conversation {conversationId}``."""
        return await self._ack(sid, data, "conversation", leave=True)

    async def on_join_message(self, sid: str, data: Any = None) -> dict[str, Any]:
        """``join_message {messageId}``: receive the message's statuses."""
        return await self._ack(sid, data, "message")

    async def on_leave_message(self, sid: str, data: Any = None) -> dict[str, Any]:
        """``leave_message {messageId}``."""
        return await self._ack(sid, data, "message", leave=True)
