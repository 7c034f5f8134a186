"""zaphub's pytest plugin (entry point ``pytest11``): fixtures that run a real host for a test.

Loaded by pytest in every environment where zaphub is installed, so importing it does no work:
fixtures import the host only when a test asks for one. Every fixture is named ``zaphub*``.

``zaphub``
    A :class:`core.testing.RunningHost` started for the test and stopped after it: ``.url``,
    ``.host`` (the :class:`core.host.Host` hooks receive), ``.http`` (an ``httpx.AsyncClient``
    on its URL), ``.kit(plugin)``.
``zaphub_config``
    The config the host starts with, a dict shaped like ``config.yaml``. Override it in your
    test module or ``conftest.py``; the default enables ``whatsapp`` (sandbox on) and
    ``crm_realtime``.
``zaphub_plugins``
    Plugin objects by name that need no installation (default none): ``{"mybot": mybot}``.
``zaphub_storage_url``
    A SQLite file in the test's temp dir; a fresh PostgreSQL database (dropped afterwards) when
    the test asks with ``@pytest.mark.parametrize("zaphub_storage_url", ["postgresql"],
    indirect=True)``. The server comes from ``ZAPHUB_TEST_POSTGRES_URL`` (default
    ``postgresql://postgres@127.0.0.1:5432/postgres``); when it does not answer the test is
    skipped with the reason (failed with ``CI=true``).
``zaphub_whatsapp``
    The whatsapp plugin's test kit: signed webhooks in, the sandbox's recorded sends out.
``zaphub_crm``
    The crm_realtime plugin's test kit: tokens, an authorized HTTP client, Socket.IO clients.

Async fixtures need pytest-asyncio (``pip install 'zaphub[testing]'``); set ``asyncio_mode =
"auto"`` in your pytest configuration or mark tests with ``@pytest.mark.asyncio``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from core.testing import RunningHost

try:
    import pytest_asyncio
except ImportError:  # zaphub without its testing extra: the plain fixtures still work
    pytest_asyncio = None  # type: ignore[assignment]

POSTGRES_ENV = "ZAPHUB_TEST_POSTGRES_URL"
POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def zaphub_config() -> dict[str, Any]:
    """The test host's config (override me): the whatsapp sandbox and crm_realtime."""
    return {"plugins": {"whatsapp": {}, "crm_realtime": {}}}


@pytest.fixture
def zaphub_plugins() -> dict[str, object]:
    """Plugin objects by name that are not installed (override me): ``{"mybot": mybot}``."""
    return {}


@pytest.fixture
def zaphub_storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the test host stores: ``sqlite`` (default) or ``postgresql`` (indirect parameter)."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'zaphub.db'}"
    elif kind in ("postgresql", "postgres"):
        yield from _fresh_postgres()
    else:
        raise ValueError(f"zaphub_storage_url: unknown backend {kind!r}; use 'sqlite' or 'postgresql'")


def _fresh_postgres() -> Iterator[str]:
    import asyncio

    admin = os.environ.get(POSTGRES_ENV, POSTGRES_DEFAULT)
    name = f"zaphub_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
    except (OSError, Exception) as exc:
        reason = f"PostgreSQL at {admin.rsplit('@', 1)[-1]} is not usable ({exc.__class__.__name__}: {exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; set {POSTGRES_ENV}")
        pytest.skip(f"{reason}; set {POSTGRES_ENV}")
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_exec(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _zaphub(
    zaphub_config: dict[str, Any], zaphub_plugins: dict[str, object], zaphub_storage_url: str
) -> AsyncIterator[RunningHost]:
    from core.testing import run_host

    async with run_host(zaphub_config, storage_url=zaphub_storage_url, plugins=zaphub_plugins) as running:
        yield running


if pytest_asyncio is not None:
    zaphub = pytest_asyncio.fixture(_zaphub, name="zaphub")
else:

    @pytest.fixture(name="zaphub")
    def _zaphub_unavailable() -> None:
        pytest.fail("the zaphub fixture needs pytest-asyncio: pip install 'zaphub[testing]'")


@pytest.fixture
def zaphub_whatsapp(zaphub: RunningHost) -> Any:
    """The whatsapp plugin's test kit (``plugins.whatsapp.testing.WhatsAppKit``)."""
    return zaphub.kit("whatsapp")


@pytest.fixture
def zaphub_crm(zaphub: RunningHost) -> Any:
    """The crm_realtime plugin's test kit (``plugins.crm_realtime.testing.CrmKit``)."""
    return zaphub.kit("crm_realtime")
