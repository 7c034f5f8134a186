"""Shared fixtures: storage backends, real servers on free ports, service availability.

PostgreSQL and Redis come from ``ZAPHUB_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and ``ZAPHUB_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). Outside CI a missing service skips its tests with the reason; with
``CI=true`` it fails them, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import pg_admin_url, redis_url, service_available

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_service(name: str, url: str) -> None:
    """Skip (or, in CI, fail) when a backing service is not reachable."""
    reason = service_available(url)
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{name} is required in CI but {reason}")
    pytest.skip(f"{name} not available: {reason}")


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test (setup_logging configures it process-wide)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'zaphub.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'zaphub.db'}"
        return
    yield from _fresh_postgres()


def _fresh_postgres() -> Iterator[str]:
    admin = pg_admin_url()
    require_service("PostgreSQL", admin)
    name = f"zaphub_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_exec(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database (for tests that only make sense on PostgreSQL)."""
    yield from _fresh_postgres()


@pytest.fixture
def redis_test_url() -> str:
    url = redis_url()
    require_service("Redis", url)
    return url


@pytest.fixture
def redis_channel() -> str:
    """A unique pub/sub channel so concurrent test runs never hear each other."""
    return f"zaphub-test-{uuid.uuid4().hex[:8]}"
