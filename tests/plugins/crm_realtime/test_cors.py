"""CORS of the REST API: ``cors_allowed_origins`` governs ``/api`` as it governs Socket.IO.

A browser CRM on another origin preflights, then calls with its token; the answers (errors
included) must carry the headers the browser checks. ``/socket.io`` and the webhook keep their own
behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from plugins.whatsapp import webhook_builders as wb
from tests.plugins.crm_realtime.harness import Zaphub, zaphub

CRM = "https://crm.example.com"
EVIL = "https://evil.example.net"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}


@pytest.fixture
async def z(tmp_path: Path) -> Any:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm={"cors_allowed_origins": [CRM]}) as running:
        yield running


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def varies_on_origin(response: httpx.Response) -> bool:
    return "origin" in [v.strip().lower() for v in response.headers.get("vary", "").split(",")]


async def conversation_id(z: Zaphub) -> int:
    await z.inbound("Olá!")
    await z.settle()
    listed = (await z.http.get("/api/conversations", headers=z.auth())).json()
    return int(listed["conversations"][0]["id"])


async def test_preflight_from_an_allowed_origin_is_answered_without_a_token(z: Zaphub) -> None:
    for path in ("/api/conversations", "/api/conversations/1/messages", "/api/messages/7/media"):
        response = await z.http.options(path, headers={"Origin": CRM, **PREFLIGHT})
        assert response.status_code == 204, (path, response.text)
        assert cors_headers(response) == {
            "access-control-allow-origin": CRM,
            "access-control-allow-methods": "GET, POST, PATCH, OPTIONS",
            "access-control-allow-headers": "Authorization, Content-Type, Idempotency-Key",
            "access-control-max-age": "600",
        }
        assert varies_on_origin(response)
        assert response.content == b""


async def test_preflight_from_another_origin_is_refused_without_cors_headers(z: Zaphub) -> None:
    response = await z.http.options("/api/conversations", headers={"Origin": EVIL, **PREFLIGHT})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "cors_allowed_origins" in response.json()["error"]["message"]
    assert cors_headers(response) == {}


async def test_responses_to_an_allowed_origin_carry_cors_headers_errors_included(z: Zaphub) -> None:
    cid = await conversation_id(z)
    origin = {"Origin": CRM}

    listed = await z.http.get("/api/conversations", headers={**z.auth(), **origin})
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == CRM
    assert listed.headers["access-control-expose-headers"] == "Idempotent-Replayed, Content-Disposition"
    assert varies_on_origin(listed)
    assert "access-control-allow-methods" not in listed.headers  # preflight-only headers stay there

    for response, status in (
        (await z.http.get("/api/conversations", headers=origin), 401),  # no token
        (await z.http.get("/api/conversations/999999", headers={**z.auth(), **origin}), 404),
        (await z.http.get("/api/conversations?limit=0", headers={**z.auth(), **origin}), 400),
    ):
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"}
        assert response.headers["access-control-allow-origin"] == CRM, status
        assert varies_on_origin(response)

    # The replay marker a browser must be able to read is exposed.
    send = {"Idempotency-Key": "cors-1", **z.auth(), **origin}
    body = {"type": "text", "body": "Oi"}
    first = await z.http.post(f"/api/conversations/{cid}/messages", json=body, headers=send)
    again = await z.http.post(f"/api/conversations/{cid}/messages", json=body, headers=send)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["access-control-allow-origin"] == CRM
    assert again.headers["access-control-expose-headers"] == "Idempotent-Replayed, Content-Disposition"


async def test_other_origins_and_same_origin_calls_get_no_cors_headers(z: Zaphub) -> None:
    # The server answers (the browser is the one that refuses to hand it over); no header lets it.
    foreign = await z.http.get("/api/conversations", headers={**z.auth(), "Origin": EVIL})
    assert foreign.status_code == 200
    assert cors_headers(foreign) == {}
    assert varies_on_origin(foreign)  # a cache must not hand this answer to the allowed origin
    plain = await z.http.get("/api/conversations", headers=z.auth())
    assert plain.status_code == 200
    assert cors_headers(plain) == {}


async def test_socketio_webhook_and_ops_endpoints_are_left_alone(z: Zaphub) -> None:
    # python-socketio answers CORS for its own path: one ACAO, from it, and its own refusal.
    handshake = "/socket.io/?EIO=4&transport=polling"
    allowed = await z.http.get(handshake, headers={"Origin": CRM})
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers.get_list("access-control-allow-origin") == [CRM]
    refused = await z.http.get(handshake, headers={"Origin": EVIL})
    assert refused.status_code == 400
    assert "cors_allowed_origins" not in refused.text

    webhook = await z.http.options("/meta-whatsapp/webhook", headers={"Origin": CRM, **PREFLIGHT})
    assert webhook.status_code < 500
    assert cors_headers(webhook) == {}
    body, headers = wb.signed(wb.envelope(messages=[wb.text("x")]), "wrong-secret")
    unsigned = await z.http.post("/meta-whatsapp/webhook", content=body, headers={**headers, "Origin": CRM})
    assert unsigned.status_code == 401
    assert cors_headers(unsigned) == {}
    health = await z.http.get("/health", headers={"Origin": CRM})
    assert health.status_code == 200
    assert cors_headers(health) == {}


async def test_a_star_allows_every_origin_with_a_literal_star(tmp_path: Path) -> None:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm={"cors_allowed_origins": ["*"]}) as z:
        preflight = await z.http.options("/api/conversations", headers={"Origin": EVIL, **PREFLIGHT})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert preflight.headers["access-control-allow-methods"] == "GET, POST, PATCH, OPTIONS"
        listed = await z.http.get("/api/conversations", headers={**z.auth(), "Origin": EVIL})
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == "*"
        assert listed.headers["access-control-expose-headers"] == "Idempotent-Replayed, Content-Disposition"
        refused = await z.http.get("/api/conversations", headers={"Origin": CRM})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "*"


async def test_without_the_setting_the_api_is_same_origin_only(tmp_path: Path) -> None:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}") as z:  # cors_allowed_origins unset
        preflight = await z.http.options("/api/conversations", headers={"Origin": CRM, **PREFLIGHT})
        assert cors_headers(preflight) == {}
        listed = await z.http.get("/api/conversations", headers={**z.auth(), "Origin": CRM})
        assert listed.status_code == 200
        assert cors_headers(listed) == {}
