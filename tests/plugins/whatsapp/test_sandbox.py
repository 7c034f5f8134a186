"""The Meta sandbox over real HTTP: a uvicorn server, and a receiver standing in for zaphub's webhook."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, Response, get, post

from core.errors import ValidationFailed
from core.server import single_write
from plugins.whatsapp.outbound import validate_content
from plugins.whatsapp.sandbox import Sandbox, SandboxOptions, create_sandbox_app
from tests.helpers import serve

SECRET = "sandbox-test-app-secret"
TOKEN = "sandbox-test-access-token"
PNID = "100000000000002"
WABA = "100000000000001"
MESSAGES = f"/v25.0/{PNID}/messages"


class Receiver:
    """Stands in for zaphub's webhook: checks the signature, records bodies, fails on demand."""

    def __init__(self, secret: str = SECRET) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.rejected = 0
        self.fail_next = 0
        self._changed = asyncio.Condition()

        @post("/meta-whatsapp/webhook", status_code=200)
        async def webhook(request: Request[Any, Any, Any]) -> Response[Any]:
            raw = await request.body()
            expected = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("x-hub-signature-256", ""), expected):
                self.rejected += 1
                return Response({"error": "bad signature"}, status_code=401)
            if self.fail_next:
                self.fail_next -= 1
                return Response("busy", status_code=503)
            async with self._changed:
                self.raw.append(raw)
                self.bodies.append(json.loads(raw))
                self._changed.notify_all()
            return Response({"ok": True})

        self.app = Litestar([webhook])

    async def wait_for(self, predicate: Callable[[Receiver], bool]) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    def statuses(self, wamid: str | None = None) -> list[dict[str, Any]]:
        found = [
            st
            for body in self.bodies
            for entry in body["entry"]
            for change in entry["changes"]
            for st in change["value"].get("statuses", [])
        ]
        return [st for st in found if wamid is None or st["id"] == wamid]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    async with serve(rec.app) as url:
        yield rec, f"{url}/meta-whatsapp/webhook"


def _options(webhook_url: str | None, **kwargs: Any) -> SandboxOptions:
    defaults: dict[str, Any] = {
        "status_delays": (0.01, 0.02, 0.03),
        "delivery_backoff": 0.01,
        "delivery_attempts": 4,
    }
    return SandboxOptions(app_secret=SECRET, webhook_url=webhook_url, **(defaults | kwargs))


