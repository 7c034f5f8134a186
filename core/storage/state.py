"""Plugin state: each plugin's durable key-value store, with expiry and compare-and-set.

Rows of ``plugin_state`` are keyed by ``(plugin, key)``; plugins use them through a
:class:`PluginStore` (``host.store("mybot")``), which fixes the namespace once. Every write
bumps the row's ``version``, so a read-modify-write is safe across processes with
:meth:`PluginStore.compare_and_set`: the database, not a lock in one process, decides the winner
(a conditional ``UPDATE`` or ``INSERT … ON CONFLICT``, atomic on SQLite and PostgreSQL). Expired
rows are invisible at once and deleted by :meth:`PluginStateMixin.state_purge_expired`, which the
host runs periodically.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa

from core.models import utcnow
from core.storage.engine import StorageEngine
from core.storage.schema import plugin_state

__all__ = ["KEY_MAX_LENGTH", "PluginStateMixin", "PluginStore", "StateEntry"]

KEY_MAX_LENGTH = 256
"""The longest key a plugin may use (characters)."""

_t = plugin_state.c


class StateEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stored key of a plugin, as :meth:`PluginStore.entry` and :meth:`PluginStore.list` return it."""

    key: str
    value: Any
    """The JSON value stored (dicts, lists, strings, numbers, booleans, ``None``)."""
    version: int
    """Bumped by every write; pass it to :meth:`PluginStore.compare_and_set`."""
    updated_at: datetime
    """When it was last written."""
    expires_at: datetime | None
    """When it disappears (``None``: never)."""


def _alive(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(_t.expires_at.is_(None), _t.expires_at > now)


def _expiry(now: datetime, ttl: float | None) -> datetime | None:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl}")
    return now + timedelta(seconds=ttl)


def _entry(row: Any) -> StateEntry:
    return StateEntry(
        key=row.key,
        value=row.value,
        version=row.version,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
    )


_COLUMNS = (_t.key, _t.value, _t.version, _t.updated_at, _t.expires_at)


class PluginStateMixin(StorageEngine):
    """Per-plugin key/value rows: reads, writes, listing, expiry and compare-and-set."""

    async def state_get(self, plugin: str, key: str) -> tuple[Any, datetime] | None:
        """A plugin's stored value and when it was last set, or ``None`` (unset or expired)."""
        entry = await self.state_entry(plugin, key)
        return (entry.value, entry.updated_at) if entry else None

    async def state_entry(self, plugin: str, key: str) -> StateEntry | None:
        """A plugin's stored entry, or ``None`` when unset or expired."""
        async with self.read() as conn:
            row = (
                await conn.execute(
                    sa.select(*_COLUMNS).where(_t.plugin == plugin, _t.key == key, _alive(utcnow()))
                )
            ).first()
        return _entry(row) if row else None

    def _upsert(self, where: sa.ColumnElement[bool] | None = None) -> Any:
        """INSERT a row, or on its key replace value, time and expiry and bump the version (if ``where``)."""
        ins = self.insert(plugin_state)
        replace = {
            "value": ins.excluded.value,
            "updated_at": ins.excluded.updated_at,
            "expires_at": ins.excluded.expires_at,
            "version": _t.version + 1,
        }
        return ins.on_conflict_do_update(index_elements=[_t.plugin, _t.key], set_=replace, where=where)

    @staticmethod
    def _row(plugin: str, key: str, value: Any, now: datetime, expires_at: datetime | None) -> dict[str, Any]:
        return {
            "plugin": plugin,
            "key": key,
            "value": value,
            "updated_at": now,
            "expires_at": expires_at,
            "version": 1,
        }

    async def state_set(self, plugin: str, key: str, value: Any, *, ttl: float | None = None) -> int:
        """Store a JSON-able value (insert or replace, expiring after ``ttl`` seconds); its new version."""
        now = utcnow()
        row = self._row(plugin, key, value, now, _expiry(now, ttl))
        async with self.write() as conn:
            version: int = (await conn.execute(self._upsert().returning(_t.version), row)).scalar_one()
        return version

    async def state_claim(self, plugin: str, key: str, value: Any, *, older_than: float) -> bool:
        """Set ``key`` only if it is unset, expired, or was last set more than ``older_than`` s ago.

        Atomic across processes: of two concurrent claims exactly one wins. This is how cooldowns
        work ("at most one auto-reply per conversation per N seconds"). A claimed key never expires.
        """
        now = utcnow()
        claimable = sa.or_(_t.updated_at <= now - timedelta(seconds=older_than), sa.not_(_alive(now)))
        async with self.write() as conn:
            won = (
                await conn.execute(
                    self._upsert(claimable).returning(_t.key), self._row(plugin, key, value, now, None)
                )
            ).first()
        return won is not None

    async def state_compare_and_set(
        self, plugin: str, key: str, value: Any, *, version: int | None, ttl: float | None = None
    ) -> int | None:
        """Write ``key`` only if its version is still ``version`` (``None``: only if unset or expired).

        Returns:
            The new version, or ``None`` when another writer got there first (read and retry).
        """
        now = utcnow()
        expires_at = _expiry(now, ttl)
        async with self.write() as conn:
            if version is None:
                # An expired row counts as unset.
                stmt = self._upsert(sa.not_(_alive(now))).returning(_t.version)
                row = (await conn.execute(stmt, self._row(plugin, key, value, now, expires_at))).first()
            else:
                row = (
                    await conn.execute(
                        sa.update(plugin_state)
                        .where(_t.plugin == plugin, _t.key == key, _t.version == version, _alive(now))
                        .values(value=value, updated_at=now, expires_at=expires_at, version=version + 1)
                        .returning(_t.version)
                    )
                ).first()
        return int(row[0]) if row else None

    async def state_delete(self, plugin: str, key: str, *, version: int | None = None) -> bool:
        """Delete ``key`` (only at ``version``, when given); whether a live entry was deleted."""
        now = utcnow()
        where = [_t.plugin == plugin, _t.key == key, _alive(now)]
        if version is not None:
            where.append(_t.version == version)
        async with self.write() as conn:
            deleted = (await conn.execute(sa.delete(plugin_state).where(*where).returning(_t.key))).first()
        return deleted is not None

    async def state_list(
        self, plugin: str, prefix: str = "", *, after: str | None = None, limit: int = 100
    ) -> list[StateEntry]:
        """Live entries whose key starts with ``prefix``, by key; page with ``after`` (the last key)."""
        where = [_t.plugin == plugin, _alive(utcnow())]
        if prefix:
            where.append(_t.key.startswith(prefix, autoescape=True))
        if after is not None:
            where.append(_t.key > after)
        async with self.read() as conn:
            rows = (
                await conn.execute(sa.select(*_COLUMNS).where(*where).order_by(_t.key).limit(limit))
            ).all()
        return [_entry(row) for row in rows]

    async def state_purge_expired(self) -> int:
        """Delete every expired entry of every plugin; how many."""
        async with self.write() as conn:
            result = await conn.execute(sa.delete(plugin_state).where(sa.not_(_alive(utcnow()))))
        return int(result.rowcount or 0)


