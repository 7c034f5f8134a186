"""Whether the database accepts writes: ``GET /ready``'s storage check, kept off SQLite's write lock.

SQLite has one write lock. A probe write on every ``/ready`` would take it, so on a busy host the
readiness probe would queue behind the ingest and outbox writers, then hold them up. The writers'
own transactions are the evidence instead (:class:`WriteRecord`, kept by ``Storage.write()``):

- a transaction that wrote and committed within ``storage.ready_probe_after_seconds``, with no
  write failing since, proves the database accepts writes: ``/ready`` then only reads
  (``SELECT 1``, which WAL never blocks);
- otherwise (an idle host, or after a failed write until a probe succeeds again) ``/ready`` writes
  its probe, one ``plugin_state`` row, on a connection of its own that waits at most
  :data:`PROBE_WAIT_SECONDS` for the lock: a lock held elsewhere is reported, not waited out.

PostgreSQL has no such lock (row locks, MVCC): its probe write runs on every call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from core.errors import StorageError
from core.storage.engine import _DB_ERRORS, StorageEngine, storage_error
from core.storage.schema import plugin_state

__all__ = ["PROBE_WAIT_SECONDS", "HealthMixin", "WriteRecord", "write_problem"]

#: How long the SQLite probe waits for the write lock before it reports it held elsewhere
#: (well inside the 3 s ``/ready`` gives each check).
PROBE_WAIT_SECONDS = 1.0

#: A failed write's cause (matched in the driver's message) and what to do about it.
_FIXES = (
    (
        "locked",
        "another connection holds SQLite's write lock (a sqlite3 shell, a backup, another zaphub on "
        "the same file?): stop it; several processes need PostgreSQL",
    ),
    ("readonly", "the database file is read-only: let zaphub's user write the file and its directory"),
    ("full", "free disk space"),
    ("disk i/o", "the file system refused the write: check the disk (dmesg) and the file's flags (lsattr)"),
    ("unable to open", "the database file is gone or cannot be opened: check the file and its directory"),
)


def write_problem(error: BaseException) -> str:
    """``error`` in one line, followed by the fix when its cause is a known one."""
    text = str(error)
    lowered = text.lower()
    for needle, fix in _FIXES:
        if needle in lowered:
            return f"{text}: {fix}"
    return text


class WriteRecord:
    """What SQLite writers' transactions said last: when one that wrote committed, what failed since.

    Args:
        clock: monotonic seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.committed_at: float | None = None
        """When a transaction that wrote last committed (``clock`` seconds)."""
        self.failure: str | None = None
        """The last write failure that no successful probe has followed yet."""

    @staticmethod
    async def wrote(conn: AsyncConnection) -> bool:
        """Whether the SQLite transaction on ``conn`` wrote; asked just before it commits.

        The driver begins a transaction at the first INSERT, UPDATE or DELETE: a writer that only
        looked (an outbox poll with nothing due) commits nothing, which proves nothing.
        """
        raw = await conn.get_raw_connection()
        return bool(getattr(raw.driver_connection, "in_transaction", False))

    def committed(self) -> None:
        """A transaction that wrote has committed."""
        self.committed_at = self._clock()

    def failed(self, error: BaseException) -> None:
        """A write failed: recent commits prove nothing until a probe succeeds."""
        self.failure = str(error)

    def trusted(self, seconds: float) -> bool:
        """Whether the writers' commits prove the database writable without a probe."""
        return (
            self.failure is None
            and self.committed_at is not None
            and self._clock() - self.committed_at <= seconds
        )


class HealthMixin(StorageEngine):
    """:meth:`ping`: the storage check of ``GET /ready``."""

    _probe_engine: AsyncEngine | None = None

    async def ping(self) -> None:
        """Raise :class:`StorageError`, naming the cause and the fix, unless the database takes writes.

        ``SELECT 1`` alone passes on a full disk or a read-only file, so writes are what count: on
        SQLite the writers' recent commits (see this module), else a committed probe write.
        """
        if self.dialect != "sqlite":
            async with self.write() as conn:
                await _probe(self, conn)
            return
        if self.writes.trusted(self.config.ready_probe_after_seconds):
            async with self.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return
        try:
            async with self._sqlite_probe_engine().begin() as conn:
                await _probe(self, conn)
        except _DB_ERRORS as exc:
            raise StorageError(write_problem(storage_error(exc, "a probe write"))) from exc
        self.writes.failure = None
        self.writes.committed()  # as good as a writer's commit: the next calls within the window read

    async def close(self) -> None:
        """Close every pooled connection, and the probe's engine."""
        await super().close()
        if self._probe_engine is not None:
            await self._probe_engine.dispose()
            self._probe_engine = None

    def _sqlite_probe_engine(self) -> AsyncEngine:
        if self._probe_engine is None:
            assert self.url.database is not None  # database_url refuses a SQLite URL without a file
            path = Path(self.url.database).expanduser().resolve()
            # mode=rw: a deleted database is reported, not silently recreated empty. No pool: the
            # probe is rare. Its own short lock wait, instead of the writers' 10 s busy timeout.
            rw = {"mode": "rw", "uri": "true"}
            self._probe_engine = create_async_engine(
                sa.URL.create("sqlite+aiosqlite", database=path.as_uri(), query=rw),
                poolclass=NullPool,
                connect_args={"timeout": PROBE_WAIT_SECONDS},
            )
        return self._probe_engine


async def _probe(storage: StorageEngine, conn: AsyncConnection) -> None:
    """Overwrite the one ``plugin_state`` row the probes own."""
    now = datetime.now(UTC)
    ins = storage.insert(plugin_state)
    probe = ins.on_conflict_do_update(
        index_elements=[plugin_state.c.plugin, plugin_state.c.key],
        set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
    )
    await conn.execute(
        probe, {"plugin": "core", "key": "write_probe", "value": now.isoformat(), "updated_at": now}
    )
