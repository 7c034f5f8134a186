"""SQLite's one writer: a dedicated thread that runs whole write transactions on its own connection.

With aiosqlite every statement of a transaction is a hop to its thread and back (a future, a
wake-up of the event loop, a context switch), and the event loop does SQLAlchemy's per-statement
work in between. :class:`SqliteWriter` instead receives a transaction *body*, a plain function
over a synchronous :class:`sqlalchemy.Connection`, and runs all of it in its thread: one hop per
transaction, however many statements. The same body runs on PostgreSQL through
``AsyncConnection.run_sync`` (:meth:`core.storage.engine.StorageEngine.run_write`), so there is one
code path for both backends.

The writer's connection opens the same file with the same pragmas as the async engine
(``synchronous`` included), and starts each transaction with ``BEGIN IMMEDIATE``: the file's write
lock is taken before the first statement, so a transaction never fails half-way with
``database is locked`` when another connection (a CLI command, say) wrote in between; it waits
up to ``busy_timeout`` instead. A body's return means committed with the configured durability.

A bounded body on the hot path (a large ingest batch: :meth:`SqliteWriter.run` with ``inline``,
see ``core.storage.ingest.INLINE_BATCH``) runs on the event loop's thread instead, and only its
``COMMIT``, the fsync, is handed to the writer thread. At full rate the two threads' Python then
no longer takes turns on the interpreter lock for every statement of the body: the webhook
benchmark went from about 4,800 to 5,400 webhooks/s at 64 connections, 175 to 163 µs of CPU per
webhook (docs/benchmarks.md, "Issue 13, sixth session"). Its ``BEGIN IMMEDIATE`` does not wait: if
another connection holds the file's write lock, the whole transaction takes the thread's path and
waits there (``busy_timeout``), so the event loop never blocks on another process.

``BEGIN IMMEDIATE`` and ``COMMIT`` go straight to the ``sqlite3`` connection: SQLAlchemy's
transaction object and "begin" event cost about as much Python as the rest of a one-message
transaction's bookkeeping. The :class:`sqlalchemy.Connection` the body gets still works as
usual: a statement run through it autobegins SQLAlchemy's transaction, which on pysqlite emits
nothing (the connection is in autocommit mode), and is closed after the real ``COMMIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

__all__ = ["SqliteWriter"]

A = TypeVar("A")
T = TypeVar("T")


def _execute(raw: Any, sql: str) -> None:
    """``sql`` on the ``sqlite3`` connection; its errors as SQLAlchemy's (``OperationalError``…)."""
    try:
        raw.execute(sql)
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc


