"""Inbound media through the REST API: media id → Graph (the sandbox) → bytes streamed to the CRM."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.whatsapp import webhook_builders as wb
from plugins.whatsapp.sandbox import media_content
from tests.plugins.crm_realtime.harness import Zaphub


async def inbound_message_id(z: Zaphub, message: dict[str, Any]) -> int:
    await z.webhook([message])
    await z.settle()
    conversations = (await z.http.get("/api/conversations", headers=z.auth())).json()["conversations"]
    messages = (
        await z.http.get(f"/api/conversations/{conversations[0]['id']}/messages", headers=z.auth())
    ).json()["messages"]
    return int(next(m["id"] for m in messages if m["wamid"] == message["id"]))


@pytest.mark.parametrize(
    ("message", "mime"),
    [
        (wb.image(media_id="img-recibo-1", caption="Recibo"), "image/jpeg"),
        (wb.document(media_id="doc-boleto-7", filename="boleto.pdf"), "application/pdf"),
        (wb.audio(media_id="aud-voz-3"), "audio/ogg"),
    ],
    ids=["image", "document", "voice"],
)
async def test_inbound_media_is_streamed_from_graph(z: Zaphub, message: dict[str, Any], mime: str) -> None:
    message_id = await inbound_message_id(z, message)
    media_id = message[message["type"]]["id"]
    response = await z.http.get(f"/api/messages/{message_id}/media", headers=z.auth())
    assert response.status_code == 200, response.text
    expected, expected_mime = media_content(media_id)  # type: ignore[misc]
    assert response.content == expected
    assert response.headers["content-type"].startswith(mime.split(";")[0])
    assert expected_mime.startswith(mime.split(";")[0])
    # Graph was asked for the media info, then the download URL with the bearer token.
    requests = (await z.http.get("/_sandbox/graph/_sandbox/requests")).json()
    paths = [r["path"] for r in requests]
    assert any(p.endswith(f"/{media_id}") for p in paths)
    assert any("download" in p and media_id in p for p in paths)


async def test_media_unknown_to_graph_is_a_clear_error(z: Zaphub) -> None:
    message_id = await inbound_message_id(z, wb.image(media_id="missing-expired-9"))
    response = await z.http.get(f"/api/messages/{message_id}/media", headers=z.auth())
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "media_unavailable"
    assert "missing-expired-9" in error["message"]
