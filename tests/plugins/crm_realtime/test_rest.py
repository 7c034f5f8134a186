"""The CRM REST API over real HTTP: auth, pagination, the resync cursor, sends, scope, OpenAPI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from plugins.whatsapp import webhook_builders as wb
from tests.helpers import wait_for
from tests.plugins.crm_realtime.harness import OTHER_PNID, PNID, Zaphub, zaphub

NUMBERS = ["5511911110001", "5511911110002", "5511911110003", "5511911110004", "5511911110005"]


async def seed_conversations(z: Zaphub) -> dict[str, int]:
    """One conversation per number, in order, each with one message a minute apart (oldest first)."""
    start = int(time.time()) - 3600
    for i, number in enumerate(NUMBERS):
        await z.webhook(
            [wb.text(f"msg {i}", from_=number, timestamp=start + 60 * i)],
            contacts=[wb.contact(number, f"Cliente {i}")],
        )
    await z.settle()
    listed = (await z.http.get("/api/conversations", params={"limit": 50}, headers=z.auth())).json()
    return {c["contact"]["phone_number"]: c["id"] for c in listed["conversations"]}


def error_of(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    return str(body["error"]["message"])


async def test_every_endpoint_needs_a_valid_bearer_token(z: Zaphub) -> None:
    endpoints = [
        ("GET", "/api/conversations"),
        ("GET", "/api/conversations/1"),
        ("GET", "/api/conversations/1/messages"),
        ("POST", "/api/conversations/1/messages"),
        ("GET", "/api/messages/1"),
        ("GET", "/api/messages/1/media"),
        ("POST", "/api/messages/1/retry"),
        ("GET", "/api/contacts/1"),
        ("GET", "/api/contacts?q=ana"),
        ("POST", "/api/messages"),
        ("POST", "/api/conversations/1/read"),
        ("POST", "/api/conversations/1/typing"),
        ("PATCH", "/api/conversations/1"),
        ("GET", "/api/events"),
    ]
    headers_and_reasons = [
        ({}, "missing bearer token"),
        ({"Authorization": "Basic YW5hOnNlY3JldA=="}, "must be 'Bearer <JWT>'"),
        ({"Authorization": "Bearer"}, "must be 'Bearer <JWT>'"),
        ({"Authorization": f"Bearer {z.token(ttl=-5)}"}, "token expired"),
        ({"Authorization": f"Bearer {z.token()}x"}, "bad signature"),
    ]
    for method, path in endpoints:
        for headers, reason in headers_and_reasons:
            json_body = {"type": "text", "body": "x"} if method == "POST" else None
            json_body = {"mode": "human"} if method == "PATCH" else json_body
            response = await z.http.request(method, path, headers=headers, json=json_body)
            assert reason in error_of(response, 401, "unauthorized"), (method, path, headers)


async def test_conversations_are_paged_newest_first_with_contact_and_last_message(zb: Zaphub) -> None:
    ids = await seed_conversations(zb)
    newest_first = [ids[n] for n in reversed(NUMBERS)]
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if before:
            params["before"] = before
        response = await zb.http.get("/api/conversations", params=params, headers=zb.auth())
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        seen.extend(c["id"] for c in page["conversations"])
        before = page["next_before"]
        if before is None:
            break
    assert seen == newest_first
    assert pages == 3

    first = (await zb.http.get("/api/conversations", params={"limit": 1}, headers=zb.auth())).json()
    conversation = first["conversations"][0]
    assert conversation["contact"] == {
        "id": conversation["contact"]["id"],
        "name": "Cliente 4",
        "phone_number": NUMBERS[4],
        "wa_id": NUMBERS[4],
    }
    assert conversation["last_message"]["body"] == "msg 4"
    assert conversation["last_message"]["sender_type"] == "contact"
    assert conversation["phone_number_id"] == PNID
    assert conversation["window_open"] is True
    one = (await zb.http.get(f"/api/conversations/{conversation['id']}", headers=zb.auth())).json()
    assert one == conversation

    # A send moves its conversation to the top, with the send as last message.
    oldest = ids[NUMBERS[0]]
    await zb.send(oldest, {"type": "text", "body": "resposta"})
    top = (await zb.http.get("/api/conversations", params={"limit": 1}, headers=zb.auth())).json()
    assert top["conversations"][0]["id"] == oldest
    assert top["conversations"][0]["last_message"]["body"] == "resposta"


async def test_list_parameters_are_validated(z: Zaphub) -> None:
    cases = [
        ("/api/conversations", {"limit": 0}),
        ("/api/conversations", {"limit": 201}),
        ("/api/conversations", {"limit": "many"}),
        ("/api/conversations/1/messages", {"after_id": -1}),
    ]
    for path, params in cases:
        response = await z.http.get(path, params=params, headers=z.auth())
        error_of(response, 400, "validation_error")
    message = error_of(
        await z.http.get("/api/conversations", params={"before": "garbage!"}, headers=z.auth()),
        400,
        "validation_error",
    )
    assert "next_before" in message


async def test_page_size_bound_is_each_hosts_max_page_size(tmp_path: Path) -> None:
    """Two hosts in one process, different ``max_page_size``: each validates and documents its own."""
    async with (
        zaphub(f"sqlite:///{tmp_path / 'a.db'}") as default,
        zaphub(f"sqlite:///{tmp_path / 'b.db'}", crm={"max_page_size": 500}) as larger,
    ):
        for z, bound in ((default, 200), (larger, 500)):
            for path in ("/api/conversations", "/api/conversations/1/messages"):
                over = await z.http.get(path, params={"limit": bound + 1}, headers=z.auth())
                assert f"<= {bound}" in error_of(over, 400, "validation_error"), (bound, path)
            at_bound = await z.http.get("/api/conversations", params={"limit": bound}, headers=z.auth())
            assert at_bound.status_code == 200, at_bound.text
            schema = (await z.http.get("/schema/openapi.json")).json()
            for path in ("/api/conversations", "/api/conversations/{conversation_id}/messages"):
                limit = next(p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "limit")
                assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, bound), (bound, path)


async def test_messages_resync_with_after_id(zb: Zaphub) -> None:
    start = int(time.time()) - 600
    await zb.webhook(
        [wb.text(f"parte {i}", timestamp=start + i) for i in range(5)],
        contacts=[wb.contact(wb.DEFAULT_FROM, "João")],
    )
    await zb.settle()
    conversation_id = (await zb.http.get("/api/conversations", headers=zb.auth())).json()["conversations"][0][
        "id"
    ]
    url = f"/api/conversations/{conversation_id}/messages"

    everything = (await zb.http.get(url, headers=zb.auth())).json()
    ids = [m["id"] for m in everything["messages"]]
    assert [m["body"] for m in everything["messages"]] == [f"parte {i}" for i in range(5)]  # oldest first
    assert ids == sorted(ids)
    assert everything["next_after_id"] is None

    collected: list[int] = []
    after = ids[0]  # a client that saw the first message reconnects
    while after is not None:
        page = (await zb.http.get(url, params={"after_id": after, "limit": 2}, headers=zb.auth())).json()
        collected.extend(m["id"] for m in page["messages"])
        after = page["next_after_id"]
    assert collected == ids[1:]
    caught_up = (await zb.http.get(url, params={"after_id": ids[-1]}, headers=zb.auth())).json()
    assert caught_up == {"messages": [], "next_after_id": None}


async def test_send_validates_the_body_and_the_window(z: Zaphub) -> None:
    ids = await seed_conversations(z)
    url = f"/api/conversations/{ids[NUMBERS[0]]}/messages"
    bad_bodies: list[Any] = [
        {"type": "text"},
        {"type": "text", "body": ""},
        {"type": "text", "body": "x" * 4097},
        {"type": "text", "body": "oi", "colour": "blue"},
        {"type": "fax", "body": "oi"},
        {"body": "oi"},
        {"type": "image", "link": "https://example.com/a.jpg", "media_id": "123"},
        {"type": "image"},
        {"type": "audio", "media_id": "123", "caption": "no captions on audio"},
        {"type": "template", "name": "hello"},
        {"type": "text", "body": "oi", "reply_to": 999_999},
        [1, 2],
    ]
    for body in bad_bodies:
        response = await z.http.post(url, json=body, headers=z.auth())
        error_of(response, 400, "validation_error")
    # A refused send names the field and Meta's limit (plugins/whatsapp/send_rules.py).
    for body, field, limit in [
        ({"type": "text", "body": "x" * 4097}, "body", "4096"),
        ({"type": "image", "media_id": "1", "caption": "x" * 1025}, "caption", "1024"),
        ({"type": "document", "media_id": "1", "filename": "f" * 252 + ".pdf"}, "filename", "255"),
    ]:
        message = error_of(await z.http.post(url, json=body, headers=z.auth()), 400, "validation_error")
        assert field in message
        assert limit in message
    for body, expected in [
        ({"type": "text", "body": "   "}, "text.body is required"),
        ({"type": "image", "link": "ftp://example.com/a.jpg"}, "image.link must be a public http(s) URL"),
    ]:
        response = await z.http.post(url, json=body, headers=z.auth())
        assert error_of(response, 400, "validation_error") == expected
    response = await z.http.post(
        url, content=b"{not json", headers={**z.auth(), "Content-Type": "application/json"}
    )
    error_of(response, 400, "bad_json")  # not JSON at all
    assert "does not exist" in error_of(
        await z.http.post(
            "/api/conversations/999999/messages", json={"type": "text", "body": "x"}, headers=z.auth()
        ),
        404,
        "not_found",
    )
    error_of(
        await z.http.post(
            f"/api/conversations/{2**64}/messages", json={"type": "text", "body": "x"}, headers=z.auth()
        ),
        404,
        "not_found",
    )

    # Media and templates are accepted; a reply quotes a message of the conversation.
    for body in (
        {"type": "image", "link": "https://example.com/a.jpg", "caption": "Foto"},
        {"type": "document", "media_id": "123456", "filename": "boleto.pdf"},
        {"type": "template", "name": "hello_world", "language": "pt_BR"},
    ):
        await z.send(ids[NUMBERS[0]], body)
    listed = (await z.http.get(url, headers=z.auth())).json()["messages"]
    inbound = listed[0]
    reply = await z.send(ids[NUMBERS[0]], {"type": "text", "body": "Sobre isso:", "reply_to": inbound["id"]})
    detail = (await z.http.get(f"/api/messages/{reply['messageId']}", headers=z.auth())).json()
    assert detail["context_wamid"] == inbound["wamid"]

    # More than 24 hours after the contact last wrote, only templates go out.
    old = "5511922223333"
    await z.webhook(
        [wb.text("antiga", from_=old, timestamp=int(time.time()) - 3 * 86400)],
        contacts=[wb.contact(old, "Antiga")],
    )
    await z.settle()
    listed_all = (await z.http.get("/api/conversations", headers=z.auth())).json()["conversations"]
    stale = next(c for c in listed_all if c["contact"]["phone_number"] == old)
    assert stale["window_open"] is False
    message = error_of(
        await z.http.post(
            f"/api/conversations/{stale['id']}/messages",
            json={"type": "text", "body": "oi"},
            headers=z.auth(),
        ),
        422,
        "window_closed",
    )
    assert "template" in message
    await z.send(stale["id"], {"type": "template", "name": "retomada", "language": {"code": "pt_BR"}})


async def test_idempotency_key_answers_the_first_send_again(zb: Zaphub) -> None:
    ids = await seed_conversations(zb)
    conversation_id = ids[NUMBERS[2]]
    url = f"/api/conversations/{conversation_id}/messages"
    ana = zb.auth(zb.token(sub="ana"))
    body = {"type": "text", "body": "Uma vez só"}
    first = await zb.http.post(url, json=body, headers={**ana, "Idempotency-Key": "k-1"})
    again = await zb.http.post(url, json=body, headers={**ana, "Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers
    conflict = await zb.http.post(
        url, json={"type": "text", "body": "Outra"}, headers={**ana, "Idempotency-Key": "k-1"}
    )
    assert "Idempotency-Key" in error_of(conflict, 409, "conflict")
    # Keys belong to the token's sub: another agent's k-1 is another message.
    bia = await zb.http.post(
        url, json=body, headers={**zb.auth(zb.token(sub="bia")), "Idempotency-Key": "k-1"}
    )
    assert bia.status_code == 202
    assert bia.json()["messageId"] != first.json()["messageId"]

    async def sent_to_graph() -> list[Any]:
        requests = (await zb.http.get("/_sandbox/graph/_sandbox/requests")).json()
        return [
            r
            for r in requests
            if r["method"] == "POST" and (r.get("json") or {}).get("text", {}).get("body") == "Uma vez só"
        ]

    await wait_for(lambda: _len_at_least(sent_to_graph, 2), what="two sends to reach Graph")
    await zb.settle()
    assert len(await sent_to_graph()) == 2  # ana's once, bia's once
    messages = (await zb.http.get(url, headers=zb.auth())).json()["messages"]
    assert [m["body"] for m in messages].count("Uma vez só") == 2


async def _len_at_least(fetch: Any, n: int) -> bool:
    return len(await fetch()) >= n


async def test_scope_applies_to_every_endpoint(z: Zaphub) -> None:
    ids = await seed_conversations(z)
    other_number = "5521977776666"
    await z.webhook(
        [wb.text("outro número", from_=other_number)],
        phone_number_id=OTHER_PNID,
        contacts=[wb.contact(other_number, "Outro")],
    )
    await z.settle()
    everything = (await z.http.get("/api/conversations", headers=z.auth())).json()["conversations"]
    theirs = next(c for c in everything if c["phone_number_id"] == OTHER_PNID)
    ours_id = ids[NUMBERS[0]]

    scoped = z.auth(z.token(sub="ana", scope=[PNID]))
    listed = (await z.http.get("/api/conversations", headers=scoped)).json()["conversations"]
    assert sorted(c["id"] for c in listed) == sorted(ids.values())
    assert (await z.http.get(f"/api/conversations/{ours_id}", headers=scoped)).status_code == 200

    theirs_message = (
        await z.http.get(f"/api/conversations/{theirs['id']}/messages", headers=z.auth())
    ).json()
    forbidden = [
        ("GET", f"/api/conversations/{theirs['id']}"),
        ("GET", f"/api/conversations/{theirs['id']}/messages"),
        ("POST", f"/api/conversations/{theirs['id']}/messages"),
        ("GET", f"/api/messages/{theirs_message['messages'][0]['id']}"),
        ("GET", f"/api/messages/{theirs_message['messages'][0]['id']}/media"),
        ("POST", f"/api/messages/{theirs_message['messages'][0]['id']}/retry"),
        ("GET", f"/api/contacts/{theirs['contact']['id']}"),
    ]
    for method, path in forbidden:
        json_body = {"type": "text", "body": "x"} if method == "POST" else None
        response = await z.http.request(method, path, headers=scoped, json=json_body)
        assert "scope" in error_of(response, 403, "forbidden"), path
    ours_contact = listed[0]["contact"]["id"]
    assert (await z.http.get(f"/api/contacts/{ours_contact}", headers=scoped)).status_code == 200


async def test_retry_requeues_a_failed_send_and_refuses_anything_else(z: Zaphub) -> None:
    ids = await seed_conversations(z)
    conversation_id = ids[NUMBERS[0]]
    fault = {"count": 1, "status": 400, "code": 131026, "title": "Message undeliverable"}
    assert (await z.http.post("/_sandbox/graph/_sandbox/faults", json=fault)).status_code == 200
    accepted = await z.send(conversation_id, {"type": "text", "body": "De novo"})
    message_id = accepted["messageId"]
    url = f"/api/messages/{message_id}"

    async def status() -> str:
        return str((await z.http.get(url, headers=z.auth())).json()["status"])

    await wait_for(lambda: _status_is(status, "failed"), what="the send to fail")
    retried = await z.http.post(f"{url}/retry", headers=z.auth())
    assert retried.status_code == 202, retried.text
    assert retried.json() == {"messageId": message_id, "conversationId": conversation_id, "status": "queued"}
    await wait_for(lambda: _status_is(status, "read"), what="the retried send to be delivered and read")
    detail = (await z.http.get(url, headers=z.auth())).json()
    assert detail["wamid"] and [s["status"] for s in detail["statuses"]][-3:] == ["sent", "delivered", "read"]

    again = await z.http.post(f"{url}/retry", headers=z.auth())
    assert "is read, not failed" in error_of(again, 409, "conflict")
    inbound = (await z.http.get(f"/api/conversations/{conversation_id}/messages", headers=z.auth())).json()
    received = await z.http.post(f"/api/messages/{inbound['messages'][0]['id']}/retry", headers=z.auth())
    assert "was received, not sent" in error_of(received, 409, "conflict")
    missing = await z.http.post("/api/messages/999999/retry", headers=z.auth())
    assert "does not exist" in error_of(missing, 404, "not_found")


async def _status_is(read: Any, expected: str) -> bool:
    return bool(await read() == expected)


async def test_message_detail_contact_and_missing_resources(z: Zaphub) -> None:
    ids = await seed_conversations(z)
    conversation_id = ids[NUMBERS[1]]
    accepted = await z.send(conversation_id, {"type": "text", "body": "Acompanhe"})
    url = f"/api/messages/{accepted['messageId']}"

    async def read() -> bool:
        return bool((await z.http.get(url, headers=z.auth())).json()["status"] == "read")

    await wait_for(read, what="the sandbox's statuses")
    detail = (await z.http.get(url, headers=z.auth())).json()
    assert detail["direction"] == "outbound"
    assert detail["sender_type"] == "user"
    assert detail["content"] == {"body": "Acompanhe"}
    assert [s["status"] for s in detail["statuses"]] == ["sent", "delivered", "read"]
    assert all(s["timestamp"].isdigit() and s["error"] is None for s in detail["statuses"])

    inbound = (await z.http.get(f"/api/conversations/{conversation_id}/messages", headers=z.auth())).json()
    first = inbound["messages"][0]
    first_detail = (await z.http.get(f"/api/messages/{first['id']}", headers=z.auth())).json()
    assert first_detail["raw"]["text"] == {"body": "msg 1"}  # Meta's object as received
    assert first_detail["statuses"] == []
    media = await z.http.get(f"/api/messages/{first['id']}/media", headers=z.auth())
    assert "has no media" in error_of(media, 404, "not_found")

    conversation = (await z.http.get(f"/api/conversations/{conversation_id}", headers=z.auth())).json()
    contact = (await z.http.get(f"/api/contacts/{conversation['contact']['id']}", headers=z.auth())).json()
    assert contact == conversation["contact"]

    for path in (
        "/api/conversations/999999",
        "/api/messages/999999",
        "/api/contacts/999999",
        f"/api/messages/{2**70}",
    ):
        assert "does not exist" in error_of(await z.http.get(path, headers=z.auth()), 404, "not_found")


async def test_openapi_describes_the_api(z: Zaphub) -> None:
    schema = (await z.http.get("/schema/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/api/conversations",
        "/api/conversations/{conversation_id}",
        "/api/conversations/{conversation_id}/messages",
        "/api/messages/{message_id}",
        "/api/messages/{message_id}/media",
        "/api/messages/{message_id}/retry",
        "/api/contacts/{contact_id}",
        "/api/contacts",
        "/api/messages",
        "/api/conversations/{conversation_id}/read",
        "/api/conversations/{conversation_id}/typing",
    ):
        assert path in paths, sorted(paths)
    send = paths["/api/conversations/{conversation_id}/messages"]["post"]
    assert "202" in send["responses"]
    for code in ("400", "401", "403", "404", "409", "422"):
        assert code in send["responses"], code
    parameters = {p["name"]: p for p in send["parameters"]}
    assert parameters["Idempotency-Key"]["in"] == "header"
    assert "Authorization" not in parameters  # the bearerAuth scheme documents it
    body_schema = send["requestBody"]["content"]["application/json"]["schema"]
    components = schema["components"]["schemas"]
    variants = [components[v["$ref"].rsplit("/", 1)[1]] for v in body_schema["oneOf"]]
    assert sorted(v["properties"]["type"]["const"] for v in variants) == [
        "audio",
        "document",
        "image",
        "template",
        "text",
        "video",
    ]
    assert all("type" in v["required"] for v in variants)
    # The schema shows Meta's send limits, from the same rules the transport applies.
    by_type = {v["properties"]["type"]["const"]: v["properties"] for v in variants}

    assert by_type["text"]["body"]["maxLength"] == 4096
    assert by_type["image"]["caption"]["maxLength"] == 1024
    assert by_type["document"]["filename"]["maxLength"] == 255
    for code, response in send["responses"].items():  # errors are the host's envelope, not Litestar's
        if code != "202":
            assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody"), code
    media = paths["/api/messages/{message_id}/media"]["get"]["responses"]["200"]
    assert list(media["content"]) == ["application/octet-stream"]
    accepted_ref = send["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
    accepted = components[accepted_ref.rsplit("/", 1)[1]]
    assert (
        set(accepted["properties"]) == set(accepted["required"]) == {"messageId", "conversationId", "status"}
    )
    listed = paths["/api/conversations"]["get"]
    assert {p["name"] for p in listed["parameters"]} == {"limit", "before", "q", "mode"}
    assert "/socket.io" not in paths


async def test_openapi_declares_the_bearer_scheme_on_every_api_operation(z: Zaphub) -> None:
    schema = (await z.http.get("/schema/openapi.json")).json()
    bearer = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"], bearer["bearerFormat"]) == ("http", "bearer", "JWT")
    assert "security" not in schema  # no global requirement: the ops endpoints are open
    api_operations = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        if path.startswith("/api/")
        for method, operation in item.items()
    ]
    assert len(api_operations) == 14
    for path, method, operation in api_operations:
        assert operation["security"] == [{"bearerAuth": []}], (method, path)
        assert all(p["name"] != "Authorization" for p in operation.get("parameters", [])), (method, path)
    for path in ("/health", "/ready", "/metrics"):
        assert "security" not in schema["paths"][path]["get"], path
