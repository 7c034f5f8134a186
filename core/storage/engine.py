"""The database connection: URL checks, the engine and its pragmas, open/close/ping, transactions.

One code path for SQLite (embedded default) and PostgreSQL. SQLite allows one writer at a time;
an in-process lock serialises our write transactions so they queue in asyncio instead of failing
with ``database is locked``. Several processes need PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from core.config import StorageConfig, redact_url
from core.errors import ConfigError, ZaphubError

__all__ = ["StorageEngine", "StorageError", "database_url"]


class StorageError(ZaphubError):
    """The database failed (unreachable, constraint, timeout). Retryable by the caller."""


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
        if self.dialect == "sqlite":
            synchronous = config.sqlite_synchronous

            @sa.event.listens_for(self.engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA synchronous={synchronous}")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

    def describe(self) -> str:
        """The URL with its password (and any secret query parameter) hidden, for logs."""
        return redact_url(self.url.render_as_string(hide_password=False))

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations run under a lock)."""
        from core.storage.migrate import upgrade

        try:
            await upgrade(self.engine)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise StorageError(f"cannot open database {self.describe()}: {exc}") from exc

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def ping(self) -> None:
        """Raise :class:`StorageError` unless the database answers a trivial query."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise StorageError(f"database unreachable: {exc.__class__.__name__}") from exc

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on exit, rolled back on error."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection (no transaction held open beyond the block)."""
        async with self.engine.connect() as conn:
            yield conn

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which knows ``ON CONFLICT`` (same API on both backends)."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)
