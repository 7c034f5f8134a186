"""The Meta webhook: ``GET`` (verification handshake) and ``POST`` (messages and statuses).

The POST path is the hot path (Meta sends about three status webhooks per message sent, plus
every inbound message). It checks ``X-Hub-Signature-256`` over the raw bytes (constant-time),
decodes the body once, drops numbers this host does not serve, and answers ``200`` only after the
batch is committed (group commit in :class:`core.ingest.IngestBatcher`). Hooks fire after the
answer.

It is a raw ASGI endpoint rather than a regular route: it needs nothing of Litestar's request
parsing, DI or serialisation, which cost more per webhook than everything else here but the
database. The ``POST`` is a direct route (``register_direct_routes``): the host dispatches it
before Litestar's router and middleware, applying its body timeout and error envelope itself;
the handshake (``GET``) and other methods reach the same endpoint through Litestar (``@asgi``).
Its answers keep the host's JSON error envelope; being Meta's endpoint, not a CRM API, it is left
out of the OpenAPI schema.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any, cast
from urllib.parse import parse_qs

import msgspec
from litestar.handlers import asgi
from litestar.types import HTTPResponseStartEvent, Receive, Scope, Send
from prometheus_client import Counter

from core.host import Host
from core.server import DirectRoute
from core.stash import StashKey
from plugins.whatsapp.config import WhatsAppSettings
from plugins.whatsapp.models import WebhookPayloadError, parse_webhook

__all__ = ["WEBHOOK_PATH", "WebhookEndpoint", "signature_problem", "webhook_direct_routes", "webhook_routes"]

log = logging.getLogger("zaphub.whatsapp.webhook")

WEBHOOK_PATH = "/meta-whatsapp/webhook"
_PREFIX = "sha256="
_encode = msgspec.json.Encoder().encode
_JSON = [(b"content-type", b"application/json")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body


def signature_problem(body: bytes, header: str | None, keyed: hmac.HMAC) -> str | None:
    """``None`` when ``header`` is Meta's valid signature of ``body``; else what is wrong.

    ``keyed`` is ``hmac.new(app_secret, digestmod="sha256")``: copied for each body, so the key's
    setup (two SHA-256 blocks) is done once per host rather than once per webhook.
    """
    if not header:
        return "X-Hub-Signature-256 header is missing"
    if not header.startswith(_PREFIX):
        return "X-Hub-Signature-256 must start with 'sha256='"
    mac = keyed.copy()
    mac.update(body)
    if not hmac.compare_digest(header[len(_PREFIX) :].strip().lower(), mac.hexdigest()):
        return "X-Hub-Signature-256 does not match the body: check plugins.whatsapp.app_secret"
    return None


class _TooLarge(Exception):
    pass


class WebhookEndpoint:
    """Meta's webhook for one host; an ASGI callable."""

    def __init__(self, host: Host, settings: WhatsAppSettings) -> None:
        self.host = host
        self.settings = settings
        self.keyed = hmac.new(settings.app_secret.encode(), digestmod=hashlib.sha256)
        self.verify_token = settings.verify_token.encode()
        self.served = settings.served_numbers()
        self.max_bytes = settings.webhook_max_bytes
        self.received = Counter(
            "zaphub_webhooks", "Webhook POSTs by result.", ["result"], registry=host.metrics.registry
        )
        # The labelled child looked up once: ``labels()`` per webhook costs microseconds.
        self._accepted = self.received.labels(result="accepted")
        self.ignored_numbers = Counter(
            "zaphub_webhook_unknown_number_updates",
            "Messages/statuses for business numbers this host does not serve (answered 200, dropped).",
            registry=host.metrics.registry,
        )

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST``: the webhook itself (the host's direct route)."""
        await _send(send, await self.receive_webhook(scope, receive))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch on the HTTP method."""
        method = scope.get("method")
        if method == "POST":
            answer = await self.receive_webhook(scope, receive)
        elif method in ("GET", "HEAD"):
            answer = self.verify(scope)
        else:
            status, headers, body = _error(405, "method_not_allowed", "use GET (handshake) or POST (events)")
            answer = status, [*headers, (b"allow", b"GET, POST")], body
        await _send(send, answer, head=method == "HEAD")

    def verify(self, scope: Scope) -> _Answer:
        """The handshake: echo ``hub.challenge`` when ``hub.verify_token`` matches."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        mode = query.get("hub.mode", [None])[0]
        token = query.get("hub.verify_token", [None])[0]
        challenge = query.get("hub.challenge", [None])[0]
        if (
            mode == "subscribe"
            and token is not None
            and challenge is not None
            and hmac.compare_digest(token.encode(), self.verify_token)
        ):
            return 200, _TEXT, challenge.encode()
        log.warning("webhook verification refused (mode=%r): hub.verify_token does not match", mode)
        message = (
            "Forbidden: hub.mode must be 'subscribe' and hub.verify_token must equal "
            "plugins.whatsapp.verify_token"
        )
        return 403, _TEXT, message.encode()

    async def _body(self, receive: Receive) -> bytes:
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body = message.get("body", b"")  # the usual webhook: one read
            if len(body) > self.max_bytes:
                raise _TooLarge
            return body
        chunks: list[bytes] = []
        size = 0
        while True:
            if message["type"] == "http.disconnect":
                raise ConnectionError("client disconnected")
            chunk = cast(bytes, message.get("body", b""))
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
            message = await receive()

    async def receive_webhook(self, scope: Scope, receive: Receive) -> _Answer:
        """Check, decode and store one webhook POST; ``200`` only once it is committed."""
        count = self.received.labels
        signature: bytes | None = None
        too_large = False
        for name, value in scope["headers"]:  # one pass: the declared size and the signature
            if name == b"content-length":
                too_large = too_large or (value.isdigit() and int(value) > self.max_bytes)
            elif name == b"x-hub-signature-256":
                signature = value
        try:
            if too_large:
                raise _TooLarge  # refuse before reading a byte
            body = await self._body(receive)
        except _TooLarge:
            count(result="too_large").inc()
            return _error(
                413,
                "payload_too_large",
                f"webhook body over {self.max_bytes} bytes (plugins.whatsapp.webhook_max_bytes)",
            )
        if not self.settings.insecure_skip_signature:
            header = signature.decode("latin-1") if signature is not None else None
            problem = signature_problem(body, header, self.keyed)
            if problem is not None:
                count(result="bad_signature").inc()
                log.warning("webhook refused: %s", problem)
                return _error(401, "bad_signature", problem)
        try:
            parsed = parse_webhook(body)
        except WebhookPayloadError as exc:
            count(result="bad_json").inc()
            return _error(400, "bad_json", f"webhook body is not JSON: {exc}")
        for reason in parsed.ignored:
            log.info("webhook: ignored %s", reason)
        for error in parsed.errors:
            log.warning("webhook: Meta reported an error: %s", error)
        messages, statuses = parsed.messages, parsed.statuses
        if self.served:
            messages, statuses = self._served_only(messages, statuses)
        if not messages and not statuses:
            count(result="ignored").inc()
            return 200, _JSON, b'{"received":0}'
        try:
            await self.host.ingest.submit(messages, statuses)
        except Exception:
            # Not stored, so not acknowledged: Meta retries later. The batcher logged the cause.
            count(result="storage_error").inc()
            return _error(503, "storage_unavailable", "could not store the webhook; Meta will retry")
        self._accepted.inc()
        return 200, _JSON, b'{"received":%d}' % (len(messages) + len(statuses))

    def _served_only(self, messages: list[Any], statuses: list[Any]) -> tuple[list[Any], list[Any]]:
        kept_m = [m for m in messages if m.phone_number_id in self.served]
        kept_s = [s for s in statuses if s.phone_number_id in self.served]
        dropped = len(messages) - len(kept_m) + len(statuses) - len(kept_s)
        if dropped:
            self.ignored_numbers.inc(dropped)
            others = {m.phone_number_id for m in messages} | {s.phone_number_id for s in statuses}
            log.warning(
                "webhook: %d update(s) for business number(s) %s not served by this host "
                "(plugins.whatsapp.phone_number_id); answered 200 and dropped",
                dropped,
                ", ".join(sorted(others - self.served)),
            )
        return kept_m, kept_s


async def _send(send: Send, answer: _Answer, *, head: bool = False) -> None:
    status, headers, body = answer
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", b"%d" % len(body))],
    }
    await send(start)
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


def _error(status: int, code: str, message: str) -> _Answer:
    return status, _JSON, _encode({"error": {"code": code, "message": message}})


_ENDPOINT: StashKey[WebhookEndpoint] = StashKey("whatsapp.webhook")


def _endpoint(host: Host, settings: WhatsAppSettings) -> WebhookEndpoint:
    """The host's one endpoint (its metrics are registered once), shared by both registrations."""
    endpoint = host.stash.get(_ENDPOINT)
    if endpoint is None:
        endpoint = host.stash[_ENDPOINT] = WebhookEndpoint(host, settings)
    return endpoint


def webhook_direct_routes(host: Host, settings: WhatsAppSettings) -> list[DirectRoute]:
    """The webhook ``POST``, answered by the host before Litestar (the hot path)."""
    return [DirectRoute("POST", WEBHOOK_PATH, _endpoint(host, settings).post)]


def webhook_routes(host: Host, settings: WhatsAppSettings) -> list[Any]:
    """The webhook endpoint as a Litestar handler: the handshake, other methods (``405``)."""
    endpoint = _endpoint(host, settings)

    @asgi(WEBHOOK_PATH, copy_scope=True)
    async def meta_webhook(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(scope, receive, send)

    return [meta_webhook]
