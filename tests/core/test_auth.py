"""Protected plugin routes: a third-party route requires the CRM token and scope through core.auth.

The plugin below imports only ``core``; ``crm_realtime`` provides the verifier, as it does for
``/api``. Handlers ask for ``host: Host`` and ``agent: Agent`` plainly: the suite runs with
``filterwarnings = error``, so a Litestar deprecation warning would fail these tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import LitestarDeprecationWarning
from litestar.params import FromPath
from litestar.testing import AsyncTestClient

from core import hookimpl
from core.app import create_app
from core.auth import Agent
from core.config import parse_config
from core.errors import NotFoundError
from core.host import Host
from plugins.crm_realtime.auth import issue_token
from plugins.crm_realtime.config import CrmRealtimeSettings

JWT_SECRET = "auth-test-jwt-secret-0123456789abcdef"
NUMBER = "100000000000002"


@get("/notes/{number:str}")
async def notes(agent: Agent, host: Host, number: FromPath[str]) -> dict[str, Any]:
    agent.require(number, f"the notes of {number}")
    return {"sub": agent.sub, "scope": sorted(agent.scope or []), "host": isinstance(host, Host)}


@get("/notes-named/{number:str}", sync_to_thread=False)
def notes_named(
    agent: NamedDependency[Agent], host: NamedDependency[Host], number: FromPath[str]
) -> dict[str, str]:
    if host.storage is None:
        raise NotFoundError("no storage")
    agent.require(number, f"the notes of {number}")
    return {"sub": agent.sub}


@get("/public", sync_to_thread=False)
def public(host: Host) -> dict[str, bool]:
    return {"started": host.started}


class Notes:
    @hookimpl
    def register_routes(self) -> list[Any]:
        return [notes, notes_named, public]


def app_config(tmp_path: Path, *, crm: bool = True) -> Any:
    plugins: dict[str, Any] = {"notes": {}}
    if crm:
        plugins["crm_realtime"] = {"jwt_secret": JWT_SECRET}
    return parse_config({"storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"}, "plugins": plugins})


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(app_config(tmp_path), extra_plugins={"notes": Notes()})
    async with AsyncTestClient(app) as c:
        yield c


def token(scope: list[str] | None = None, sub: str = "ana") -> dict[str, str]:
    crm = CrmRealtimeSettings(jwt_secret=JWT_SECRET)
    return {"Authorization": f"Bearer {issue_token(crm, sub=sub, scope=scope)}"}


@pytest.mark.parametrize("path", ["/notes", "/notes-named"])
async def test_no_token_is_401_naming_the_fix(client: AsyncTestClient[Any], path: str) -> None:
    response = await client.get(f"{path}/{NUMBER}")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert "Authorization: Bearer <JWT>" in error["message"] and "zaphub token" in error["message"]


async def test_a_refused_token_is_401_with_the_reason(client: AsyncTestClient[Any]) -> None:
    response = await client.get(f"/notes/{NUMBER}", headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status_code == 401
    assert "malformed token" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/notes", "/notes-named"])
async def test_a_token_scoped_to_another_number_is_403(client: AsyncTestClient[Any], path: str) -> None:
    response = await client.get(f"{path}/{NUMBER}", headers=token(scope=["100000000000999"]))
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert error["message"] == (
        f"the notes of {NUMBER} belongs to business number {NUMBER}, "
        "which your token's scope does not include"
    )


async def test_a_good_token_reaches_the_handler_with_its_identity(client: AsyncTestClient[Any]) -> None:
    response = await client.get(f"/notes/{NUMBER}", headers=token(scope=[NUMBER], sub="ana"))
    assert response.status_code == 200
    assert response.json() == {"sub": "ana", "scope": [NUMBER], "host": True}
    unscoped = await client.get(f"/notes-named/{NUMBER}", headers=token(sub="crm-backend"))
    assert (unscoped.status_code, unscoped.json()) == (200, {"sub": "crm-backend"})


async def test_routes_without_agent_need_no_token(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/public")
    assert (response.status_code, response.json()) == (200, {"started": True})


async def test_without_a_verifier_protected_routes_say_which_plugin_to_enable(tmp_path: Path) -> None:
    app = create_app(app_config(tmp_path, crm=False), extra_plugins={"notes": Notes()})
    async with AsyncTestClient(app) as c:
        response = await c.get(f"/notes/{NUMBER}", headers={"Authorization": "Bearer x.y.z"})
    assert response.status_code == 503
    assert "enable the crm_realtime plugin" in response.json()["error"]["message"]


def test_other_unmarked_dependencies_still_warn(tmp_path: Path) -> None:
    """Only ``host`` and ``agent`` are exempt: Litestar's warning about any other name stays."""

    @get("/other", sync_to_thread=False, dependencies={"clock": Provide(lambda: 1, sync_to_thread=False)})
    def other(clock: int) -> int:
        return clock

    class Other:
        @hookimpl
        def register_routes(self) -> list[Any]:
            return [other]

    with pytest.raises(LitestarDeprecationWarning, match="Inferred dependency field 'clock'"):
        create_app(app_config(tmp_path), extra_plugins={"notes": Other()})
