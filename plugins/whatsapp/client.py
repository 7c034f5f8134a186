"""The Graph API client: sends messages, marks them read, fetches and uploads media.

One pooled :class:`httpx.AsyncClient` per :class:`GraphClient`, explicit timeouts, and every
failure translated here into :class:`core.errors.UpstreamError` (``raise … from exc``): no httpx
exception leaves this module. The client makes exactly one attempt per call; retrying is the
caller's decision (the outbox worker), helped by :func:`is_retryable_code`, the error's
``retryable`` / ``ambiguous`` / ``retry_after`` and :func:`backoff_delay`.

The access token is sent only in the ``Authorization`` header and is scrubbed from every error
text this module builds, so it never reaches a log line or an API answer.

Example:
    >>> client = GraphClient(base_url="https://graph.facebook.com", version="v25.0", access_token=token)
    >>> body = build_send_body(to="5511999999999", type_="text", content={"body": "Olá!"})
    >>> result = await client.send("123456789", body)  # SendResult(wamid="wamid.…", …)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from core.errors import ConfigError, UpstreamError

__all__ = [
    "AUTH_ERROR_CODES",
    "PERMANENT_CODES",
    "RETRYABLE_CODES",
    "GraphClient",
    "MediaDownload",
    "MediaInfo",
    "SendResult",
    "backoff_delay",
    "is_auth_error",
    "is_retryable_code",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Error classification: one table for synchronous errors and asynchronous ``failed`` statuses.
# Codes and advice from reference section 8.2 (Meta's error-code table, pywa's errors.py).
# ---------------------------------------------------------------------------------------------

#: Throttling and transient failures: sending again after a wait may succeed.
RETRYABLE_CODES: frozenset[int] = frozenset(
    {
        2,  # service temporarily unavailable
        4,  # app-level Graph rate limit
        80007,  # WABA rate limit
        130429,  # throughput (messages per second) of the number reached
        131000,  # "something went wrong"
        131016,  # service unavailable
        131056,  # pair rate limit: same business -> user too fast
        131057,  # account in maintenance
    }
)

#: Failures that sending the same message again cannot fix: they need a human, a template, or
#: a different payload. 131048 (spam rate limit) is here on purpose: Meta asks to pause the
#: campaign and retry "much later"; automatic retries would only hurt the number's quality.
PERMANENT_CODES: frozenset[int] = frozenset(
    {
        0,  # auth failed
        3,  # missing capability
        10,  # permission denied
        100,  # invalid parameter
        190,  # access token expired
        368,  # WABA blocked for policy violation
        130472,  # user in a marketing experiment
        131005,  # access denied
        131008,  # required parameter missing
        131009,  # parameter value invalid
        131021,  # recipient is the sender
        131026,  # message undeliverable
        131030,  # recipient not in the allowed list (test numbers)
        131031,  # account locked
        131042,  # payment problem
        131045,  # phone number registration error
        131047,  # re-engagement: more than 24 hours since the user's last message
        131048,  # spam rate limit
        131049,  # per-user marketing cap: do not retry within 24 hours
        131050,  # user stopped marketing messages
        131051,  # unsupported message type
        131052,  # media download error
        131053,  # media upload error
        131060,  # inbound message unavailable
        133016,  # too many register/deregister attempts
        *range(200, 300),  # permissions
        *range(132000, 132017),  # template errors
    }
)

#: Codes that mean the access token is bad or expired: the host should report not-ready.
AUTH_ERROR_CODES: frozenset[int] = frozenset({0, 190})

# Meta says app/WABA rate limits (4, 80007) need "minutes" of backoff, not seconds.
_MIN_DELAY_BY_CODE: dict[int, float] = {4: 60.0, 80007: 60.0}
PAIR_RATE_LIMIT_CODE = 131056

_rng = random.Random()


def is_retryable_code(code: int | None, http_status: int | None) -> bool:
    """Whether a failure may succeed if the same message is sent again later.

    Meta's code decides when it is in the table (:data:`RETRYABLE_CODES`,
    :data:`PERMANENT_CODES`). Otherwise the HTTP status does: 408, 429 and 5xx are retryable,
    any other status is not. With neither (``None, None``) the request never got an answer,
    a network failure, which is retryable. An unknown code with no HTTP status (an asynchronous
    ``failed`` status webhook) is not retried: resending blindly risks a duplicate.

    Args:
        code: Meta's ``error.code`` (synchronous) or ``errors[0].code`` (status webhook).
        http_status: the HTTP status of the Graph answer, or ``None``.
    """
    if code is not None:
        if code in RETRYABLE_CODES:
            return True
        if code in PERMANENT_CODES:
            return False
    if http_status is None:
        return code is None
    return http_status in (408, 429) or http_status >= 500


def is_auth_error(code: int | None, http_status: int | None) -> bool:
    """Whether a failure means the access token is invalid or expired (codes 0/190, or HTTP 401)."""
    return code in AUTH_ERROR_CODES or http_status == 401


def backoff_delay(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 300.0,
    retry_after: float | None = None,
    code: int | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt``.

    Exponential backoff with full jitter: a uniform draw in ``[0, min(cap, base * 2**(attempt-1))]``,
    so many senders that failed together do not retry together. Two codes follow Meta's advice:

    - ``131056`` (pair rate limit): ``base * 4**(attempt-1)`` seconds, capped, without jitter
      (only one business→user pair is involved; Meta's "4^X seconds, X from 0").
    - ``4`` / ``80007`` (app / WABA rate limits): at least 60 seconds (capped).

    The result is never less than ``retry_after`` (a ``Retry-After`` header), even above ``cap``.

    Args:
        attempt: 1 for the first retry, 2 for the second, …
        base: the first retry's upper bound, in seconds.
        cap: the largest upper bound, in seconds.
        retry_after: what the server asked for, if it did (:attr:`UpstreamError.retry_after`).
        code: Meta's error code, if any.
        rng: a random generator (inject a seeded one in tests).
    """
    exponent = min(max(attempt, 1) - 1, 60)  # bounded so huge attempt counts cannot overflow
    if code == PAIR_RATE_LIMIT_CODE:
        delay = min(cap, base * 4.0**exponent)
    else:
        delay = (rng or _rng).uniform(0.0, min(cap, base * 2.0**exponent))
        floor = _MIN_DELAY_BY_CODE.get(code) if code is not None else None
        if floor is not None:
            delay = max(delay, min(cap, floor))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


