"""The Meta webhook: ``GET`` (verification handshake) and ``POST`` (messages and statuses).

The POST path is the hot path. It checks ``X-Hub-Signature-256`` over the raw bytes
(constant-time), decodes the body once, drops numbers this host does not serve, and answers
``200`` only after the batch is committed (group commit in :class:`core.events.IngestBatcher`).
Hooks fire after the answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.params import QueryParameter
from prometheus_client import Counter

from core.app import error_response
from core.host import Host
from plugins.whatsapp.config import WhatsAppSettings
from plugins.whatsapp.models import WebhookPayloadError, parse_webhook

__all__ = ["WEBHOOK_PATH", "webhook_routes"]

log = logging.getLogger("zaphub.whatsapp.webhook")

WEBHOOK_PATH = "/meta-whatsapp/webhook"
_PREFIX = "sha256="


def signature_problem(body: bytes, header: str | None, secret: bytes) -> str | None:
    """``None`` when ``header`` is Meta's valid signature of ``body``; else what is wrong."""
    if not header:
        return "X-Hub-Signature-256 header is missing"
    if not header.startswith(_PREFIX):
        return "X-Hub-Signature-256 must start with 'sha256='"
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(header[len(_PREFIX) :].strip().lower(), expected):
        return "X-Hub-Signature-256 does not match the body: check plugins.whatsapp.app_secret"
    return None


def webhook_routes(host: Host, settings: WhatsAppSettings) -> list[Any]:
    """The two webhook handlers, bound to this host's settings and metrics."""
    secret = settings.app_secret.encode()
    verify_token = settings.verify_token.encode()
    served = settings.served_numbers()
    received = Counter(
        "zaphub_webhooks", "Webhook POSTs by result.", ["result"], registry=host.metrics.registry
    )
    ignored_numbers = Counter(
        "zaphub_webhook_unknown_number_updates",
        "Messages/statuses for business numbers this host does not serve (answered 200, dropped).",
        registry=host.metrics.registry,
    )

    @get(
        WEBHOOK_PATH,
        media_type="text/plain",
        tags=["meta"],
        summary="Meta's verification handshake",
        sync_to_thread=False,
    )
    def verify(
        mode: Annotated[str | None, QueryParameter(name="hub.mode")] = None,
        token: Annotated[str | None, QueryParameter(name="hub.verify_token")] = None,
        challenge: Annotated[str | None, QueryParameter(name="hub.challenge")] = None,
    ) -> Response[str]:
        if (
            mode == "subscribe"
            and token is not None
            and challenge is not None
            and hmac.compare_digest(token.encode(), verify_token)
        ):
            return Response(challenge, status_code=200, media_type="text/plain")
        log.warning("webhook verification refused (mode=%r): hub.verify_token does not match", mode)
        return Response(
            "Forbidden: hub.mode must be 'subscribe' and hub.verify_token must equal "
            "plugins.whatsapp.verify_token",
            status_code=403,
            media_type="text/plain",
        )

    @post(
        WEBHOOK_PATH,
        tags=["meta"],
        summary="Meta's webhook: messages and statuses",
        request_max_body_size=settings.webhook_max_bytes,
        status_code=200,
    )
    async def receive(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        if not settings.insecure_skip_signature:
            problem = signature_problem(body, request.headers.get("x-hub-signature-256"), secret)
            if problem is not None:
                received.labels(result="bad_signature").inc()
                log.warning("webhook refused: %s", problem)
                return error_response(401, "bad_signature", problem)
        try:
            parsed = parse_webhook(body)
        except WebhookPayloadError as exc:
            received.labels(result="bad_json").inc()
            return error_response(400, "bad_json", f"webhook body is not JSON: {exc}")
        for reason in parsed.ignored:
            log.info("webhook: ignored %s", reason)
        for error in parsed.errors:
            log.warning("webhook: Meta reported an error: %s", error)
        messages, statuses = parsed.messages, parsed.statuses
        if served:
            kept_m = [m for m in messages if m.phone_number_id in served]
            kept_s = [s for s in statuses if s.phone_number_id in served]
            dropped = len(messages) - len(kept_m) + len(statuses) - len(kept_s)
            if dropped:
                ignored_numbers.inc(dropped)
                others = {m.phone_number_id for m in messages} | {s.phone_number_id for s in statuses}
                log.warning(
                    "webhook: %d update(s) for business number(s) %s not served by this host "
                    "(plugins.whatsapp.phone_number_id); answered 200 and dropped",
                    dropped,
                    ", ".join(sorted(others - served)),
                )
            messages, statuses = kept_m, kept_s
        if not messages and not statuses:
            received.labels(result="ignored").inc()
            return Response({"received": 0}, status_code=200)
        try:
            await host.ingest.submit(messages, statuses)
        except Exception:
            # Not stored, so not acknowledged: Meta retries later. The batcher logged the cause.
            received.labels(result="storage_error").inc()
            return error_response(503, "storage_unavailable", "could not store the webhook; Meta will retry")
        received.labels(result="accepted").inc()
        return Response({"received": len(messages) + len(statuses)}, status_code=200)

    return [verify, receive]
