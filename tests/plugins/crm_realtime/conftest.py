"""The hosts most crm_realtime tests run against (a test module may define its own ``z``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.plugins.crm_realtime.harness import Zaphub, zaphub


@pytest.fixture
async def z(tmp_path: Path) -> AsyncIterator[Zaphub]:
    """A host on a SQLite file of its own."""
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}") as running:
        yield running


@pytest.fixture
async def zb(storage_url: str) -> AsyncIterator[Zaphub]:
    """The same host on SQLite and on PostgreSQL."""
    async with zaphub(storage_url) as running:
        yield running
