"""GraphClient against a fake Graph behind httpx.MockTransport (reference sections 7.3-7.5, 8)."""

from __future__ import annotations

import base64
import email.policy
import hashlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from core.errors import ConfigError, UpstreamError
from plugins.whatsapp.client import (
    AUTH_ERROR_CODES,
    GraphClient,
    MediaInfo,
    SendResult,
    backoff_delay,
    is_auth_error,
    is_retryable_code,
)
from plugins.whatsapp.outbound import build_send_body

TOKEN = "EAAGtestSECRETtoken0123456789abcdef"
PNID = "100000000000001"
MEDIA_ID = "100000000000003"
GRAPH = "https://graph.facebook.com"
LOOKASIDE = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=100000000000003&ext=1&hash=ATx"
CDN = "https://cdn.fbsbx.example/media/100000000000003.jpg"
JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes" * 100

Handler = Callable[[httpx.Request], httpx.Response]


def graph_error(
    status: int,
    code: int,
    message: str,
    *,
    details: str | None = None,
    subcode: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    """Graph's synchronous error envelope (reference 8.1)."""
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "ATESTtraceID0000",
        **extra,
    }
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if subcode is not None:
        error["error_subcode"] = subcode
    return httpx.Response(status, json={"error": error}, headers=headers)


class FakeGraph:
    """Answers like Graph: bearer required, messages / media endpoints, lookaside download."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.scripted: list[httpx.Response | Exception] = []
        self.sent = 0
        self.media_sha256 = hashlib.sha256(JPEG).hexdigest()
        self.download_url = LOOKASIDE

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.scripted:
            answer = self.scripted.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return graph_error(401, 190, "Error validating access token: Session has expired", subcode=463)
        url = request.url
        if url.host == "lookaside.fbsbx.com" or url.host == "cdn.fbsbx.example":
            if self.download_url == CDN and url.host == "lookaside.fbsbx.com":
                return httpx.Response(302, headers={"Location": CDN})
            return httpx.Response(200, content=JPEG, headers={"Content-Type": "image/jpeg"})
        if request.method == "POST" and url.path == f"/v25.0/{PNID}/messages":
            body = json.loads(request.content)
            if body.get("status") == "read":
                return httpx.Response(200, json={"success": True})
            self.sent += 1
            to = body["to"]
            message: dict[str, Any] = {"id": f"wamid.TESTOUT{self.sent}"}
            if body["type"] == "template":
                message["message_status"] = "accepted"
            return httpx.Response(
                200,
                json={
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                    "messages": [message],
                },
            )
        if request.method == "POST" and url.path == f"/v25.0/{PNID}/media":
            return httpx.Response(200, json={"id": "100000000000099"})
        if request.method == "GET" and url.path == f"/v25.0/{MEDIA_ID}":
            return httpx.Response(
                200,
                json={
                    "messaging_product": "whatsapp",
                    "url": LOOKASIDE,
                    "mime_type": "image/jpeg",
                    "sha256": self.media_sha256,
                    "file_size": len(JPEG),
                    "id": MEDIA_ID,
                },
            )
        return graph_error(400, 100, "(#100) Invalid parameter")


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
async def client(graph: FakeGraph) -> AsyncIterator[GraphClient]:
    async with GraphClient(
        base_url=GRAPH, version="v25.0", access_token=TOKEN, transport=httpx.MockTransport(graph)
    ) as graph_client:
        yield graph_client


def text_body(text: str = "Olá! Seu pedido saiu para entrega.") -> dict[str, Any]:
    return build_send_body(to="5511999999999", type_="text", content={"body": text})


async def send_failure(client: GraphClient) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await client.send(PNID, text_body())
    return info.value


# -- sending ------------------------------------------------------------------------------------


async def test_send_posts_json_with_bearer_and_returns_wamid(client: GraphClient, graph: FakeGraph) -> None:
    result = await client.send(PNID, text_body())

    assert result == SendResult(wamid="wamid.TESTOUT1", wa_id="5511999999999")
    (request,) = graph.requests
    assert request.method == "POST"
    assert str(request.url) == f"{GRAPH}/v25.0/{PNID}/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content)["to"] == "+5511999999999"


async def test_template_send_reports_message_status(client: GraphClient) -> None:
    body = build_send_body(
        to="5511999999999", type_="template", content={"name": "pedido_enviado", "language": "pt_BR"}
    )
    result = await client.send(PNID, body)
    assert result.message_status == "accepted"


async def test_version_without_v_and_trailing_slash_are_normalised(graph: FakeGraph) -> None:
    async with GraphClient(
        base_url=GRAPH + "/", version="25.0", access_token=TOKEN, transport=httpx.MockTransport(graph)
    ) as graph_client:
        await graph_client.send(PNID, text_body())
    assert str(graph.requests[0].url) == f"{GRAPH}/v25.0/{PNID}/messages"


async def test_default_timeouts_are_explicit(client: GraphClient, graph: FakeGraph) -> None:
    await client.send(PNID, text_body())
    assert graph.requests[0].extensions["timeout"] == {
        "connect": 5.0,
        "read": 20.0,
        "write": 20.0,
        "pool": 5.0,
    }


async def test_mark_read_and_typing_indicator(client: GraphClient, graph: FakeGraph) -> None:
    await client.mark_read(PNID, "wamid.TESTIN1")
    await client.mark_read(PNID, "wamid.TESTIN2", typing=True)

    assert [json.loads(r.content) for r in graph.requests] == [
        {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.TESTIN1"},
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.TESTIN2",
            "typing_indicator": {"type": "text"},
        },
    ]


async def test_mark_read_without_success_is_an_error(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(httpx.Response(200, json={"success": False}))
    with pytest.raises(UpstreamError, match="did not confirm"):
        await client.mark_read(PNID, "wamid.TESTIN1")


# -- error classification -------------------------------------------------------------------------


async def test_window_closed_131047_is_permanent(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(
        graph_error(
            400,
            131047,
            "(#131047) Re-engagement message",
            details="Message failed to send because more than 24 hours have passed since the customer "
            "last replied to this number.",
        )
    )
    exc = await send_failure(client)

    assert exc.retryable is False
    assert exc.ambiguous is False
    assert (exc.status, exc.code, exc.fbtrace_id) == (400, 131047, "ATESTtraceID0000")
    assert "Re-engagement message" in exc.title
    assert "24 hours" in exc.title
    assert "code=131047" in str(exc)


async def test_throughput_130429_is_retryable(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(
        graph_error(
            400,
            130429,
            "(#130429) Rate limit hit",
            details="Cloud API message throughput has been reached.",
            subcode=2494055,
        )
    )
    exc = await send_failure(client)

    assert exc.retryable is True
    assert exc.ambiguous is False
    assert (exc.code, exc.subcode) == (130429, 2494055)


async def test_server_error_131000_is_retryable(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(graph_error(500, 131000, "(#131000) Something went wrong"))
    exc = await send_failure(client)
    assert (exc.status, exc.code, exc.retryable) == (500, 131000, True)


async def test_bare_5xx_without_envelope_is_retryable(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(httpx.Response(502, text="<html>Bad Gateway</html>"))
    exc = await send_failure(client)
    assert (exc.status, exc.code, exc.retryable) == (502, None, True)
    assert "502" in str(exc)


async def test_429_retry_after_is_honoured_by_backoff(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(httpx.Response(429, text="slow down", headers={"Retry-After": "30"}))
    exc = await send_failure(client)

    assert exc.retryable is True
    assert exc.retry_after == 30.0
    rng = random.Random(7)
    for attempt in range(1, 6):
        assert backoff_delay(attempt, retry_after=exc.retry_after, rng=rng) >= 30.0


async def test_retry_after_as_http_date(client: GraphClient, graph: FakeGraph) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    graph.scripted.append(httpx.Response(503, headers={"Retry-After": format_datetime(when, usegmt=True)}))
    exc = await send_failure(client)
    assert exc.retry_after is not None
    assert 100 < exc.retry_after <= 120


async def test_expired_token_190_is_a_permanent_auth_error(graph: FakeGraph) -> None:
    async with GraphClient(
        base_url=GRAPH,
        version="v25.0",
        access_token="EAAGexpired000000000",
        transport=httpx.MockTransport(graph),
    ) as graph_client:
        exc = await send_failure(graph_client)

    assert (exc.status, exc.code, exc.subcode) == (401, 190, 463)
    assert exc.retryable is False
    assert exc.code in AUTH_ERROR_CODES
    assert is_auth_error(exc.code, exc.status)


async def test_unknown_code_flagged_transient_is_retryable(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(graph_error(400, 1, "An unknown error occurred", is_transient=True))
    exc = await send_failure(client)
    assert (exc.code, exc.retryable) == (1, True)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ConnectTimeout("timed out"),
        httpx.PoolTimeout("pool exhausted"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_not_sent_errors_are_retryable_and_not_ambiguous(
    client: GraphClient, graph: FakeGraph, error: Exception
) -> None:
    graph.scripted.append(error)
    exc = await send_failure(client)

    assert exc.retryable is True
    assert exc.ambiguous is False
    assert exc.status is None
    assert isinstance(exc.__cause__, httpx.HTTPError)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("timed out"),
        httpx.WriteTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_errors_after_sending_are_ambiguous(
    client: GraphClient, graph: FakeGraph, error: Exception
) -> None:
    graph.scripted.append(error)
    exc = await send_failure(client)

    assert exc.ambiguous is True
    assert exc.retryable is True
    assert "may have reached Meta" in exc.title


@pytest.mark.parametrize(
    "error",
    [httpx.UnsupportedProtocol("no"), httpx.LocalProtocolError("bad header"), httpx.DecodingError("gzip")],
    ids=lambda e: type(e).__name__,
)
async def test_no_httpx_exception_escapes(client: GraphClient, graph: FakeGraph, error: Exception) -> None:
    graph.scripted.append(error)
    exc = await send_failure(client)
    assert exc.__cause__ is error


async def test_unreadable_success_answer_is_ambiguous(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(httpx.Response(200, text="<html>ok</html>"))
    exc = await send_failure(client)
    assert exc.ambiguous is True


async def test_token_never_appears_in_errors_or_logs(
    client: GraphClient, graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    graph.scripted += [
        graph_error(401, 190, "Error validating access token: Session has expired", subcode=463),
        # A Graph message that echoes the token back must be scrubbed.
        graph_error(400, 100, f"(#100) Invalid OAuth access token - Cannot parse access token {TOKEN}"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("The read operation timed out"),
        httpx.Response(500, text="oops"),
    ]
    errors = [await send_failure(client) for _ in range(5)]
    with pytest.raises(UpstreamError) as info:
        await client.media_info("999")
    errors.append(info.value)
    for exc in errors:
        logging.getLogger("zaphub.test").error("send failed: %s", exc, exc_info=exc)

    assert len(graph.requests) == 6
    for exc in errors:
        assert TOKEN not in str(exc)
        assert TOKEN not in repr(exc)
        assert TOKEN not in exc.title
    assert "[redacted]" in str(errors[1])
    assert TOKEN not in repr(client)
    assert caplog.records
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("base_url", "version", "token", "path"),
    [
        ("graph.facebook.com", "v25.0", TOKEN, "plugins.whatsapp.graph_api_url"),
        (GRAPH, "latest", TOKEN, "plugins.whatsapp.graph_api_version"),
        (GRAPH, "v25.0", TOKEN[:10] + "\n" + TOKEN[10:], "plugins.whatsapp.access_token"),
    ],
)
def test_bad_settings_are_config_errors(base_url: str, version: str, token: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        GraphClient(base_url=base_url, version=version, access_token=token)
    assert info.value.path == path
    assert TOKEN[10:] not in str(info.value)


# -- media ------------------------------------------------------------------------------------------


async def test_media_info_checks_ownership_with_phone_number_id(
    client: GraphClient, graph: FakeGraph
) -> None:
    info = await client.media_info(MEDIA_ID, phone_number_id=PNID)

    assert info == MediaInfo(
        url=LOOKASIDE, mime_type="image/jpeg", sha256=graph.media_sha256, file_size=len(JPEG), id=MEDIA_ID
    )
    assert graph.requests[0].url.params["phone_number_id"] == PNID


async def test_download_sends_bearer_to_the_media_url(client: GraphClient, graph: FakeGraph) -> None:
    mime, data = await client.download_media(MEDIA_ID, phone_number_id=PNID)

    assert (mime, data) == ("image/jpeg", JPEG)
    _, download = graph.requests
    assert str(download.url) == LOOKASIDE
    assert download.headers["authorization"] == f"Bearer {TOKEN}"


async def test_download_resends_bearer_after_a_cross_host_redirect(
    client: GraphClient, graph: FakeGraph
) -> None:
    graph.download_url = CDN
    _, data = await client.download_media(MEDIA_ID)

    assert data == JPEG
    hosts = [(r.url.host, r.headers.get("authorization")) for r in graph.requests[1:]]
    assert hosts == [("lookaside.fbsbx.com", f"Bearer {TOKEN}"), ("cdn.fbsbx.example", f"Bearer {TOKEN}")]


async def test_redirect_to_plain_http_is_refused(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(httpx.Response(302, headers={"Location": "http://evil.example/steal"}))
    with pytest.raises(UpstreamError, match="redirect"):
        async with client.stream_media(LOOKASIDE):
            pass
    assert len(graph.requests) == 1


async def test_stream_media_yields_chunks(client: GraphClient) -> None:
    chunks = []
    async with client.stream_media(LOOKASIDE) as media:
        assert media.mime_type == "image/jpeg"
        assert media.content_length == len(JPEG)
        async for chunk in media.aiter_bytes(chunk_size=256):
            chunks.append(chunk)
    assert len(chunks) > 1
    assert b"".join(chunks) == JPEG


async def test_expired_media_url_says_to_fetch_a_new_one(client: GraphClient, graph: FakeGraph) -> None:
    graph.scripted.append(httpx.Response(404, text="Not Found"))
    with pytest.raises(UpstreamError, match="fetch a new one") as info:
        async with client.stream_media(LOOKASIDE):
            pass
    assert info.value.status == 404


class _BrokenStream(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"partial"
        raise httpx.ReadError("connection reset by peer")


async def test_connection_drop_mid_download_is_an_upstream_error(
    client: GraphClient, graph: FakeGraph
) -> None:
    graph.scripted.append(httpx.Response(200, headers={"Content-Type": "image/jpeg"}, stream=_BrokenStream()))
    with pytest.raises(UpstreamError) as info:
        async with client.stream_media(LOOKASIDE) as media:
            await media.aread()
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, httpx.ReadError)


@pytest.mark.parametrize("encode", [bytes.hex, lambda d: base64.b64encode(d).decode()], ids=["hex", "base64"])
async def test_download_verifies_sha256(
    client: GraphClient, graph: FakeGraph, encode: Callable[[bytes], str]
) -> None:
    graph.media_sha256 = encode(hashlib.sha256(b"other bytes").digest())
    with pytest.raises(UpstreamError, match="sha256"):
        await client.download_media(MEDIA_ID)


async def test_upload_is_multipart_and_returns_the_media_id(client: GraphClient, graph: FakeGraph) -> None:
    media_id = await client.upload_media(PNID, JPEG, mime_type="image/jpeg", filename="recibo.jpg")

    assert media_id == "100000000000099"
    (request,) = graph.requests
    assert str(request.url) == f"{GRAPH}/v25.0/{PNID}/media"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.read()
    )
    parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    assert parts["messaging_product"].get_content() == "whatsapp"
    assert parts["type"].get_content() == "image/jpeg"
    assert parts["file"].get_filename() == "recibo.jpg"
    assert parts["file"].get_content_type() == "image/jpeg"
    assert parts["file"].get_payload(decode=True) == JPEG


# -- the classification table and backoff ----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        (130429, 400, True),
        (131056, 400, True),
        (131000, 500, True),
        (131016, 500, True),
        (131057, 500, True),
        (2, 503, True),
        (4, 400, True),
        (80007, 400, True),
        (131047, 400, False),
        (131026, None, False),  # asynchronous `failed` status
        (131049, None, False),
        (131048, 400, False),
        (100, 400, False),
        (190, 401, False),
        (0, 401, False),
        (10, 403, False),
        (250, 403, False),
        (368, 403, False),
        (132001, 404, False),
        (132016, 400, False),
        (133016, 400, False),
        (131045, 500, False),
        (131000, None, True),  # asynchronous, but transient
        (999999, None, False),  # unknown asynchronous code: resending blindly risks a duplicate
        (999999, 503, True),
        (999999, 400, False),
        (None, None, True),  # no answer at all: a network failure
        (None, 429, True),
        (None, 500, True),
        (None, 404, False),
    ],
)
def test_is_retryable_code(code: int | None, status: int | None, retryable: bool) -> None:
    assert is_retryable_code(code, status) is retryable


def test_backoff_grows_with_full_jitter_under_the_cap() -> None:
    rng = random.Random(1)
    for attempt in range(1, 15):
        ceiling = min(300.0, 2.0 ** (attempt - 1))
        delays = [backoff_delay(attempt, rng=rng) for _ in range(50)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jitter spreads over the whole range
    assert backoff_delay(10_000, rng=rng) <= 300.0


def test_backoff_for_pair_rate_limit_follows_metas_4_to_the_n() -> None:
    assert [backoff_delay(n, code=131056) for n in range(1, 6)] == [1.0, 4.0, 16.0, 64.0, 256.0]
    assert backoff_delay(6, code=131056) == 300.0


def test_backoff_for_app_rate_limits_waits_minutes() -> None:
    assert backoff_delay(1, code=4, rng=random.Random(3)) >= 60.0
    assert backoff_delay(1, code=80007, rng=random.Random(3)) >= 60.0


def test_retry_after_wins_even_above_the_cap() -> None:
    assert backoff_delay(1, cap=10.0, retry_after=45.0) == 45.0
