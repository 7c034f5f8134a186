"""Plugin storage that scales: each test on SQLite and PostgreSQL (the ``storage_url`` fixture).

A plugin's :class:`~core.storage.PluginStore` (``host.store(name)``): namespaced, get/set/delete,
listing by prefix, expiry, and compare-and-set that stays exact with several processes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import sqlalchemy as sa

from core.config import StorageConfig
from core.storage import PluginStore, Storage
from core.storage.schema import plugin_state
from core.testing import RunningHost
from tests.helpers import REPO, wait_for


async def test_get_set_delete_in_the_plugins_own_namespace(storage: Storage) -> None:
    bot, other = PluginStore(storage, "mybot"), PluginStore(storage, "other")
    assert await bot.get("k") is None and await bot.get("k", "fallback") == "fallback"
    assert await bot.set("k", {"n": 1}) == 1
    assert await bot.set("k", {"n": 2}) == 2
    assert await other.set("k", "theirs") == 1
    assert await bot.get("k") == {"n": 2} and await other.get("k") == "theirs"
    entry = await bot.entry("k")
    assert entry is not None and (entry.key, entry.value, entry.version, entry.expires_at) == (
        "k",
        {"n": 2},
        2,
        None,
    )
    assert await bot.set("null", None) == 1
    assert (
        await bot.entry("null") is not None and await bot.get("null", "x") is None
    )  # a stored null is a value
    assert await bot.delete("k") is True
    assert await bot.delete("k") is False
    assert await bot.get("k") is None and await other.get("k") == "theirs"


async def test_list_by_prefix_in_key_order_with_pages(storage: Storage) -> None:
    store = PluginStore(storage, "mybot")
    for key in ["order:3", "order:1", "order:2", "orders", "order_x", "order%y", "other:1"]:
        await store.set(key, key.upper())
    await PluginStore(storage, "elsewhere").set("order:9", "not mine")
    assert [e.key for e in await store.list("order:")] == ["order:1", "order:2", "order:3"]
    assert [e.value for e in await store.list("order:")] == ["ORDER:1", "ORDER:2", "ORDER:3"]
    assert [e.key for e in await store.list("order_")] == ["order_x"]  # `_` and `%` are not wildcards
    assert [e.key for e in await store.list("order%")] == ["order%y"]
    first = await store.list("order", limit=2)
    rest = await store.list("order", after=first[-1].key, limit=100)
    assert [e.key for e in first + rest] == sorted(
        ["order:1", "order:2", "order:3", "orders", "order_x", "order%y"]
    )
    assert len(await store.list()) == 7
    with pytest.raises(ValueError, match="limit must be 1 to 1000"):
        await store.list(limit=0)


async def test_entries_expire(storage: Storage) -> None:
    store = PluginStore(storage, "mybot")
    await store.set("session:1", "short", ttl=2)  # long enough to be read back on a loaded machine
    await store.set("session:2", "long", ttl=3600)
    await store.set("session:3", "forever")
    entry = await store.entry("session:1")
    assert entry is not None and entry.expires_at is not None

    async def gone() -> bool:
        return await store.get("session:1") is None

    await wait_for(gone, what="session:1 to expire")
    assert [e.key for e in await store.list("session:")] == ["session:2", "session:3"]
    assert await store.delete("session:1") is False  # an expired key is already gone
    assert await store.add("session:1", "again") is True  # and free to take
    await store.set("session:4", "short", ttl=0.01)
    await wait_for(lambda: _gone(store, "session:4"), what="session:4 to expire")
    assert await storage.state_purge_expired() == 1
    async with storage.read() as conn:
        keys = (
            await conn.execute(sa.select(plugin_state.c.key).where(plugin_state.c.plugin == "mybot"))
        ).scalars()
        assert sorted(keys) == ["session:1", "session:2", "session:3"]


async def _gone(store: PluginStore, key: str) -> bool:
    return await store.get(key) is None


async def test_compare_and_set(storage: Storage) -> None:
    store = PluginStore(storage, "mybot")
    assert await store.compare_and_set("c", 1, version=None) == 1  # create only if absent
    assert await store.compare_and_set("c", 99, version=None) is None
    assert await store.add("c", 99) is False
    assert await store.compare_and_set("c", 2, version=1) == 2
    assert await store.compare_and_set("c", 99, version=1) is None  # stale version: someone wrote first
    assert await store.get("c") == 2
    assert await store.delete("c", version=1) is False
    assert await store.delete("c", version=2) is True
    assert await store.compare_and_set("c", 3, version=2) is None  # deleted
    await store.set("lease", "a", ttl=0.05)
    await wait_for(lambda: _gone(store, "lease"), what="the lease to expire")
    assert await store.add("lease", "b", ttl=60) is True  # an expired entry counts as unset
    entry = await store.entry("lease")
    assert entry is not None and entry.value == "b" and entry.version == 2  # versions never repeat


async def test_bad_keys_values_and_ttls_are_refused_with_the_fix(storage: Storage) -> None:
    store = PluginStore(storage, "mybot")
    with pytest.raises(ValueError, match="keys are strings of 1 to 256 characters"):
        await store.set("", 1)
    with pytest.raises(ValueError, match="keys are strings of 1 to 256 characters"):
        await store.get("k" * 257)
    with pytest.raises(ValueError, match="the value of 'k' is not JSON"):
        await store.set("k", object())
    with pytest.raises(ValueError, match="ttl must be a positive number of seconds"):
        await store.set("k", 1, ttl=0)


async def _increment(store: PluginStore, key: str) -> int:
    """Read-modify-write with compare-and-set; returns how many times it lost the race."""
    lost = 0
    while True:
        entry = await store.entry(key)
        value = (entry.value if entry else 0) + 1
        if await store.compare_and_set(key, value, version=entry.version if entry else None) is not None:
            return lost
        lost += 1


async def test_concurrent_compare_and_set_loses_no_update(storage: Storage) -> None:
    """Two database connections pools (as two processes have) race on one counter and one lock."""
    second = Storage(StorageConfig(url=storage.config.url))
    await second.open()
    try:
        stores = [PluginStore(storage, "mybot"), PluginStore(second, "mybot")]
        lost = await asyncio.gather(*(_increment(stores[i % 2], "hits") for i in range(20)))
        winners = await asyncio.gather(*(stores[i % 2].add("lock", {"by": i}) for i in range(10)))
    finally:
        await second.close()
    assert await stores[0].get("hits") == 20
    if storage.dialect == "postgresql":
        assert sum(lost) > 0  # they really raced
    assert winners.count(True) == 1
    assert await stores[0].get("lock") == {"by": winners.index(True)}


WORKER = """
import asyncio, sys
from core.config import StorageConfig
from core.storage import PluginStore, Storage

async def main(url, n):
    storage = Storage(StorageConfig(url=url))
    await storage.open()
    store = PluginStore(storage, "mybot")
    for _ in range(n):
        while True:
            entry = await store.entry("hits")
            value = (entry.value if entry else 0) + 1
            if await store.compare_and_set("hits", value, version=entry.version if entry else None):
                break
    await storage.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.slow
async def test_several_processes_count_exactly(storage: Storage) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, storage.config.url, "25", cwd=REPO, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=120)
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode() for _, err in results]
    assert await PluginStore(storage, "mybot").get("hits") == 75


async def test_the_host_hands_each_enabled_plugin_its_store(zaphub: RunningHost) -> None:
    store = zaphub.host.store("whatsapp")
    assert isinstance(store, PluginStore) and store.plugin == "whatsapp"
    assert zaphub.host.store("whatsapp") is store
    await store.set("k", "v")
    assert await zaphub.host.storage.state_get("whatsapp", "k") is not None
    with pytest.raises(
        LookupError, match="no enabled plugin is named 'mybto'; enabled: crm_realtime, whatsapp"
    ):
        zaphub.host.store("mybto")