class _Job(Generic[A, T]):
    """``fn(arg)`` handed to the writer thread, and how its caller learns the outcome."""

    __slots__ = ("arg", "fn", "future", "loop", "settled", "waiter")

    def __init__(self, fn: Callable[[A], T], arg: A, loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.arg = arg
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        self.settled = False
        """Set on the event loop once the transaction has ended (committed or rolled back)."""
        self.waiter: asyncio.Future[None] | None = None
        """A cancelled caller waits on this for the end of its transaction."""

    def settle(self, result: T | None, exc: BaseException | None) -> None:
        """On the event loop: hand the outcome to the caller (or to its cancelled ``run``)."""
        self.settled = True
        if not self.future.done():  # a cancelled caller's future is done already
            if exc is None:
                self.future.set_result(result)  # type: ignore[arg-type]  # None only with exc
            else:
                self.future.set_exception(exc)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class SqliteWriter:
    """Runs write transactions on one SQLite connection in one thread; see the module docstring.

    Args:
        url: the database URL (any SQLite driver name; the standard ``sqlite3`` module is used).
        on_connect: applies the pragmas to a new DB-API connection.
    """

    def __init__(self, url: sa.URL, on_connect: Callable[[Any], None]) -> None:
        # One connection for the life of the writer; NullPool would reopen the file per
        # transaction, a queue pool would keep connections this thread never uses.
        # The connection is used by one thread at a time, but not always the same one (inline).
        self.engine = sa.create_engine(
            url.set(drivername="sqlite+pysqlite"),
            poolclass=sa.pool.StaticPool,
            connect_args={"check_same_thread": False},
        )

        @sa.event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transactions out of the sqlite3 module's hands (it would BEGIN DEFERRED lazily,
            # before the first write only) so that _transaction decides how each one starts.
            dbapi_conn.isolation_level = None
            on_connect(dbapi_conn)

        # A thread of its own fed by a SimpleQueue, answering through call_soon_threadsafe: a
        # ThreadPoolExecutor hop wrapped in asyncio.shield cost about 60 µs of CPU per
        # transaction (its futures, callbacks, condition and semaphore) against about 20 here,
        # paid once per group commit: at a paced rate, once per webhook.
        self._jobs: queue.SimpleQueue[_Job[Any, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sa.Connection | None = None
        self._in_thread = 0
        """Jobs handed to the thread and not yet settled: an inline body needs it idle."""

    async def run(self, body: Callable[[sa.Connection], T], *, inline: bool = False) -> tuple[T, bool]:
        """``body(conn)`` in one transaction in the writer thread; its result and whether it wrote.

        Returned once committed. "Wrote" means it changed a row: a transaction that only looked
        proves nothing about the disk (``GET /ready`` trusts recent writing commits).

        Transactions run one after another in submission order. If the caller is cancelled the
        transaction still finishes (committed or rolled back) before this returns, so the next
        one never overlaps it. The caller serialises its calls (the storage engine's write lock).

        Args:
            body: the transaction's statements.
            inline: run ``body`` on the calling thread, and only the ``COMMIT`` in the writer
                thread (see the module docstring); for bounded work only, since it holds the
                event loop. Without the file's write lock at once, the thread runs it all.

        Raises:
            sqlalchemy.exc.SQLAlchemyError, OSError: the database failed; nothing was committed.
        """
        if inline and self._in_thread == 0:
            conn, raw = self._connection()
            if self._begin_at_once(raw):
                done = self._run_body(conn, raw, body)
                await self._call(self._commit, conn)
                return done
        return await self._call(self._transaction, body)

    async def _call(self, fn: Callable[[A], T], arg: A) -> T:
        """``fn(arg)`` in the writer thread, after what was submitted before; see :meth:`run`."""
        job = _Job(fn, arg, asyncio.get_running_loop())
        if self._thread is None:
            # A daemon: a process that exits without close() must not hang on this thread
            # waiting for work (what was submitted has been awaited by then, or is abandoned).
            self._thread = threading.Thread(target=self._serve, name="zaphub-sqlite-writer", daemon=True)
            self._thread.start()
        self._jobs.put(job)
        self._in_thread += 1
        try:
            return await job.future
        except asyncio.CancelledError:
            if not job.settled:  # let it end first, so the next transaction never overlaps it
                job.waiter = job.loop.create_future()
                await job.waiter
            raise
        finally:
            self._in_thread -= 1

    def _serve(self) -> None:
        """The writer thread: run the queued jobs in order until ``None`` arrives."""
        while (job := self._jobs.get()) is not None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.fn(job.arg)
            except BaseException as exc:  # handed to the caller, as an executor would
                error = exc
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
                job.loop.call_soon_threadsafe(job.settle, result, error)
            del job, result, error  # no reference cycle through the traceback while idle

    def _connection(self) -> tuple[sa.Connection, Any]:
        """The writer's connection (opened again if it was lost) and its ``sqlite3`` connection."""
        conn = self._conn
        if conn is None or conn.invalidated or conn.closed:
            if conn is not None:
                conn.close()
            conn = self._conn = self.engine.connect()
        raw = conn.connection.dbapi_connection
        assert raw is not None  # checked out until close()
        return conn, raw

    def _transaction(self, body: Callable[[sa.Connection], T]) -> tuple[T, bool]:
        conn, raw = self._connection()
        _execute(raw, "BEGIN IMMEDIATE")
        done = self._run_body(conn, raw, body)
        self._commit(conn)
        return done

    def _run_body(self, conn: sa.Connection, raw: Any, body: Callable[[sa.Connection], T]) -> tuple[T, bool]:
        """``body`` in the transaction just begun: its result and whether it changed a row.

        If it fails, the transaction is rolled back and the error raised.
        """
        before = raw.total_changes
        try:
            result = body(conn)
        except BaseException:
            self._rollback(conn, raw)
            raise
        return result, raw.total_changes != before

    def _begin_at_once(self, raw: Any) -> bool:
        """``BEGIN IMMEDIATE`` without waiting; ``False`` if another connection holds the lock."""
        try:
            # busy_timeout as it is now (a body may have changed it), restored whatever happens.
            (timeout,) = raw.execute("PRAGMA busy_timeout").fetchone()
            raw.execute("PRAGMA busy_timeout=0")
            try:
                raw.execute("BEGIN IMMEDIATE")
            finally:
                raw.execute(f"PRAGMA busy_timeout={int(timeout)}")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:  # extended codes included
                return False
            raise sa.exc.DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error) from exc
        except sqlite3.Error as exc:
            raise sa.exc.DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error) from exc
        return True

    @staticmethod
    def _commit(conn: sa.Connection) -> None:
        """``COMMIT`` the open transaction; on failure roll back, then raise."""
        raw = conn.connection.dbapi_connection
        try:
            _execute(raw, "COMMIT")
        except BaseException:
            SqliteWriter._rollback(conn, raw)
            raise
        if conn.in_transaction():  # the body ran SQLAlchemy statements: end its (empty) transaction
            conn.commit()

    @staticmethod
    def _rollback(conn: sa.Connection, raw: Any) -> None:
        """End a failed transaction: nothing of it stays, and no transaction is left open."""
        if raw.in_transaction:  # a failed COMMIT may leave it open too
            _execute(raw, "ROLLBACK")
        if conn.in_transaction():
            conn.rollback()

    async def close(self) -> None:
        """Close the connection and stop the thread (after the transactions already submitted)."""
        if self._thread is None:  # the thread never ran (a connection may have, inline)
            self._close_connection(None)
            return
        await self._call(self._close_connection, None)
        self._jobs.put(None)
        self._thread = None

    def _close_connection(self, _: None) -> None:
        # In the writer thread when it runs: the connection is used by one thread at a time.
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self.engine.dispose()
