"""Fixtures of the core tests (a test module may define its own ``storage``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.config import StorageConfig
from core.storage import Storage


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    """An open :class:`Storage` on SQLite and on PostgreSQL, closed after the test."""
    store = Storage(StorageConfig(url=storage_url))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
