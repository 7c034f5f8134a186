"""The database connection: URL checks, the engine and its pragmas, open/close/ping, transactions.

One code path for SQLite (embedded default) and PostgreSQL. SQLite allows one writer at a time;
an in-process lock serialises our write transactions so they queue in asyncio instead of failing
with ``database is locked``. Several processes need PostgreSQL.

Write transactions written as a synchronous body (:meth:`StorageEngine.run_write`) run on SQLite in
one hop to the dedicated writer thread (:mod:`core.storage.writer`), and on PostgreSQL through
``run_sync`` on a pooled connection: the same body, one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from core.config import StorageConfig, redact_url
from core.errors import ConfigError, StorageError
from core.storage.writer import SqliteWriter

__all__ = ["StorageEngine", "StorageError", "database_url", "storage_error"]

#: What the storage layer translates into :class:`StorageError`; anything else (an ``ApiError``
#: raised on purpose inside a transaction) passes through unchanged.
_DB_ERRORS = (OSError, sa.exc.SQLAlchemyError)

P = ParamSpec("P")
T = TypeVar("T")


def storage_error(exc: BaseException, doing: str) -> StorageError:
    """A :class:`StorageError` for ``exc`` with one short line of cause (no SQL, no parameters)."""
    cause = getattr(exc, "orig", None) or exc  # the driver's exception inside SQLAlchemy's wrapper
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    name = type(cause).__name__
    return StorageError(f"{doing} failed: {name}: {text[:200]}" if text else f"{doing} failed: {name}")


def _open_problem(exc: BaseException, url: sa.URL) -> str:
    """Why the database could not be opened, and what to do about it, in one line."""
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split())[:200]
    name = type(cause).__name__
    lowered = f"{name} {text}".lower()
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    if "invalidcatalogname" in lowered or ("database" in lowered and "does not exist" in lowered):
        return f"database {url.database!r} does not exist: create the database (createdb {url.database})"
    if "password" in lowered or "authentication" in lowered or ("role" in lowered and "not exist" in lowered):
        return f"{name}: {text}: check the user name and password in the URL"
    refused = ("connection refused", "connect call failed")
    if isinstance(cause, ConnectionRefusedError) or any(r in lowered for r in refused):
        return f"nothing accepts connections at {where}: start PostgreSQL or correct the host and port"
    if isinstance(cause, OSError) and ("name or service" in lowered or "nodename" in lowered):
        return f"cannot resolve the host {url.host!r}: correct the host name"
    if isinstance(cause, TimeoutError):
        return f"no answer from {where}: check the host, port and firewall"
    if "unable to open database file" in lowered:
        return f"cannot open {url.database!r}: check that its directory exists and is writable"
    if "disk is full" in lowered or "no space" in lowered:
        return f"{name}: {text}: free disk space"
    return f"{name}: {text}" if text else name


def database_url(url: str) -> sa.URL:
    """``storage.url`` as the async driver URL it will be opened with; nothing is created.

    ``zaphub check`` and ``zaphub run`` both go through here, so check refuses what run would.

    Raises:
        ConfigError: not a URL, an unsupported database, or an in-memory SQLite database.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(
            f"{redact_url(url)!r} is not a database URL: use sqlite:///zaphub.db or postgresql://user:pass@host/db",
            "storage.url",
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite database loses everything on restart: use a file, sqlite:///zaphub.db",
                "storage.url",
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://", "storage.url")


class StorageEngine:
    """The engine and transactions every part of :class:`core.storage.Storage` builds on."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self.url = database_url(config.url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            assert self.url.database is not None  # database_url refuses a SQLite URL without a file
            Path(self.url.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.dialect == "postgresql":
            kwargs.update(pool_size=config.pool_size, max_overflow=config.pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        from core.storage.health import WriteRecord  # health builds on this module

        self.writes = WriteRecord()
        """What the writers' transactions said last: ``GET /ready`` reads it (core/storage/health.py)."""
        self._writer: SqliteWriter | None = None
        if self.dialect == "sqlite":
            synchronous = config.sqlite_synchronous

            def pragmas(dbapi_conn: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA synchronous={synchronous}")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

            @sa.event.listens_for(self.engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                pragmas(dbapi_conn)

            self._writer = SqliteWriter(self.url, pragmas)

    def describe(self) -> str:
        """The URL with its password (and any secret query parameter) hidden, for logs."""
        return redact_url(self.url.render_as_string(hide_password=False))

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations run under a lock)."""
        from core.storage.migrate import upgrade

        try:
            await upgrade(self.engine)
        except _DB_ERRORS as exc:
            raise StorageError(
                f"cannot open the database {self.describe()} (storage.url, ZAPHUB_DATABASE_URL): "
                f"{_open_problem(exc, self.url)}"
            ) from exc

    async def close(self) -> None:
        """Close every pooled connection (and the SQLite writer's, after its last transaction)."""
        if self._writer is not None:
            await self._writer.close()
        await self.engine.dispose()

    async def write_one(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> int:
        """One statement in a write transaction of its own (:meth:`run_write`); its row count.

        Raises:
            StorageError: the database failed; nothing was committed.
        """

        def body(conn: sa.Connection) -> int:
            result: sa.CursorResult[Any] = conn.execute(statement, params)
            return result.rowcount

        return await self.run_write(body)

    async def run_write(
        self, body: Callable[Concatenate[sa.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``body(conn, *args, **kwargs)`` in one write transaction; its result once committed.

        ``body`` is synchronous over a :class:`sqlalchemy.Connection` and must not block on
        anything but the database. SQLite runs it whole in the writer thread (one hop, however
        many statements); PostgreSQL through ``AsyncConnection.run_sync``. Functions that take
        a sync connection (``await conn.run_sync(fn)`` elsewhere) can be called from it as they are.

        Raises:
            StorageError: the database failed; nothing was committed.
        """
        return await self._run_write(lambda conn: body(conn, *args, **kwargs), inline=False)

    async def run_write_inline(self, body: Callable[[sa.Connection], T]) -> T:
        """:meth:`run_write` for a short body on the hot path: on SQLite it runs on this thread.

        Only the ``COMMIT`` (its fsync) goes to the writer thread, and only when another
        connection holds the file's write lock does the whole transaction (see
        :meth:`core.storage.writer.SqliteWriter.run`). ``body`` must be bounded work (an ingest
        batch), since the event loop runs it. PostgreSQL: the same as :meth:`run_write`.
        """
        return await self._run_write(body, inline=True)

    async def _run_write(self, body: Callable[[sa.Connection], T], *, inline: bool) -> T:
        try:
            if self._writer is None:
                async with self.engine.begin() as conn:
                    return await conn.run_sync(body)
            assert self._write_lock is not None
            # The lock keeps the writer and the remaining async writes (write()) from taking turns
            # on the file's lock through busy_timeout: in-process they queue here instead.
            async with self._write_lock:
                result, wrote = await self._writer.run(body, inline=inline)
        except _DB_ERRORS as exc:
            self.writes.failed(exc)
            raise storage_error(exc, "a database write") from exc
        if wrote:
            self.writes.committed()  # GET /ready trusts recent commits (core/storage/health.py)
        return result

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on exit, rolled back on error.

        Raises:
            StorageError: the database failed (SQLAlchemy's exception is its ``__cause__``).
        """
        lock = self._write_lock or contextlib.nullcontext()
        wrote = False
        try:
            async with lock, self.engine.begin() as conn:
                yield conn
                wrote = self.dialect == "sqlite" and await self.writes.wrote(conn)
        except _DB_ERRORS as exc:
            self.writes.failed(exc)
            raise storage_error(exc, "a database write") from exc
        if wrote:
            self.writes.committed()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection (no transaction held open beyond the block).

        Raises:
            StorageError: the database failed (SQLAlchemy's exception is its ``__cause__``).
        """
        try:
            async with self.engine.connect() as conn:
                yield conn
        except _DB_ERRORS as exc:
            raise storage_error(exc, "a database read") from exc

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which knows ``ON CONFLICT`` (same API on both backends)."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)
