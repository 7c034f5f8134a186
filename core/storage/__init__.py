"""Durable storage: one code path for SQLite (embedded default) and PostgreSQL.

Everything that must survive a crash goes through here, in as few transactions as the work
allows: a whole batch of webhooks is one transaction (:meth:`Storage.ingest`), a send is one
transaction (message row + outbox row + idempotency key). Unique keys in the database, not
in-memory caches, make repeated webhooks harmless across processes and restarts.

:class:`Storage` is the one object callers use; its parts live in one module each:

- ``engine``: database URL, engine, open/close, ``write()``/``read()`` transactions.
- ``ingest``: inbound batches (contacts, conversations, messages, statuses).
- ``statuses``: the status machine, early statuses parked, sends linked by callback data.
- ``lifecycle``: edits, deletions and reactions (parked until their message arrives), number changes.
- ``outbox``: queueing sends with idempotency keys, leasing them, recording outcomes.
- ``reads``: messages, conversations, contacts and status histories by id or page.
- ``directory``: searching contacts and conversations, finding or creating one to start.
- ``state``: each plugin's key-value store (:class:`PluginStore`): expiry, listing, compare-and-set.
- ``events``: the event log (appended in the transaction of each change), its readers, named
  cursors, retention, and the lock that picks the one process dispatching events.
- ``health``: ``ping()``, whether the database takes writes (``GET /ready``), off SQLite's write lock.
- ``pages``: the order and cursor of conversation pages (the listing and the search share it).
- ``rows`` (row → model converters), ``results`` (what the methods return), ``schema``, ``migrate``.
"""

from __future__ import annotations

from core.storage.directory import DirectoryMixin
from core.storage.engine import StorageError, database_url
from core.storage.events import EventBounds, EventLogMixin, LeaderLock, PendingEvent
from core.storage.health import HealthMixin
from core.storage.ingest import IngestMixin
from core.storage.outbox import OutboxMixin
from core.storage.reads import ReadsMixin
from core.storage.results import ChangeEvent, IngestResult, MessageEvent, ModeEvent, OutboxItem, StatusEvent
from core.storage.schema import metadata
from core.storage.state import PluginStateMixin, PluginStore, StateEntry

__all__ = [
    "ChangeEvent",
    "EventBounds",
    "IngestResult",
    "LeaderLock",
    "MessageEvent",
    "ModeEvent",
    "OutboxItem",
    "PendingEvent",
    "PluginStore",
    "StateEntry",
    "StatusEvent",
    "Storage",
    "StorageError",
    "database_url",
    "metadata",
]


class Storage(
    IngestMixin, OutboxMixin, ReadsMixin, DirectoryMixin, PluginStateMixin, EventLogMixin, HealthMixin
):
    """The database behind a host. Create, :meth:`open`, use, :meth:`close`."""
