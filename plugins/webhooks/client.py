"""Outbound HTTP of the ``webhooks`` plugin: signing a body and POSTing it to a subscriber.

One pooled :class:`httpx.AsyncClient` serves every subscriber; each delivery is bounded by the
subscriber's ``timeout_seconds``, so a stalled receiver costs its own task one timeout, never
another subscriber's time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime

import httpx
import msgspec

from core.event_payloads import FeedEvent

__all__ = ["USER_AGENT", "Attempt", "WebhookClient", "encode_body", "sign"]

USER_AGENT = "zaphub-webhooks/1"
"""The ``User-Agent`` of every delivery."""

_encoder = msgspec.json.Encoder()


def encode_body(event: FeedEvent) -> bytes:
    """The body of a delivery: the event as ``GET /api/events`` lists it (same encoder)."""
    return _encoder.encode(event)


def sign(secret: str, body: bytes) -> str:
    """The ``X-Zaphub-Signature-256`` value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """How one POST went."""

    delivered: bool
    """A 2xx answer."""
    status: int | None
    """The HTTP status, ``None`` when there was no answer (timeout, refused, reset)."""
    error: str
    """What happened, for logs and dead letters (``HTTP 500``, ``timeout``…); empty when delivered."""
    retry_after: float | None = None
    """Seconds the receiver asked to wait (``Retry-After`` of a 429 or 503), when it said."""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class WebhookClient:
    """Delivers signed bodies over one connection pool."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            follow_redirects=False,  # a redirect would re-send the signed body somewhere unconfigured
        )

    async def post(self, url: str, secret: str, event_id: int, body: bytes, *, timeout: float) -> Attempt:
        """POST ``body`` signed with ``secret``; never raises for the receiver's failures."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Zaphub-Event-Id": str(event_id),
            "X-Zaphub-Signature-256": sign(secret, body),
        }
        try:
            response = await self._http.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            return Attempt(delivered=False, status=None, error=f"timeout after {timeout:g}s")
        except httpx.HTTPError as exc:
            return Attempt(delivered=False, status=None, error=f"{type(exc).__name__}: {exc}"[:300])
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(delivered=True, status=status, error="")
        return Attempt(
            delivered=False,
            status=status,
            error=f"HTTP {status}",
            retry_after=_retry_after(response.headers.get("retry-after")),
        )

    async def aclose(self) -> None:
        """Close the pool."""
        await self._http.aclose()
