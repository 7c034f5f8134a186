"""SQLite's writer thread and its raw statements: same durability, same rows, same errors.

Write transactions on SQLite run whole in a dedicated thread (core/storage/writer.py), a large
ingest's body on the event loop with only its COMMIT in that thread, and the
hottest statements skip SQLAlchemy's per-row work (core/storage/sqlite_raw.py). These tests pin
what that must not change: the pragmas a commit is made with, the exact text SQLAlchemy would
have stored, a failure reported as a StorageError with nothing kept, a cancelled caller that
cannot overlap the next transaction, and another connection's write lock waited for.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from core.config import StorageConfig
from core.models import InboundMessage, iso_z
from core.storage import Storage, StorageError
from core.storage.ingest import INLINE_BATCH
from core.storage.schema import JSON, UTCDateTime, plugin_state
from core.storage.sqlite_raw import RawStatement, raw_cursor, sqlite_json, sqlite_time, sqlite_time_value

PNID = "100000000000002"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def inbound(wamid: str, **changes: Any) -> InboundMessage:
    values: dict[str, Any] = {
        "phone_number_id": PNID,
        "wamid": wamid,
        "wa_id": "5511999999999",
        "profile_name": "João",
        "type": "text",
        "body": "Olá",
        "timestamp": T0,
        "raw": {"id": wamid},
    }
    return InboundMessage(**{**values, **changes})


async def open_storage(url: str, synchronous: Literal["FULL", "NORMAL"] = "FULL") -> Storage:
    storage = Storage(StorageConfig(url=url, sqlite_synchronous=synchronous))
    await storage.open()
    return storage


@pytest.fixture
async def storage(sqlite_url: str) -> AsyncIterator[Storage]:
    """SQLite only (the writer thread is SQLite's), unlike the conftest fixture of the same name."""
    store = await open_storage(sqlite_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize(("synchronous", "expected"), [("FULL", 2), ("NORMAL", 1)])
async def test_the_writer_commits_with_the_configured_durability(
    sqlite_url: str, synchronous: Literal["FULL", "NORMAL"], expected: int
) -> None:
    storage = await open_storage(sqlite_url, synchronous)
    try:

        def pragmas(conn: sa.Connection) -> tuple[Any, ...]:
            return tuple(
                conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("synchronous", "journal_mode", "foreign_keys", "busy_timeout")
            )

        assert await storage.run_write(pragmas) == (expected, "wal", 1, 10000)
        # A large ingest's body runs on the event loop with only its COMMIT in the writer thread:
        # same connection, same pragmas, and its no-wait BEGIN leaves busy_timeout as it was.
        await storage.ingest([inbound(f"wamid.DURABLE{i}") for i in range(INLINE_BATCH)], [])
        assert await storage.run_write_inline(pragmas) == (expected, "wal", 1, 10000)
        assert await storage.run_write(pragmas) == (expected, "wal", 1, 10000)
    finally:
        await storage.close()


TIMES = [
    datetime(2026, 11, 29, 12, 0, tzinfo=UTC),  # no microseconds: still written
    datetime(2026, 11, 29, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-3))),
    datetime(2026, 11, 29, 12, 0, 0, 7),  # naive: taken as UTC
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a year below 1000 keeps its four digits
]
JSONS: list[Any] = [None, {"body": "Olá \x00 😀", "n": [1, 2.5, True, None]}, "text", []]


@pytest.mark.parametrize(("when", "value"), list(zip(TIMES, JSONS, strict=True)))
def test_raw_values_are_the_text_sqlalchemy_stores(tmp_path: Path, when: datetime, value: Any) -> None:
    meta = sa.MetaData()
    table = sa.Table(
        "t",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime()),
        sa.Column("j", JSON),
    )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'v.db'}")
    meta.create_all(engine)
    raw_insert = RawStatement(table.insert(), ["id", "at", "j"])
    with engine.begin() as conn:
        conn.execute(table.insert(), {"id": 1, "at": when, "j": value})
        cursor = raw_cursor(conn)
        assert cursor is not None
        raw_insert.executemany(cursor, [{"id": 2, "at": sqlite_time(when), "j": sqlite_json(value)}])
        stored = conn.exec_driver_sql("SELECT at, typeof(at), j, typeof(j) FROM t ORDER BY id").all()
        read = conn.execute(sa.select(table.c.at).where(table.c.id == 2)).scalar_one()
    engine.dispose()
    assert stored[0] == stored[1]
    assert sqlite_time_value(stored[1][0]) == read == (when if when.tzinfo else when.replace(tzinfo=UTC))


