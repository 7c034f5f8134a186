"""The app factory's own surface: ops endpoints, readiness, metrics, the error envelope, OpenAPI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.testing import AsyncTestClient

from core import hookimpl
from core.app import create_app
from core.config import parse_config
from core.errors import ConflictError
from core.host import Host, ReadinessCheck
from tests.helpers import free_port


class Order(msgspec.Struct):
    qty: int


@get("/items/{item_id:int}", sync_to_thread=False)
def read_item(item_id: FromPath[int], limit: FromQuery[int] = 10) -> dict[str, int]:
    return {"id": item_id, "limit": limit}


@post("/items", sync_to_thread=False)
def create_item(data: JSONBody[Order]) -> dict[str, int]:
    return {"qty": data.qty}


@get("/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("secret internals")


@get("/taken", sync_to_thread=False)
def taken() -> None:
    raise ConflictError("that name is taken: pick another")


class Demo:
    """A plugin contributing routes and a readiness check whose answer the test controls."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self.started_with: Host | None = None

    @hookimpl
    def register_routes(self) -> list[Any]:
        return [read_item, create_item, boom, taken]

    @hookimpl
    def register_readiness_checks(self) -> list[ReadinessCheck]:
        async def check() -> str | None:
            return self.problem

        return [("demo", check)]

    @hookimpl
    async def on_startup(self, host: Host) -> None:
        self.started_with = host


def make_app(tmp_path: Path, demo: Demo | None = None, **sections: Any) -> Litestar:
    data: dict[str, Any] = {"storage": {"url": f"sqlite:///{tmp_path / 'zaphub.db'}"}, **sections}
    data.setdefault("plugins", {"demo": {}} if demo else {})
    return create_app(parse_config(data, env={}), extra_plugins={"demo": demo} if demo else None)


@asynccontextmanager
async def client_for(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app) as client:
        yield client


@pytest.fixture
def demo() -> Demo:
    return Demo()


async def test_health_and_ready_answer_when_everything_is_up(tmp_path: Path, demo: Demo) -> None:
    app = make_app(tmp_path, demo)
    async with client_for(app) as client:
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"storage": "ok", "demo": "ok"}}
        assert demo.started_with is app.state.host


async def test_ready_names_the_failing_plugin_check(tmp_path: Path, demo: Demo) -> None:
    async with client_for(make_app(tmp_path, demo)) as client:
        demo.problem = "access token expired (code 190)"
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"storage": "ok", "demo": "access token expired (code 190)"}
        assert (await client.get("/health")).status_code == 200  # alive, just not ready
        demo.problem = None
        assert (await client.get("/ready")).status_code == 200


async def test_ready_names_redis_when_it_is_unreachable(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    async with client_for(make_app(tmp_path, redis={"url": closed})) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["storage"] == "ok"
        assert body["checks"]["redis"].startswith("unreachable")


@pytest.mark.redis
async def test_ready_checks_a_reachable_redis(tmp_path: Path, redis_test_url: str) -> None:
    async with client_for(make_app(tmp_path, redis={"url": redis_test_url})) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"storage": "ok", "redis": "ok"}


async def test_metrics_speak_the_prometheus_text_format(tmp_path: Path) -> None:
    async with client_for(make_app(tmp_path)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers.get_list("content-type") == ["text/plain; version=1.0.0; charset=utf-8"]
    assert "# TYPE zaphub_hook_errors_total counter" in response.text
    assert "# TYPE zaphub_ingest_seconds histogram" in response.text
    assert "zaphub_event_queue_depth 0.0" in response.text


def _envelope(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    return error


@pytest.mark.parametrize(
    ("request_", "status", "code", "message"),
    [
        (lambda c: c.get("/no/such/path"), 404, "not_found", "Not Found"),
        (lambda c: c.delete("/health"), 405, "method_not_allowed", "Method Not Allowed"),
        (lambda c: c.get("/items/3?limit=many"), 400, "validation_error", "limit: Expected `int`, got `str`"),
        (
            lambda c: c.post("/items", json={"qty": "two"}),
            400,
            "validation_error",
            "qty: Expected `int`, got `str`",
        ),
        (lambda c: c.get("/taken"), 409, "conflict", "that name is taken: pick another"),
        (lambda c: c.get("/boom"), 500, "internal_error", "internal error; the server log has the details"),
    ],
    ids=["404", "405", "query", "body", "api-error", "500"],
)
async def test_every_error_uses_the_json_envelope(
    tmp_path: Path,
    demo: Demo,
    caplog: pytest.LogCaptureFixture,
    request_: Callable[[AsyncTestClient[Litestar]], Any],
    status: int,
    code: str,
    message: str,
) -> None:
    async with client_for(make_app(tmp_path, demo)) as client:
        response = await request_(client)
    assert response.status_code == status
    error = _envelope(response)
    assert (error["code"], error["message"]) == (code, message)
    if status == 500:
        assert "secret internals" not in response.text  # details go to the log, not the client
        assert any("unhandled error on GET /boom" in r.getMessage() for r in caplog.records)


async def test_openapi_describes_the_ops_and_plugin_routes(tmp_path: Path, demo: Demo) -> None:
    async with client_for(make_app(tmp_path, demo)) as client:
        response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "zaphub"
    assert {"/health", "/ready", "/metrics", "/items", "/items/{item_id}"} <= set(schema["paths"])


async def test_startup_logs_the_config_with_secrets_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Keys(msgspec.Struct):
        api_key: str
        region: str

    class Secretive:
        @hookimpl
        def config_schema(self) -> type[msgspec.Struct]:
            return Keys

    closed = f"redis://:redis-pass-123@127.0.0.1:{free_port()}/0"
    config = parse_config(
        {
            "storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"},
            "redis": {"url": closed},
            "plugins": {"secretive": {"api_key": "sk-live-123", "region": "sa-east-1"}},
        }
    )
    app = create_app(config, extra_plugins={"secretive": Secretive()})
    with caplog.at_level(logging.DEBUG, logger="zaphub"):
        async with client_for(app):
            pass
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sa-east-1" in logged  # the config was logged...
    assert "sk-live-123" not in logged  # ...without its secrets
    assert "redis-pass-123" not in logged