@pytest.fixture
async def graph(receiver: tuple[Receiver, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the sandbox that requires TOKEN, sending the token."""
    app = create_sandbox_app(_options(receiver[1], access_token=TOKEN))
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
    ):
        yield client


def _text(to: str = "+5511988887777", body: str = "Olá! Seu pedido saiu.", **extra: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": body}, **extra}


async def test_send_answers_like_meta_then_delivers_signed_statuses_in_order(
    graph: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    rec, _ = receiver
    answer = await graph.post(MESSAGES, json=_text(biz_opaque_callback_data="outbox-42"))
    assert answer.status_code == 200
    body = answer.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+5511988887777", "wa_id": "5511988887777"}]
    wamid = body["messages"][0]["id"]
    assert wamid.startswith("wamid.")

    await rec.wait_for(lambda r: len(r.statuses(wamid)) == 3)
    statuses = rec.statuses(wamid)
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert len(rec.bodies) == 3  # each status is its own POST, all signed (none rejected)
    assert rec.rejected == 0
    assert all(s["recipient_id"] == "5511988887777" for s in statuses)
    assert all(s["biz_opaque_callback_data"] == "outbox-42" for s in statuses)
    assert statuses[0]["pricing"]["category"] == "service"
    assert "conversation" in statuses[0]
    assert "pricing" not in statuses[2]
    value = rec.bodies[0]["entry"][0]["changes"][0]["value"]
    assert rec.bodies[0]["entry"][0]["id"] == WABA
    assert value["metadata"]["phone_number_id"] == PNID

    other = await graph.post(MESSAGES, json=_text())
    assert other.json()["messages"][0]["id"] != wamid


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"to": "+5511988887777", "type": "text", "text": {"body": "x"}}, "messaging_product"),
        ({"messaging_product": "sms", "to": "+5511988887777", "text": {"body": "x"}}, "messaging_product"),
        ({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}, "to is required"),
        (_text() | {"text": {}}, "text['body'] is required"),
        (_text(body="a" * 4097), "at most 4096"),
        (_text() | {"type": "poll"}, "Param type must be one of"),
        (
            {
                "messaging_product": "whatsapp",
                "to": "+5511988887777",
                "type": "template",
                "template": {"name": "t"},
            },
            "template['language']",
        ),
        (
            {"messaging_product": "whatsapp", "to": "+55119", "type": "image", "image": {"caption": "x"}},
            "exactly one of id or link",
        ),
        (
            {
                "messaging_product": "whatsapp",
                "to": "+55119888",
                "type": "audio",
                "audio": {"id": "1", "caption": "x"},
            },
            "audio['caption']",
        ),
        (
            {
                "messaging_product": "whatsapp",
                "to": "+5511988887777",
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "Escolha"},
                    "action": {
                        "buttons": [
                            {"type": "reply", "reply": {"id": str(i), "title": f"B{i}"}} for i in range(4)
                        ]
                    },
                },
            },
            "buttons",
        ),
    ],
)
async def test_invalid_send_gets_metas_error_envelope(
    graph: httpx.AsyncClient, body: Any, needle: str
) -> None:
    answer = await graph.post(MESSAGES, json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == 100
    assert error["type"] == "OAuthException"
    assert error["message"].startswith("(#100) ")
    assert needle in error["message"]
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert needle in error["error_data"]["details"]
    assert error["fbtrace_id"].startswith("A")


def _buttons(count: int, title: str = "B") -> dict[str, Any]:
    buttons = [{"type": "reply", "reply": {"id": str(i), "title": f"{title}{i}"}} for i in range(count)]
    return {"type": "button", "body": {"text": "Escolha"}, "action": {"buttons": buttons}}


def _list(rows: int) -> dict[str, Any]:
    sections = [{"title": "S", "rows": [{"id": f"r{i}", "title": "Linha"} for i in range(rows)]}]
    return {"type": "list", "body": {"text": "Escolha"}, "action": {"button": "Opções", "sections": sections}}


# (type, Graph's object, whether Meta's rules accept it): both sides of each limit.
RULE_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("text", {"body": "x" * 4096}, True),
    ("text", {"body": "x" * 4097}, False),
    ("image", {"id": "1", "caption": "x" * 1024}, True),
    ("image", {"id": "1", "caption": "x" * 1025}, False),
    ("document", {"id": "1", "filename": "f" * 251 + ".pdf"}, True),  # the sandbox used to stop at 240
    ("document", {"id": "1", "filename": "f" * 252 + ".pdf"}, False),
    ("audio", {"id": "1", "caption": "x"}, False),
    ("interactive", _buttons(3), True),
    ("interactive", _buttons(4), False),
    ("interactive", _buttons(1, title="x" * 19), True),
    ("interactive", _buttons(1, title="x" * 20), False),
    ("interactive", _list(10), True),
    ("interactive", _list(11), False),
    ("location", {"latitude": -90, "longitude": 180}, True),
    ("location", {"latitude": -90.5, "longitude": 0}, False),
]


@pytest.mark.parametrize(("kind", "content", "accepted"), RULE_CASES)
async def test_sandbox_and_zaphub_apply_the_same_send_rules(
    graph: httpx.AsyncClient, kind: str, content: dict[str, Any], accepted: bool
) -> None:
    answer = await graph.post(
        MESSAGES, json={"messaging_product": "whatsapp", "to": "+5511988887777", "type": kind, kind: content}
    )
    try:
        validate_content(kind, content)
        zaphub_accepts = True
    except ValidationFailed:
        zaphub_accepts = False

    assert (answer.status_code == 200, zaphub_accepts) == (accepted, accepted), answer.text


async def test_unknown_interactive_kind_is_refused_like_meta(graph: httpx.AsyncClient) -> None:
    body = _text() | {"type": "interactive", "interactive": {"type": "poll", "action": {}}}
    answer = await graph.post(MESSAGES, json=body)
    assert answer.status_code == 400
    assert "Param interactive['type'] must be one of {button, " in answer.json()["error"]["message"]


async def test_rejected_sends_deliver_no_webhooks(
    graph: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    rec, _ = receiver
    assert (await graph.post(MESSAGES, json=_text(body=""))).status_code == 400
    assert (await graph.post(MESSAGES, content=b"not json")).status_code == 400
    unknown = await graph.post("/v25.0/999/messages", json=_text())
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == 100
    assert unknown.json()["error"]["error_subcode"] == 33
    ok = (await graph.post(MESSAGES, json=_text())).json()["messages"][0]["id"]
    await rec.wait_for(lambda r: len(r.statuses(ok)) == 3)
    assert len(rec.statuses()) == 3


async def test_graph_calls_need_the_bearer_token_and_records_omit_it(graph: httpx.AsyncClient) -> None:
    no_token = await graph.post(MESSAGES, json=_text(), headers={"Authorization": ""})
    wrong = await graph.post(MESSAGES, json=_text(), headers={"Authorization": "Bearer nope"})
    for answer in (no_token, wrong):
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == 190
        assert answer.json()["error"]["type"] == "OAuthException"
    assert (await graph.post(MESSAGES, json=_text())).status_code == 200

    recorded = (await graph.get("/_sandbox/requests")).json()
    assert [r["path"] for r in recorded] == [MESSAGES] * 3
    assert recorded[2]["json"] == _text()
    assert recorded[2]["method"] == "POST"
    assert all("authorization" not in {k.lower() for k in r["headers"]} for r in recorded)
    assert (await graph.delete("/_sandbox/requests")).json() == {"cleared": 3}
    assert (await graph.get("/_sandbox/requests")).json() == []


async def test_mark_as_read_and_typing_indicator(graph: httpx.AsyncClient) -> None:
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1"}
    assert (await graph.post(MESSAGES, json=read)).json() == {"success": True}
    typing = read | {"typing_indicator": {"type": "text"}}
    assert (await graph.post(MESSAGES, json=typing)).json() == {"success": True}
    bad = await graph.post(MESSAGES, json=read | {"typing_indicator": {"type": "audio"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == 100


async def test_faults_apply_to_the_next_sends_in_order(graph: httpx.AsyncClient) -> None:
    faults = [
        {"count": 2, "status": 500, "code": 131000},
        {"count": 1, "status": 400, "code": 131047, "title": "Re-engagement message"},
        {"count": 1, "status": 429, "retry_after": 1},
    ]
    assert (await graph.post("/_sandbox/faults", json=faults)).status_code == 200
    assert len((await graph.get("/_sandbox/faults")).json()) == 3

    answers = [await graph.post(MESSAGES, json=_text())]
    # Mark-as-read does not consume a fault.
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1"}
    assert (await graph.post(MESSAGES, json=read)).status_code == 200
    answers += [await graph.post(MESSAGES, json=_text()) for _ in range(4)]

    assert [a.status_code for a in answers] == [500, 500, 400, 429, 200]
    assert [a.json()["error"]["code"] for a in answers[:4]] == [131000, 131000, 131047, 130429]
    assert answers[2].json()["error"]["message"] == "(#131047) Re-engagement message"
    assert answers[2].json()["error"]["error_data"]["details"]
    assert answers[3].headers["retry-after"] == "1"
    assert answers[4].json()["messages"][0]["id"].startswith("wamid.")
    assert (await graph.get("/_sandbox/faults")).json() == []


async def test_invalid_fault_is_refused(graph: httpx.AsyncClient) -> None:
    assert (await graph.post("/_sandbox/faults", json={"count": 0, "status": 500})).status_code == 400
    assert (await graph.post("/_sandbox/faults", json={"statuz": 500})).status_code == 400
    assert (await graph.get("/_sandbox/faults")).json() == []


async def test_delay_fault_times_the_client_out_and_drops_that_send(
    graph: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    rec, _ = receiver
    await graph.post("/_sandbox/faults", json={"count": 1, "delay": 30})
    with pytest.raises(httpx.ReadTimeout):
        await graph.post(MESSAGES, json=_text(), timeout=0.3)
    ok = (await graph.post(MESSAGES, json=_text())).json()["messages"][0]["id"]
    await rec.wait_for(lambda r: len(r.statuses(ok)) == 3)
    assert {s["id"] for s in rec.statuses()} == {ok}


async def test_drop_fault_breaks_the_connection(graph: httpx.AsyncClient) -> None:
    await graph.post("/_sandbox/faults", json=[{"count": 1, "drop": True}])
    with pytest.raises(httpx.RemoteProtocolError):
        await graph.post(MESSAGES, json=_text())
    assert (await graph.post(MESSAGES, json=_text())).status_code == 200


async def test_drop_fault_breaks_the_connection_inside_the_host(receiver: tuple[Receiver, str]) -> None:
    # In `zaphub run` the sandbox is served with the host's one-write responses
    # (core.server.single_write), which hold a start that declares its length until its body:
    # the drop must still reach the client as a broken answer, not as uvicorn's 500 for an app
    # that returned without starting one (a 500 is an ordinary Graph error, retried at once).
    app = single_write(create_sandbox_app(_options(receiver[1], access_token=TOKEN)))
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as graph,
    ):
        await graph.post("/_sandbox/faults", json=[{"count": 1, "drop": True}])
        with pytest.raises(httpx.RemoteProtocolError):
            await graph.post(MESSAGES, json=_text())
        assert (await graph.post(MESSAGES, json=_text())).status_code == 200


async def test_media_info_then_download_with_bearer(graph: httpx.AsyncClient) -> None:
    info = await graph.get("/v25.0/img1234567890")
    assert info.status_code == 200
    meta = info.json()
    assert meta["messaging_product"] == "whatsapp"
    assert meta["id"] == "img1234567890"
    assert meta["mime_type"] == "image/jpeg"
    assert meta["url"].startswith(str(graph.base_url).rstrip("/") + "/download/")

    without = await graph.get(meta["url"], headers={"Authorization": ""})
    assert without.status_code == 401
    download = await graph.get(meta["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/jpeg"
    assert download.content.startswith(b"\xff\xd8")
    assert download.content.endswith(b"\xff\xd9")
    assert len(download.content) == meta["file_size"]
    assert hashlib.sha256(download.content).hexdigest() == meta["sha256"]

    other = (await graph.get("/v25.0/1234567890")).json()
    again = (await graph.get("/v25.0/1234567890")).json()
    assert other["mime_type"] == "application/octet-stream"
    assert other["sha256"] == again["sha256"] != meta["sha256"]

    missing = await graph.get("/v25.0/missing123")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == 100


async def test_upload_then_info_download_and_delete(graph: httpx.AsyncClient) -> None:
    data = b"%PDF-1.4 orcamento"
    upload = await graph.post(
        f"/v25.0/{PNID}/media",
        data={"messaging_product": "whatsapp", "type": "application/pdf"},
        files={"file": ("orçamento.pdf", data, "application/pdf")},
    )
    assert upload.status_code == 200
    media_id = upload.json()["id"]
    meta = (await graph.get(f"/v25.0/{media_id}")).json()
    assert meta["mime_type"] == "application/pdf"
    assert meta["file_size"] == len(data)
    assert (await graph.get(meta["url"])).content == data
    recorded = (await graph.get("/_sandbox/requests")).json()[0]
    assert recorded["form"]["type"] == "application/pdf"

    assert (await graph.delete(f"/v25.0/{media_id}")).json() == {"success": True}
    assert (await graph.get(f"/v25.0/{media_id}")).status_code == 400

    gif = await graph.post(
        f"/v25.0/{PNID}/media",
        data={"messaging_product": "whatsapp", "type": "image/gif"},
        files={"file": ("a.gif", b"GIF89a", "image/gif")},
    )
    assert gif.status_code == 400
    assert gif.json()["error"]["code"] == 131053
    no_file = await graph.post(f"/v25.0/{PNID}/media", data={"messaging_product": "whatsapp"}, files={})
    assert no_file.status_code == 400


async def test_undeliverable_and_out_of_window_conventions(
    graph: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    rec, _ = receiver
    lost = (await graph.post(MESSAGES, json=_text(to="+5511900000000"))).json()["messages"][0]["id"]
    late = (await graph.post(MESSAGES, json=_text(to="+5511900000047"))).json()["messages"][0]["id"]
    template = {
        "messaging_product": "whatsapp",
        "to": "+5511900000047",
        "type": "template",
        "template": {"name": "pedido_enviado", "language": {"code": "pt_BR"}},
    }
    answer = (await graph.post(MESSAGES, json=template)).json()
    assert answer["messages"][0]["message_status"] == "accepted"
    tpl = answer["messages"][0]["id"]

    await rec.wait_for(lambda r: len(r.statuses(lost)) == 1 and len(r.statuses(late)) == 1)
    await rec.wait_for(lambda r: len(r.statuses(tpl)) == 3)
    (failed,) = rec.statuses(lost)
    assert failed["status"] == "failed"
    assert failed["errors"][0]["code"] == 131026
    (window,) = rec.statuses(late)
    assert window["status"] == "failed"
    assert window["errors"][0]["code"] == 131047
    assert [s["status"] for s in rec.statuses(tpl)] == ["sent", "delivered", "read"]


async def test_status_webhooks_are_retried_until_answered_200(
    graph: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    rec, _ = receiver
    rec.fail_next = 2
    wamid = (await graph.post(MESSAGES, json=_text())).json()["messages"][0]["id"]
    await rec.wait_for(lambda r: len(r.statuses(wamid)) == 3)
    deliveries = (await graph.get("/_sandbox/deliveries")).json()
    assert [(d["status"], d["attempts"], d["status_code"]) for d in deliveries] == [
        ("sent", 3, 200),
        ("delivered", 1, 200),
        ("read", 1, 200),
    ]


async def test_inbound_control_delivers_a_signed_inbound_message(
    graph: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    rec, _ = receiver
    answer = await graph.post(
        "/_sandbox/inbound",
        json={"type": "text", "text": "Olá, qual o preço?", "from": "5511977776666", "name": "João"},
    )
    assert answer.status_code == 200
    assert answer.json()["delivery"]["status_code"] == 200
    value = rec.bodies[-1]["entry"][0]["changes"][0]["value"]
    assert value["contacts"] == [{"profile": {"name": "João"}, "wa_id": "5511977776666"}]
    (message,) = value["messages"]
    assert message["id"] == answer.json()["wamid"]
    assert message["text"] == {"body": "Olá, qual o preço?"}
    assert message["from"] == "5511977776666"
    assert rec.raw[-1].isascii()  # non-ASCII escaped as Meta does, and still signed correctly

    image = (await graph.post("/_sandbox/inbound", json={"type": "image", "text": "Segue a foto"})).json()
    media = image["message"]["image"]
    assert media["caption"] == "Segue a foto"
    downloaded = await graph.get(media["url"])
    assert downloaded.headers["content-type"] == "image/jpeg"
    assert base64.b64encode(hashlib.sha256(downloaded.content).digest()).decode() == media["sha256"]

    bad = await graph.post("/_sandbox/inbound", json={"type": "hologram"})
    assert bad.status_code == 400


async def test_statuses_control_delivers_any_status_in_one_webhook(
    graph: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    rec, _ = receiver
    answer = await graph.post(
        "/_sandbox/statuses",
        json=[
            {"wamid": "wamid.OUT1", "status": "read"},
            {"wamid": "wamid.OUT1", "status": "delivered"},
            {"wamid": "wamid.OUT2", "status": "failed", "error_code": 131049},
        ],
    )
    assert answer.status_code == 200
    assert len(rec.bodies) == 1
    assert [(s["id"], s["status"]) for s in rec.statuses()] == [
        ("wamid.OUT1", "read"),
        ("wamid.OUT1", "delivered"),
        ("wamid.OUT2", "failed"),
    ]
    assert rec.statuses("wamid.OUT2")[0]["errors"][0]["code"] == 131049


async def test_mounted_under_a_prefix_inside_another_app_without_webhooks() -> None:
    sandbox = Sandbox(_options(None, prefix="/_sandbox/graph"))

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app = Litestar([health, sandbox.router], lifespan=[sandbox.lifespan])
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer any"}) as c,
    ):
        assert (await c.get("/health")).json() == {"status": "ok"}
        sent = await c.post("/_sandbox/graph" + MESSAGES, json=_text())
        assert sent.status_code == 200
        meta = (await c.get("/_sandbox/graph/v23.0/img9")).json()
        assert meta["url"] == f"{url}/_sandbox/graph/download/img9"
        assert (await c.get(meta["url"])).status_code == 200
        assert (await c.get("/_sandbox/graph/v1/img9")).status_code == 400  # not a Graph version
        no_target = await c.post("/_sandbox/graph/_sandbox/inbound", json={"text": "Olá"})
        assert no_target.status_code == 409
        assert "webhook_url" in no_target.json()["detail"]
        assert (await c.get("/_sandbox/graph/_sandbox/deliveries")).json() == []