# ---------------------------------------------------------------------------------------------
# Wire payloads (reference sections 7.3, 7.4, 7.5, 8.1). Unknown fields are ignored: Meta adds
# fields often.
# ---------------------------------------------------------------------------------------------


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    """Graph accepted a message.

    Attributes:
        wamid: the message id all later status webhooks use; persist it.
        wa_id: the WhatsApp id Meta resolved the recipient to (may differ from what was sent).
        message_status: templates only: ``accepted`` or ``held_for_quality_assessment``.
    """

    wamid: str
    wa_id: str | None = None
    message_status: str | None = None


class MediaInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /{v}/{media_id}``: where to download a media object (the URL lives 5 minutes)."""

    url: str
    mime_type: str | None = None
    sha256: str | None = None
    file_size: int | None = None
    id: str | None = None


class _SentContact(msgspec.Struct):
    input: str | None = None
    wa_id: str | None = None


class _SentMessage(msgspec.Struct):
    id: str
    message_status: str | None = None


class _SendResponse(msgspec.Struct):
    messages: list[_SentMessage] = []
    contacts: list[_SentContact] = []


class _SuccessResponse(msgspec.Struct):
    success: bool = False


class _UploadResponse(msgspec.Struct):
    id: str


class _GraphError(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: int | None = None
    error_subcode: int | None = None
    error_data: Any = None
    fbtrace_id: str | None = None
    is_transient: bool | None = None
    error_user_title: str | None = None
    error_user_msg: str | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _GraphError | None = None


# strict=False: accept numbers sent as strings ("file_size": "61901"); Graph's field types are
# loosely documented and a type quibble must not lose a send result.
_send_decoder = msgspec.json.Decoder(_SendResponse, strict=False)
_success_decoder = msgspec.json.Decoder(_SuccessResponse, strict=False)
_upload_decoder = msgspec.json.Decoder(_UploadResponse, strict=False)
_media_decoder = msgspec.json.Decoder(MediaInfo, strict=False)
_error_decoder = msgspec.json.Decoder(_ErrorEnvelope, strict=False)
_encoder = msgspec.json.Encoder()

_T = TypeVar("_T")

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=20.0, write=20.0, pool=5.0)
MAX_MEDIA_REDIRECTS = 5
_VERSION_RE = re.compile(r"v?([0-9]+(?:\.[0-9]+)?)")
_HEX_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_JSON_HEADERS = {"Content-Type": "application/json"}

# Exceptions raised before any byte of the request reached Meta: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
# Our own mistakes (bad URL scheme, a header httpx refuses): nothing was sent, nothing will change.
_NEVER_SENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.TooManyRedirects)


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _sha256_matches(expected: str, data: bytes) -> bool | None:
    """Compare a declared sha256 (hex, or base64 as in webhooks) with ``data``; ``None`` if unreadable."""
    digest = hashlib.sha256(data).digest()
    expected = expected.strip()
    if _HEX_SHA256_RE.fullmatch(expected):
        return digest.hex() == expected.lower()
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(expected.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
        if len(raw) == len(digest):
            return raw == digest
    return None


class MediaDownload:
    """A media download in progress, as :meth:`GraphClient.stream_media` yields it.

    Attributes:
        mime_type: the ``Content-Type`` of the download (``image/jpeg``), or ``None``.
        content_length: the ``Content-Length``, if the server sent one.
    """

    def __init__(self, response: httpx.Response, client: GraphClient) -> None:
        self._response = response
        self._client = client
        self.mime_type: str | None = response.headers.get("content-type")
        length = response.headers.get("content-length")
        self.content_length: int | None = int(length) if length and length.isdigit() else None

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """Yield the body in chunks.

        Raises:
            UpstreamError: the connection failed mid-download (``retryable``).
        """
        try:
            async for chunk in self._response.aiter_bytes(chunk_size):
                yield chunk
        except httpx.HTTPError as exc:
            reason = self._client._redact(f"{type(exc).__name__}: {exc}")
            raise UpstreamError(
                f"Graph media download: the connection failed mid-download ({reason})", retryable=True
            ) from exc

    async def aread(self) -> bytes:
        """The whole body.

        Raises:
            UpstreamError: the connection failed mid-download (``retryable``).
        """
        return b"".join([chunk async for chunk in self.aiter_bytes()])


class GraphClient:
    """Meta's Graph API for one access token.

    Args:
        base_url: ``https://graph.facebook.com``, or the sandbox / a BSP's proxy.
        version: the pinned Graph version, ``v25.0`` (``25.0`` is accepted too).
        access_token: a System User token; sent only as ``Authorization: Bearer``.
        timeout: httpx timeouts; default connect 5 s, read 20 s, write 20 s, pool 5 s.
        transport: an httpx transport (tests inject :class:`httpx.MockTransport`).
        max_connections: size of the connection pool (ignored with a custom transport).

    Raises:
        ConfigError: a malformed base URL, version or token (the token itself is not shown).
    """

    def __init__(
        self,
        *,
        base_url: str,
        version: str,
        access_token: str,
        timeout: httpx.Timeout | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        base = base_url.strip().rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ConfigError(
                f"{base_url!r} is not an http(s) URL: use https://graph.facebook.com",
                "plugins.whatsapp.graph_api_url",
            )
        match = _VERSION_RE.fullmatch(version.strip())
        if match is None:
            raise ConfigError(
                f"{version!r} is not a Graph API version: pin one such as v25.0",
                "plugins.whatsapp.graph_api_version",
            )
        token = access_token.strip()
        if any(not 0x21 <= ord(char) <= 0x7E for char in token):
            raise ConfigError(
                "contains spaces, line breaks or non-ASCII characters: paste the token alone",
                "plugins.whatsapp.access_token",
            )
        self.base_url = base
        self.version = f"v{match.group(1)}"
        self._root = f"{base}/{self.version}"
        self._token = token
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout or DEFAULT_TIMEOUT,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,  # Graph calls never redirect; media redirects are followed by hand
        )

    def __repr__(self) -> str:
        return f"GraphClient(base_url={self.base_url!r}, version={self.version!r})"

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- public calls -------------------------------------------------------------------------

    async def send(self, phone_number_id: str, body: dict[str, Any]) -> SendResult:
        """``POST /{v}/{phone_number_id}/messages``.

        Args:
            phone_number_id: the business number sending.
            body: from :func:`plugins.whatsapp.outbound.build_send_body`.

        Returns:
            The wamid Meta assigned, and the ``wa_id`` it resolved the recipient to.

        Raises:
            UpstreamError: Graph refused (``code`` tells why) or did not answer. ``ambiguous``
                means the message may have been accepted anyway.
        """
        url = self._url(phone_number_id, "messages")
        answer = await self._call(
            "send", "POST", url, _send_decoder, content=_encoder.encode(body), headers=_JSON_HEADERS
        )
        if not answer.messages:
            # 2xx without a wamid: Meta may have accepted it, we cannot tell.
            raise UpstreamError(
                "Graph send: the answer has no message id", status=200, retryable=True, ambiguous=True
            )
        message = answer.messages[0]
        wa_id = answer.contacts[0].wa_id if answer.contacts else None
        log.debug("graph send accepted", extra={"wamid": message.id, "phone_number_id": phone_number_id})
        return SendResult(wamid=message.id, wa_id=wa_id, message_status=message.message_status)

    async def mark_read(self, phone_number_id: str, wamid: str, *, typing: bool = False) -> None:
        """Mark an inbound message read (blue ticks), optionally showing "typing…".

        Only pass ``typing=True`` when a reply follows: it shows until the reply or for 25 s.

        Raises:
            UpstreamError: Graph refused or did not answer.
        """
        body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
        if typing:
            body["typing_indicator"] = {"type": "text"}
        url = self._url(phone_number_id, "messages")
        answer = await self._call(
            "mark_read", "POST", url, _success_decoder, content=_encoder.encode(body), headers=_JSON_HEADERS
        )
        if not answer.success:
            raise UpstreamError("Graph mark_read: the answer did not confirm success", status=200)

    async def media_info(self, media_id: str, *, phone_number_id: str | None = None) -> MediaInfo:
        """``GET /{v}/{media_id}``: a short-lived download URL and the media's type, size and hash.

        Args:
            media_id: from an inbound message or an upload.
            phone_number_id: when given, Meta checks the media belongs to this number.

        Raises:
            UpstreamError: unknown or expired media (``code`` 100), or Graph did not answer.
        """
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        return await self._call("media_info", "GET", self._url(media_id), _media_decoder, params=params)

    @contextlib.asynccontextmanager
    async def stream_media(self, url: str) -> AsyncIterator[MediaDownload]:
        """Open a download URL from :meth:`media_info` and stream its bytes.

        The bearer token goes with the download and with every redirect it follows (httpx
        drops it on cross-host redirects; the lookaside URL needs it). A redirect from https
        to plain http is refused, since it would carry the token in clear.

        Example:
            >>> async with client.stream_media(info.url) as media:
            ...     async for chunk in media.aiter_bytes():
            ...         await send(chunk)

        Raises:
            UpstreamError: the URL expired (HTTP 404: fetch a new one), or the download failed.
        """
        response = await self._open_media(url)
        try:
            yield MediaDownload(response, self)
        finally:
            with contextlib.suppress(httpx.HTTPError):  # closing cannot fail in a way worth reporting
                await response.aclose()

    async def download_media(self, media_id: str, *, phone_number_id: str | None = None) -> tuple[str, bytes]:
        """Fetch a media object's bytes in memory: :meth:`media_info` then :meth:`stream_media`.

        The bytes are checked against Meta's ``sha256`` when it is given in a known format.

        Returns:
            ``(mime_type, data)``.

        Raises:
            UpstreamError: any step failed, or the bytes do not match the declared hash.
        """
        info = await self.media_info(media_id, phone_number_id=phone_number_id)
        async with self.stream_media(info.url) as media:
            data = await media.aread()
            mime = info.mime_type or media.mime_type or "application/octet-stream"
        if info.sha256 and _sha256_matches(info.sha256, data) is False:
            raise UpstreamError(
                "Graph media download: the bytes do not match Meta's sha256 (truncated or corrupted)",
                retryable=True,
            )
        return mime, data

    async def upload_media(self, phone_number_id: str, data: bytes, *, mime_type: str, filename: str) -> str:
        """``POST /{v}/{phone_number_id}/media`` (multipart); the media can then be sent by id for 30 days.

        Args:
            phone_number_id: the business number that will send it.
            data: the file's bytes.
            mime_type: its MIME type (``image/jpeg``); a mismatch with the bytes fails with 131053.
            filename: a file name for the multipart part.

        Returns:
            The media id.

        Raises:
            UpstreamError: Graph refused or did not answer.
        """
        return (
            await self._call(
                "upload_media",
                "POST",
                self._url(phone_number_id, "media"),
                _upload_decoder,
                data={"messaging_product": "whatsapp", "type": mime_type},
                files={"file": (filename, data, mime_type)},
            )
        ).id

    # -- plumbing -------------------------------------------------------------------------------

    def _url(self, node: str, edge: str | None = None) -> str:
        if not node:
            raise ValueError("a Graph node id (phone_number_id / media_id) is required")
        path = f"{self._root}/{quote(node, safe='')}"
        return f"{path}/{edge}" if edge else path

    def _redact(self, text: str) -> str:
        # Defense in depth: nothing we build should contain the token, but error texts come from
        # httpx and from Meta; a short token would match too much to be worth scrubbing.
        if len(self._token) >= 8 and self._token in text:
            text = text.replace(self._token, "[redacted]")
        return text

    async def _call(
        self,
        operation: str,
        method: str,
        url: str,
        decoder: msgspec.json.Decoder[_T],
        **kwargs: Any,
    ) -> _T:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self._network_error(exc, operation) from exc
        if not response.is_success:
            raise self._http_error(response, operation)
        try:
            return decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            raise UpstreamError(
                f"Graph {operation}: the answer could not be read ({self._redact(str(exc))})",
                status=response.status_code,
                retryable=True,
                ambiguous=True,
            ) from exc

    async def _open_media(self, url: str) -> httpx.Response:
        current = url
        for _ in range(MAX_MEDIA_REDIRECTS + 1):
            try:
                request = self._http.build_request("GET", current)
                response = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise self._network_error(exc, "media download") from exc
            except httpx.InvalidURL as exc:
                raise UpstreamError(f"Graph media download: invalid URL ({self._redact(str(exc))})") from exc
            if response.is_redirect:
                await response.aclose()
                target = response.url.join(response.headers["location"])
                if response.url.scheme == "https" and target.scheme != "https":
                    raise UpstreamError(
                        "Graph media download: refused an https to http redirect (it would leak the token)",
                        status=response.status_code,
                    )
                current = str(target)
                continue
            if not response.is_success:
                try:
                    await response.aread()
                except httpx.HTTPError:
                    pass  # the status alone says enough
                finally:
                    await response.aclose()
                raise self._http_error(response, "media download")
            return response
        raise UpstreamError(f"Graph media download: more than {MAX_MEDIA_REDIRECTS} redirects")

    def _network_error(self, exc: httpx.HTTPError, operation: str) -> UpstreamError:
        detail = self._redact(str(exc))
        name = type(exc).__name__
        reason = f"{name}: {detail}" if detail else name
        if isinstance(exc, _NOT_SENT):
            return UpstreamError(f"Graph {operation}: could not reach Graph ({reason})", retryable=True)
        if isinstance(exc, _NEVER_SENT):
            return UpstreamError(f"Graph {operation}: request not sent ({reason})")
        # Timeouts and drops after the request went out: Meta may have acted on it.
        return UpstreamError(
            f"Graph {operation}: no answer, the request may have reached Meta ({reason})",
            retryable=True,
            ambiguous=True,
        )

    def _http_error(self, response: httpx.Response, operation: str) -> UpstreamError:
        status = response.status_code
        error: _GraphError | None = None
        with contextlib.suppress(msgspec.DecodeError, httpx.ResponseNotRead):
            error = _error_decoder.decode(response.content).error
        retry_after = _parse_retry_after(response.headers.get("retry-after"))
        if error is None:
            # Not Graph's envelope: a proxy, a load balancer, or the media CDN.
            reason = response.reason_phrase or "error"
            hint = (
                " (the media URL expired: fetch a new one)"
                if operation == "media download" and status == 404
                else ""
            )
            return UpstreamError(
                f"Graph {operation}: HTTP {status} {reason}{hint}",
                status=status,
                retryable=is_retryable_code(None, status),
                retry_after=retry_after,
            )
        title = error.message or error.error_user_title or f"HTTP {status}"
        details = error.error_data.get("details") if isinstance(error.error_data, dict) else None
        if isinstance(details, str) and details and details not in title:
            title = f"{title}: {details}"
        retryable = is_retryable_code(error.code, status)
        if not retryable and error.is_transient and error.code not in PERMANENT_CODES:
            retryable = True  # Meta flags a code we do not know as transient
        return UpstreamError(
            self._redact(f"Graph {operation}: {title}"),
            status=status,
            code=error.code,
            subcode=error.error_subcode,
            fbtrace_id=error.fbtrace_id,
            retryable=retryable,
            retry_after=retry_after,
        )