class PluginStore:
    """One plugin's durable key-value store: ``store = host.store("mybot")``.

    Every key lives in the plugin's own namespace (two plugins may use the same keys), survives
    restarts, and is shared by every process on the same database. Values are JSON (dicts, lists,
    strings, numbers, booleans, ``None``). Keys are strings of 1 to 256 characters; use prefixes
    (``"order:1234"``) and :meth:`list` them.

    Example, a counter that is exact with any number of processes::

        while True:
            entry = await store.entry("sent")
            if await store.compare_and_set("sent", (entry.value if entry else 0) + 1,
                                           version=entry.version if entry else None) is not None:
                break
    """

    def __init__(self, storage: PluginStateMixin, plugin: str) -> None:
        self._storage = storage
        self.plugin = plugin
        """The namespace: the plugin's name."""

    def _check(self, key: str) -> str:
        if not isinstance(key, str) or not 0 < len(key) <= KEY_MAX_LENGTH:
            raise ValueError(
                f"store {self.plugin!r}: keys are strings of 1 to {KEY_MAX_LENGTH} characters, "
                f"got {key!r:.60}"
            )
        return key

    def _json(self, key: str, value: Any) -> Any:
        try:
            msgspec.json.encode(value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ValueError(f"store {self.plugin!r}: the value of {key!r} is not JSON: {exc}") from None
        return value

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is unset or expired."""
        entry = await self._storage.state_entry(self.plugin, self._check(key))
        return entry.value if entry is not None else default

    async def entry(self, key: str) -> StateEntry | None:
        """``key`` with its version and times, or ``None`` when unset or expired."""
        return await self._storage.state_entry(self.plugin, self._check(key))

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> int:
        """Store ``value`` (replacing any), expiring after ``ttl`` seconds; returns the new version."""
        return await self._storage.state_set(self.plugin, self._check(key), self._json(key, value), ttl=ttl)

    async def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is unset or expired: ``True`` for exactly one concurrent caller."""
        return await self.compare_and_set(key, value, version=None, ttl=ttl) is not None

    async def compare_and_set(
        self, key: str, value: Any, *, version: int | None, ttl: float | None = None
    ) -> int | None:
        """Store ``value`` only if ``key`` is still at ``version`` (from :meth:`entry`; ``None``: unset).

        Returns:
            The new version, or ``None`` when someone else wrote first: read again and retry.
        """
        return await self._storage.state_compare_and_set(
            self.plugin, self._check(key), self._json(key, value), version=version, ttl=ttl
        )

    async def delete(self, key: str, *, version: int | None = None) -> bool:
        """Delete ``key`` (only if still at ``version``, when given); whether it existed."""
        return await self._storage.state_delete(self.plugin, self._check(key), version=version)

    async def list(self, prefix: str = "", *, after: str | None = None, limit: int = 100) -> list[StateEntry]:
        """Entries whose key starts with ``prefix``, in key order, at most ``limit`` (1–1000).

        Page through many with ``after=<the last key of the previous page>``.
        """
        if not 1 <= limit <= 1000:
            raise ValueError(f"store {self.plugin!r}: limit must be 1 to 1000, got {limit}")
        return await self._storage.state_list(self.plugin, prefix, after=after, limit=limit)
