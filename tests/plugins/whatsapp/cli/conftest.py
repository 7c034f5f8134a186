"""Fixtures of the whatsapp command tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers import serve
from tests.plugins.whatsapp.cli.harness import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    async with serve(rec.app) as url:
        yield rec, url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WHATSAPP_APP_SECRET", "WHATSAPP_PHONE_NUMBER_ID", "WHATSAPP_ACCESS_TOKEN", "ZAPHUB_URL"):
        monkeypatch.delenv(name, raising=False)