def test_memoised_time_text_tells_the_two_instants_of_a_repeated_hour_apart() -> None:
    # 01:30 happens twice in New York on 2026-11-01; the two datetimes compare equal (same tzinfo:
    # wall time, fold ignored) and hash alike, so a cache keyed on them would answer the first's
    # text for the second. sqlite_time and iso_z are memoised; their keys must be instants.
    zone = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=zone)
    second = first.replace(fold=1)
    assert first == second
    assert sqlite_time(first) == "2026-11-01 05:30:00.000000"
    assert sqlite_time(second) == "2026-11-01 06:30:00.000000"
    assert iso_z(first) == "2026-11-01T05:30:00Z"
    assert iso_z(second) == "2026-11-01T06:30:00Z"
    assert iso_z(datetime(2026, 11, 1, 5, 30)) == iso_z(first)  # naive is UTC


async def test_a_failing_statement_is_a_storage_error_and_nothing_of_the_batch_is_kept(
    storage: Storage,
) -> None:
    broken = inbound("wamid.BAD", type=None)  # NOT NULL: fails on the raw insert
    with pytest.raises(StorageError, match=r"IntegrityError: NOT NULL constraint failed: messages\.type"):
        await storage.ingest([inbound("wamid.OK"), broken], [])
    assert await storage.list_conversations() == []
    assert (await storage.event_bounds()).last == 0
    stored = await storage.ingest([inbound("wamid.OK")], [])
    assert [m.message.wamid for m in stored.new_messages] == ["wamid.OK"]
    assert stored.new_messages[0].event is not None and stored.new_messages[0].event.id == 1


async def test_a_cancelled_caller_lets_its_transaction_finish_before_the_next_starts(
    storage: Storage,
) -> None:
    started, release = threading.Event(), threading.Event()
    row = {"plugin": "test", "key": "k", "value": "first", "updated_at": T0}

    def slow(conn: sa.Connection) -> None:
        conn.execute(plugin_state.insert(), row)
        started.set()
        release.wait(30)

    task = asyncio.create_task(storage.run_write(slow))
    assert await asyncio.to_thread(started.wait, 30)
    task.cancel()
    following = asyncio.create_task(storage.run_write(lambda conn: conn.execute(plugin_state.delete())))
    done, _ = await asyncio.wait([task, following], timeout=0.2)
    assert not done  # the body still runs: neither the cancelled caller nor the next may go on
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await following
    async with storage.read() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(plugin_state))).scalar() == 0


@pytest.mark.parametrize("size", [1, INLINE_BATCH], ids=["in the writer thread", "body on the event loop"])
async def test_another_connection_holding_the_write_lock_delays_ingest_instead_of_failing_it(
    storage: Storage, sqlite_url: str, size: int
) -> None:
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beating = asyncio.create_task(heartbeat())
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE event_cursors SET position = position")
        wamids = [f"wamid.WAITS{i}" for i in range(size)]
        task = asyncio.create_task(storage.ingest([inbound(w) for w in wamids], []))
        done, _ = await asyncio.wait([task], timeout=0.3)
        assert not done  # it cannot commit while the other connection holds the lock
        # ...and it waits in the writer thread: a large ingest's body runs on the event loop, but
        # never waits there for another connection's lock (the loop went on ticking).
        assert ticks >= 10
        other.execute("COMMIT")
        stored = await task
    finally:
        beating.cancel()
        other.close()
    assert [m.message.wamid for m in stored.new_messages] == wamids


async def test_a_write_lock_held_past_busy_timeout_is_a_storage_error_and_the_writer_recovers(
    storage: Storage, sqlite_url: str
) -> None:
    # BEGIN IMMEDIATE and COMMIT go to sqlite3 directly: their errors must still be StorageErrors.
    await storage.run_write(lambda conn: conn.exec_driver_sql("PRAGMA busy_timeout=50"))
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="OperationalError: database is locked"):
            await storage.ingest([inbound("wamid.LOCKED")], [])
        other.execute("COMMIT")
    finally:
        other.close()
    stored = await storage.ingest([inbound("wamid.LOCKED")], [])
    assert [m.message.wamid for m in stored.new_messages] == ["wamid.LOCKED"]


@pytest.mark.parametrize("inline", [False, True])
async def test_a_body_failing_after_sqlalchemy_statements_leaves_no_transaction_open(
    storage: Storage, inline: bool
) -> None:
    row = {"plugin": "test", "key": "k", "value": "kept?", "updated_at": T0}

    def failing(conn: sa.Connection) -> None:
        conn.execute(plugin_state.insert(), row)  # through SQLAlchemy: it autobegins its own
        raise RuntimeError("the body gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        await (storage.run_write_inline(failing) if inline else storage.run_write(failing))
    await storage.run_write(lambda conn: conn.execute(plugin_state.insert(), {**row, "value": "second"}))
    async with storage.read() as conn:
        assert (await conn.execute(sa.select(plugin_state.c.value))).scalars().all() == ["second"]
