"""The Meta sandbox: a local emulator of the Graph endpoints zaphub uses.

It answers the Cloud API calls as Meta documents them (same paths, bodies, error envelopes) and,
like Meta, delivers signed status webhooks after each accepted send. Run it standalone with
``zaphub sandbox`` (an app from :func:`create_sandbox_app`) or mount :attr:`Sandbox.router` inside
zaphub's own app (``whatsapp.sandbox: true``) and run :meth:`Sandbox.lifespan` with it.

Graph endpoints (``{v}`` is any ``vNN.N``; paths start with ``SandboxOptions.prefix``):

- ``POST /{v}/{phone_number_id}/messages``: checked against the send rules zaphub itself applies
  (:mod:`plugins.whatsapp.send_rules`, stricter than Graph where Meta documents nothing: unknown
  fields are refused), and refused like Meta does (400 + ``(#100) …`` envelope);
  answers ``{"messaging_product", "contacts", "messages": [{"id": "wamid…"}]}`` and then POSTs
  ``sent``, ``delivered``, ``read`` status webhooks, each its own signed request, at
  ``status_delays``. Mark-as-read bodies answer ``{"success": true}``.
- ``GET /{v}/{media_id}``: media info with an absolute ``url``; ``GET /download/{media_id}``
  serves the bytes and, like Meta's lookaside URL, needs the ``Authorization: Bearer`` header.
- ``POST /{v}/{phone_number_id}/media`` (multipart upload), ``DELETE /{v}/{media_id}``,
  ``GET /{v}/{phone_number_id}`` (phone number info).
- With ``access_token`` set, Graph calls without ``Authorization: Bearer <it>`` get 401 code 190.

Conventions for demos and tests (they do not exist at Meta):

- A recipient whose number ends in ``0000`` is undeliverable: the send is accepted, then a
  ``failed`` status webhook with code 131026 arrives instead of sent/delivered/read.
- A recipient ending in ``0047`` is outside the 24-hour window: free-form sends are accepted, then
  fail asynchronously with 131047 (how Meta often reports it); templates are delivered normally.
- Media ids starting with ``missing`` do not exist (400, code 100, as Meta answers for a bad id);
  every other id has deterministic bytes: ``img…`` a small valid JPEG, ``vid…``/``aud…``/
  ``doc…``/``stk…`` bytes derived from the id with a video/audio/PDF/WebP type, anything else
  ``application/octet-stream``. Uploaded media are served as uploaded.

Test and fault controls under ``{prefix}/_sandbox/``. They can make the host ingest a webhook signed
with the real app secret and read every recorded send, so :class:`SandboxOptions` can turn them
off, require a token (``X-Sandbox-Token``) and answer only clients on this machine; inside zaphub
all three are the default (see ``plugins.whatsapp.sandbox_token``). Standalone, no token is needed:

- ``GET|DELETE requests``: the recorded Graph requests (method, path, query, headers without
  ``Authorization``, JSON body or a summary of the form), oldest first, the last 1,000 kept.
- ``GET|POST|DELETE faults``: a fault (or a JSON list of them) applies to the next ``count``
  message sends (not to mark-as-read), in order, after validation. ``{"status": 500}`` or
  ``{"code": 131047}`` answers Meta's error envelope (the other one inferred from Meta's table),
  ``"title"``/``"details"`` override its text, ``{"retry_after": 1}`` adds ``Retry-After`` (status
  429 unless given), ``{"delay": 30}`` holds the answer (a client that gives up first finds its
  send dropped; one that waits gets the normal answer or the fault's error), ``{"drop": true}``
  sends the status line and headers then closes the connection before the body (ASGI cannot
  close a connection before answering), so the client sees a broken response and nothing is sent.
- ``POST inbound``: deliver an inbound message webhook now, e.g. ``{"type": "text", "text": "Olá",
  "from": "5511999999999", "name": "João"}``; answers the wamid and zaphub's HTTP answer.
- ``POST statuses``: deliver one status webhook now (a list becomes one batched webhook), e.g.
  ``{"wamid": "wamid.X", "status": "delivered"}``, to test out-of-order or duplicate statuses.
- ``GET|DELETE deliveries``: the webhooks the sandbox tried to deliver and how it went.

Status webhooks that get no 200 are retried ``delivery_attempts`` times with exponential backoff
(Meta retries for days; the sandbox gives up sooner). Everything is kept in memory, bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, NamedTuple

import httpx
import msgspec
from litestar import Litestar, Request, Response, Router, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import UploadFile
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.response.base import ASGIResponse
from litestar.types import Guard, Receive, Scope, Send

from plugins.whatsapp import send_rules
from plugins.whatsapp import webhook_builders as wb

__all__ = [
    "INBOUND_TYPES",
    "Fault",
    "GraphError",
    "InboundSpec",
    "Sandbox",
    "SandboxOptions",
    "StatusSpec",
    "create_sandbox_app",
    "inbound_message",
    "media_content",
]

logger = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]


class SandboxOptions(msgspec.Struct, kw_only=True):
    """How the sandbox behaves.

    Attributes:
        app_secret: Signs the webhooks it delivers (``X-Hub-Signature-256`` over the exact bytes).
        webhook_url: Where webhooks go (zaphub's ``POST /meta-whatsapp/webhook``); ``None``: none.
            Read at each delivery, so it may be set after the server has started.
        access_token: When set, Graph calls must carry ``Authorization: Bearer <it>`` (else 401,
            code 190); when ``None`` any token is accepted (media downloads still need one).
        phone_number_id: The only business number the sandbox knows (others: 400, code 100).
        display_phone_number: Its number, digits only, as webhooks' ``metadata`` show it.
        waba_id: The WhatsApp Business Account id (``entry[].id`` of webhooks).
        status_delays: Seconds after an accepted send at which ``sent``, ``delivered`` and
            ``read`` are delivered.
        prefix: Path prefix when mounted inside another app, e.g. ``"/_sandbox/graph"``.
        delivery_attempts: Tries per webhook before giving up (the first one included).
        delivery_backoff: Seconds before the first retry; doubled for each further retry.
        controls_enabled: Whether the ``/_sandbox/`` controls answer at all (else 403).
        control_token: When set, the controls need it in the ``X-Sandbox-Token`` header (else 401).
        control_loopback_only: Refuse (403) controls from a non-loopback peer or relayed by a
            proxy (a request carrying ``Forwarded``, ``X-Forwarded-For`` or ``X-Real-IP``).
    """

    app_secret: str
    webhook_url: str | None = None
    access_token: str | None = None
    phone_number_id: str = wb.DEFAULT_PHONE_NUMBER_ID
    display_phone_number: str = wb.DEFAULT_DISPLAY_PHONE_NUMBER
    waba_id: str = wb.DEFAULT_WABA_ID
    status_delays: tuple[float, float, float] = (0.05, 0.10, 0.15)
    prefix: str = ""
    delivery_attempts: int = 5
    delivery_backoff: float = 0.5
    controls_enabled: bool = True
    control_token: str | None = None
    control_loopback_only: bool = False


class Fault(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A failure the sandbox applies to the next ``count`` message sends (see module docs)."""

    count: int = 1
    status: int | None = None
    code: int | None = None
    title: str | None = None
    details: str | None = None
    retry_after: float | None = None
    delay: float | None = None
    drop: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        if self.delay is not None and not 0 <= self.delay <= 600:
            raise ValueError("delay must be between 0 and 600 seconds")


class InboundSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST _sandbox/inbound``: one inbound message (see :func:`inbound_message`)."""

    type: str = "text"
    text: str | None = None
    from_: str = msgspec.field(name="from", default=wb.DEFAULT_FROM)
    name: str | None = None
    media_id: str | None = None
    reply_to: str | None = None
    wamid: str | None = None
    timestamp: int | None = None


class StatusSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST _sandbox/statuses``: one status of a message the business sent."""

    wamid: str
    status: str = "delivered"
    recipient_id: str = wb.DEFAULT_FROM
    error_code: int | None = None
    error_title: str | None = None
    timestamp: int | None = None
    biz_opaque_callback_data: str | None = None


class GraphError(Exception):
    """An error answered in Meta's envelope: ``{"error": {"message", "type", "code", …}}``."""

    def __init__(
        self,
        status_code: int,
        code: int,
        message: str,
        *,
        details: str | None = None,
        type_: str = "OAuthException",
        subcode: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.type = type_
        self.subcode = subcode
        self.headers = dict(headers or {})

    def to_response(self) -> Response[Any]:
        """Meta's error envelope with this error's HTTP status."""
        body: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.details is not None:
            body["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        if self.subcode is not None:
            body["error_subcode"] = self.subcode
        body["fbtrace_id"] = "A" + base64.b64encode(os.urandom(16), b"_-").decode().rstrip("=")
        return Response({"error": body}, status_code=self.status_code, headers=self.headers)


def _invalid(detail: str) -> GraphError:
    # Meta prefixes validation messages with "(#100)" and repeats them in error_data.details.
    return GraphError(400, 100, f"(#100) {detail}", details=detail)


def _unknown_object(object_id: str, method: str) -> GraphError:
    text = (
        f"Unsupported {method} request. Object with ID '{object_id}' does not exist, cannot be loaded "
        "due to missing permissions, or does not support this operation. Please read the Graph API "
        "documentation at https://developers.facebook.com/docs/graph-api"
    )
    return GraphError(400, 100, text, type_="GraphMethodException", subcode=33)


# --- validation of send bodies ------------------------------------------------------------------

_VERSION = re.compile(r"v\d+\.\d+")
_MEDIA_TYPES: Final = tuple(sorted(send_rules.MEDIA_TYPES))
_SEND_TYPES: Final = tuple(sorted(send_rules.CONTENT_TYPES))


def _object(parent: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        raise _invalid(f"The parameter {path} is required.")
    if not isinstance(value, dict):
        raise _invalid(f"Param {path} must be a JSON object.")
    return value


def _string(
    parent: Mapping[str, Any], key: str, path: str, *, required: bool = True, max_len: int | None = None
) -> str | None:
    value = parent.get(key)
    if value is None:
        if required:
            raise _invalid(f"The parameter {path} is required.")
        return None
    if not isinstance(value, str):
        raise _invalid(f"Param {path} must be a string.")
    if required and not value.strip():
        raise _invalid(f"Param {path} must be at least 1 characters long.")
    if max_len is not None and len(value) > max_len:
        raise _invalid(f"Param {path} must be at most {max_len} characters long.")
    return value


_META_TYPES: Final = {
    "string": "a string",
    "object": "a JSON object",
    "array": "an array",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
}


def _meta_message(root: str, violation: send_rules.RuleViolation) -> str:
    """Word a broken send rule as Graph does: ``Param text['body'] must be at most 4096 …``."""

    def param(path: tuple[str | int, ...]) -> str:
        parts = [root] if root else []
        for part in path:
            if isinstance(part, int):
                parts.append(f"[{part}]")
            elif parts:
                parts.append(f"['{part}']")
            else:
                parts.append(part)
        return "".join(parts)

    where = param(violation.path)
    match violation.problem:
        case "required":
            return f"The parameter {where} is required."
        case "too_long":
            return f"Param {where} must be at most {violation.limit} characters long."
        case "too_many":
            return f"Param {where} must have at most {violation.limit} elements."
        case "too_few":
            return f"Param {where} must have at least {violation.limit} elements."
        case "unknown_field":
            return f"Param {where} is not a valid parameter."
        case "wrong_type":
            expected = violation.expected or "string"
            return f"Param {where} must be {_META_TYPES.get(expected, expected)}."
        case "out_of_range":
            low, high = violation.bounds or (0.0, 0.0)
            return f"Param {where} must be between {low:g} and {high:g}."
        case _:
            return f"Param {where} {violation.text}."


def _validate_content(kind: str, body: Mapping[str, Any]) -> None:
    """Check the type's object against zaphub's send rules, the ones zaphub itself applies."""
    if kind == "contacts":
        content: Any = {"contacts": body.get("contacts")}
        root = ""  # Graph's value is the list itself: contacts[0]['name']
    else:
        content, root = _object(body, kind, kind), kind
    if kind == "interactive" and content.get("type") not in send_rules.INTERACTIVE_KINDS:
        raise _invalid(
            f"Param interactive['type'] must be one of {{{', '.join(send_rules.INTERACTIVE_KINDS)}}}."
        )
    try:
        send_rules.check_content(kind, content)
    except send_rules.RuleViolation as violation:
        raise _invalid(_meta_message(root, violation)) from None


def _validate_send(body: Mapping[str, Any]) -> tuple[str, str]:
    """Check a send body like Meta does; returns ``(to, type)`` or raises :class:`GraphError`."""
    recipient_type = body.get("recipient_type", "individual")
    if recipient_type not in ("individual", "group"):
        raise _invalid("Param recipient_type must be one of {individual, group}.")
    to = body.get("to")
    if to is None and isinstance(body.get("recipient"), str):
        to = body["recipient"]  # a business-scoped user id (BSUID) instead of a number
    elif to is None:
        raise _invalid("The parameter to is required.")
    elif not isinstance(to, str):
        raise _invalid("Param to must be a string.")
    elif recipient_type == "individual" and not re.fullmatch(r"\+?[\d\s()\-.]{5,30}", to):
        raise _invalid(f"Param to is not a valid WhatsApp phone number: {to!r}.")
    kind = body.get("type", "text")  # Meta's default type is text
    if kind not in _SEND_TYPES:
        allowed = ", ".join(t.upper() for t in _SEND_TYPES)
        raise _invalid(f'Param type must be one of {{{allowed}}} - got "{kind}".')
    if "context" in body:
        _string(_object(body, "context", "context"), "message_id", "context['message_id']")
    _string(
        body,
        "biz_opaque_callback_data",
        "biz_opaque_callback_data",
        required=False,
        max_len=send_rules.CALLBACK_DATA_MAX,
    )
    _validate_content(kind, body)
    return to, kind


def _validate_mark_read(body: Mapping[str, Any]) -> None:
    if body.get("status") != "read":
        raise _invalid("Param status must be 'read'.")
    _string(body, "message_id", "message_id")
    if "typing_indicator" in body:
        indicator = _object(body, "typing_indicator", "typing_indicator")
        if indicator.get("type") != "text":
            raise _invalid("Param typing_indicator['type'] must be 'text'.")


# --- faults -------------------------------------------------------------------------------------

# Meta's table of HTTP statuses per error code (reference section 8.1); the rest answer 400.
_STATUS_FOR_CODE: Final = {
    0: 401,
    190: 401,
    10: 403,
    368: 403,
    131005: 403,
    131031: 403,
    132001: 404,
    3: 500,
    131000: 500,
    131016: 500,
    131045: 500,
    131057: 500,
    2: 503,
}
_CODE_FOR_STATUS: Final = {401: 190, 403: 10, 404: 132001, 429: 130429, 500: 131000, 503: 2}
_TITLES: Final = {
    **wb.ERROR_TITLES,
    2: "Service temporarily unavailable",
    4: "Application request limit reached",
    10: "Permission denied",
    100: "Invalid parameter",
    190: "Invalid OAuth access token",
    131008: "Required parameter is missing",
    131009: "Parameter value is not valid",
    131016: "Service unavailable",
    131048: "Spam rate limit hit",
    131057: "Account in maintenance mode",
    80007: "Rate limit issues",
}


def _fault_error(fault: Fault) -> GraphError:
    status = fault.status
    if status is None:
        default = 429 if fault.retry_after is not None else 400
        status = _STATUS_FOR_CODE.get(fault.code, default) if fault.code is not None else default
    code = fault.code if fault.code is not None else _CODE_FOR_STATUS.get(status, 100)
    title = fault.title or _TITLES.get(code, f"Error {code}")
    details = fault.details or wb.error(code, title)["error_data"]["details"]
    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
    return GraphError(status, code, f"(#{code}) {title}", details=details, headers=headers)


class _DropConnection(ASGIResponse):
    """Starts an answer and returns without its body: the server then closes the connection."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"128")],
            }
        )


class _Dropped(Response[None]):
    def __init__(self) -> None:
        super().__init__(None)

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        return _DropConnection()


# --- media ----------------------------------------------------------------------------------------


class _Media(NamedTuple):
    data: bytes
    mime_type: str


# A real 2x2 JPEG in WhatsApp green, encoded with libjpeg (633 bytes).
_JPEG: Final = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAUDBAQEAwUEBAQFBQUGBwwIBwcHBw8LCwkMEQ8SEhEPERETFhwXExQaFRERGCEYGh0d"
    "Hx8fExciJCIeJBweHx7/2wBDAQUFBQcGBw4ICA4eFBEUHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4e"
    "Hh4eHh4eHh7/wAARCAACAAIDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUF"
    "BAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVW"
    "V1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi"
    "4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAEC"
    "AxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVm"
    "Z2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq"
    "8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDeooor5c/Aj//Z"
)
_PREFIX_MIME: Final = (
    ("img", "image/jpeg"),
    ("vid", "video/mp4"),
    ("aud", "audio/ogg"),
    ("doc", "application/pdf"),
    ("stk", "image/webp"),
)
_TYPE_PREFIX: Final = {"image": "img", "video": "vid", "audio": "aud", "document": "doc", "sticker": "stk"}


def media_content(media_id: str) -> tuple[bytes, str] | None:
    """The bytes and MIME type the sandbox serves for a media id it did not receive as upload.

    Returns ``None`` for ids that do not exist by convention (they start with ``missing``).
    """
    if media_id.startswith("missing"):
        return None
    if media_id.startswith("img"):
        # A JPEG comment segment right after the JFIF header makes the bytes unique per id.
        comment = f"zaphub sandbox {media_id}".encode()[:200]
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        return _JPEG[:20] + segment + _JPEG[20:], "image/jpeg"
    mime = next((m for p, m in _PREFIX_MIME if media_id.startswith(p)), "application/octet-stream")
    return hashlib.shake_256(f"zaphub sandbox {media_id}".encode()).digest(1024), mime


def _new_media_id(kind: str) -> str:
    # Meta's ids are long decimals; the prefix tells the sandbox what bytes to serve.
    return _TYPE_PREFIX.get(kind, "") + str(int.from_bytes(os.urandom(7), "big"))


# --- inbound messages (shared with ``zaphub simulate``) -------------------------------------------

INBOUND_TYPES: Final = (
    "text",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "contacts",
    "reaction",
    "edit",
    "revoke",
    "button",
    "interactive",
)
"""The inbound message types :func:`inbound_message` builds."""


def inbound_message(
    kind: str = "text",
    text: str | None = None,
    *,
    from_: str = wb.DEFAULT_FROM,
    media_id: str | None = None,
    media_url: str | None = None,
    reply_to: str | None = None,
    wamid: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """One inbound message object as Meta sends it, built with :mod:`webhook_builders`.

    ``text`` is what the user typed: the body of a text, the caption of an image, video or
    document, the place name of a location, the emoji of a reaction, the new text of an edit,
    the title of a tapped button. A reaction, an edit and a revoke (deletion) change the
    message ``reply_to`` names (required for an edit or a revoke). Media get an id the sandbox
    serves (and its real ``sha256``) unless ``media_id`` is given. Raises ``ValueError`` for a
    kind outside :data:`INBOUND_TYPES`, or an edit or revoke without ``reply_to``.

    Example:
        >>> msg = inbound_message("image", "Segue a foto", from_="5511988887777")
    """
    opts: wb.MessageOptions = {"from_": from_}
    if wamid is not None:
        opts["wamid"] = wamid
    if timestamp is not None:
        opts["timestamp"] = timestamp
    if reply_to is not None and kind not in ("reaction", "edit", "revoke"):
        opts["context"] = wb.reply_to(reply_to)
    if kind in _MEDIA_TYPES:
        media_id = media_id or _new_media_id(kind)
        match kind:
            case "image":
                msg = wb.image(caption=text, media_id=media_id, url=media_url, **opts)
            case "video":
                msg = wb.video(caption=text, media_id=media_id, url=media_url, **opts)
            case "document":
                msg = wb.document(caption=text, media_id=media_id, url=media_url, **opts)
            case "audio":
                msg = wb.audio(media_id=media_id, url=media_url, **opts)
            case _:
                msg = wb.sticker(media_id=media_id, url=media_url, **opts)
        content = media_content(media_id)
        if content is not None:  # so that zaphub can check what it downloads from the sandbox
            msg[kind]["sha256"] = base64.b64encode(hashlib.sha256(content[0]).digest()).decode()
        return msg
    match kind:
        case "text":
            return wb.text(text or "Olá!", **opts)
        case "location":
            return wb.location(name=text, **opts)
        case "contacts":
            return wb.contacts([wb.contact_card(text)] if text else None, **opts)
        case "reaction":
            target = reply_to or wb.new_wamid(wb.DEFAULT_DISPLAY_PHONE_NUMBER)
            return wb.reaction(target, "👍" if text is None else text, **opts)
        case "edit" | "revoke":
            if reply_to is None:
                raise ValueError(
                    f"an {kind} names the customer's message it changes: give its wamid (--reply-to)"
                )
            if kind == "edit":
                return wb.edit(reply_to, text or "Texto corrigido", **opts)
            return wb.revoke(reply_to, **opts)
        case "button":
            return wb.button(text or "Quero saber mais", **opts)
        case "interactive":
            return wb.button_reply(text or "Sim, confirmar", **opts)
    raise ValueError(f"unknown inbound message type {kind!r}: use one of {', '.join(INBOUND_TYPES)}")


# --- the sandbox ----------------------------------------------------------------------------------

_MAX_RECORDED: Final = 1000
_MAX_UPLOADS: Final = 64
_MAX_UPLOAD_BYTES: Final = 64 * 1024 * 1024
_MAX_UPLOAD_BODY: Final = 17 * 1024 * 1024
_MAX_CONCURRENT_DELIVERIES: Final = 64
_UPLOAD_MIME: Final = re.compile(
    r"image/(jpeg|png|webp)|video/(mp4|3gpp)|audio/(aac|amr|mpeg|mp4|ogg)(;.*)?|text/plain|application/.+"
)
_REQUEST_DECODER: Final = msgspec.json.Decoder()
_FAULTS_DECODER: Final = msgspec.json.Decoder(list[Fault] | Fault)
_INBOUND_DECODER: Final = msgspec.json.Decoder(InboundSpec)
_STATUSES_DECODER: Final = msgspec.json.Decoder(list[StatusSpec] | StatusSpec)


class Sandbox:
    """The sandbox's state and routes; mount :attr:`router` and run :meth:`lifespan` with it.

    Example (inside another Litestar app)::

        sandbox = Sandbox(SandboxOptions(app_secret="s", prefix="/_sandbox/graph",
                                         webhook_url="http://127.0.0.1:3000/meta-whatsapp/webhook"))
        app = Litestar([sandbox.router, ...], lifespan=[sandbox.lifespan])

    Args:
        options: How it behaves.
        http_client: Client used to deliver webhooks; default one it creates and closes itself.
    """

    def __init__(self, options: SandboxOptions, *, http_client: httpx.AsyncClient | None = None) -> None:
        self.options = options
        self._http = http_client
        self._owns_http = http_client is None
        self._requests: deque[dict[str, Any]] = deque(maxlen=_MAX_RECORDED)
        self._deliveries: deque[dict[str, Any]] = deque(maxlen=_MAX_RECORDED)
        self._faults: deque[Fault] = deque(maxlen=_MAX_RECORDED)
        self._uploads: OrderedDict[str, _Media] = OrderedDict()
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(_MAX_CONCURRENT_DELIVERIES)
        self.router = self._build_router()

    # lifecycle

    async def start(self) -> None:
        """Create the HTTP client that delivers webhooks (also done lazily on first use)."""
        self._client()

    async def stop(self) -> None:
        """Cancel pending webhook deliveries and close the HTTP client it created."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    @asynccontextmanager
    async def lifespan(self, app: Litestar | None = None) -> AsyncIterator[None]:
        """Litestar lifespan: :meth:`start` on startup, :meth:`stop` on shutdown."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        return self._http

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # who may use the controls

    def _control_guard(self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        options = self.options
        if not options.controls_enabled:
            raise PermissionDeniedException(
                detail="the sandbox controls are off: set WHATSAPP_SANDBOX_TOKEN (plugins.whatsapp."
                "sandbox_token) and send it in the X-Sandbox-Token header"
            )
        if options.control_loopback_only and not _is_local(connection):
            raise PermissionDeniedException(
                detail="the sandbox controls answer only clients on this machine, not through a proxy "
                "(plugins.whatsapp.sandbox_remote_control: true allows others)"
            )
        token = options.control_token
        if token is not None:
            given = connection.headers.get("x-sandbox-token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise NotAuthorizedException(
                    detail=f"{'wrong' if given else 'missing'} X-Sandbox-Token header: send the sandbox "
                    "token (WHATSAPP_SANDBOX_TOKEN)"
                )

    # helpers of the Graph endpoints

    def _record(self, request: AnyRequest, body: Any, form: Any = None) -> None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        self._requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": headers,
                "json": body,
                "form": form,
                "time": time.time(),
            }
        )

    def _check(self, request: AnyRequest, version: str, phone_number_id: str | None) -> None:
        if not _VERSION.fullmatch(version):
            raise _invalid(f"Unknown Graph API version {version!r}: use one like v25.0.")
        token = self.options.access_token
        if token is not None:
            header = request.headers.get("authorization", "")
            if not header:
                raise GraphError(
                    401, 190, "An active access token must be used to query information about the app."
                )
            if header != f"Bearer {token}":
                raise GraphError(401, 190, "Invalid OAuth access token - Cannot parse access token")
        if phone_number_id is not None and phone_number_id != self.options.phone_number_id:
            raise _unknown_object(phone_number_id, request.method.lower())

    def _take_fault(self) -> Fault | None:
        if not self._faults:
            return None
        fault = self._faults[0]
        if fault.count <= 1:
            self._faults.popleft()
            return fault
        fault.count -= 1
        return msgspec.structs.replace(fault, count=1)

    def _media(self, media_id: str) -> _Media | None:
        if media_id in self._deleted:
            return None
        if media_id in self._uploads:
            return self._uploads[media_id]
        content = media_content(media_id)
        return _Media(*content) if content is not None else None

    def _store_upload(self, media_id: str, media: _Media) -> None:
        self._uploads[media_id] = media
        size = sum(len(m.data) for m in self._uploads.values())
        while len(self._uploads) > _MAX_UPLOADS or size > _MAX_UPLOAD_BYTES:
            _, evicted = self._uploads.popitem(last=False)
            size -= len(evicted.data)

    def _envelope(self, **kwargs: Any) -> dict[str, Any]:
        return wb.envelope(
            phone_number_id=self.options.phone_number_id,
            display_phone_number=self.options.display_phone_number,
            waba_id=self.options.waba_id,
            **kwargs,
        )

    # webhook delivery

    async def deliver(self, payload: Any, *, what: Mapping[str, Any], attempts: int = 1) -> dict[str, Any]:
        """POST a signed webhook to ``webhook_url``, retrying on non-200; returns what happened.

        Args:
            payload: The webhook body (from :func:`wb.envelope`).
            what: Describes it in :attr:`deliveries` (``{"kind": "status", "wamid": …}``).
            attempts: Tries before giving up, backing off ``delivery_backoff * 2**n`` between them.

        Returns:
            ``{"url", "attempts", "status_code", "response", "error", …what}``.
        """
        url = self.options.webhook_url
        body = wb.encode(payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua",
            "X-Hub-Signature-256": wb.sign(body, self.options.app_secret),
        }
        result: dict[str, Any] = {**what, "url": url, "attempts": 0, "status_code": None}
        result.update(response=None, error=None if url else "webhook_url is not set")
        for attempt in range(1, max(1, attempts) + 1):
            if url is None:
                break
            result["attempts"] = attempt
            try:
                async with self._slots:
                    answer = await self._client().post(url, content=body, headers=headers)
                result.update(status_code=answer.status_code, response=answer.text[:2000], error=None)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError as exc:
                result.update(status_code=None, response=None, error=f"{type(exc).__name__}: {exc}")
            if attempt < attempts:
                await asyncio.sleep(self.options.delivery_backoff * 2 ** (attempt - 1))
        result["time"] = time.time()
        self._deliveries.append(result)
        if result["status_code"] != 200:
            logger.warning(
                "sandbox: webhook %s to %s failed after %d attempts: %s",
                dict(what),
                url,
                result["attempts"],
                result["error"] or f"HTTP {result['status_code']}",
            )
        return result

    async def _deliver_statuses(
        self, wamid: str, recipient: str, failure: int | None, category: str, callback_data: str | None
    ) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        delays = self.options.status_delays
        plan = (
            [("failed", delays[0])]
            if failure
            else list(zip(("sent", "delivered", "read"), delays, strict=True))
        )
        # One after the other, so that they arrive in order unless a retry holds one back.
        for name, offset in plan:
            await asyncio.sleep(max(0.0, start + offset - loop.time()))
            st = wb.status(
                wamid,
                name,
                recipient_id=recipient,
                error_code=failure,
                category=category,
                biz_opaque_callback_data=callback_data,
            )
            if "pricing" in st and category == "service":
                st["pricing"]["type"] = "free_customer_service"
            await self.deliver(
                self._envelope(statuses=[st]),
                what={"kind": "status", "wamid": wamid, "status": name},
                attempts=self.options.delivery_attempts,
            )

    async def _hang(self, request: AnyRequest, seconds: float) -> bool:
        """Wait ``seconds`` or until the client hangs up; True when it hung up."""

        async def hung_up() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(hung_up())
        try:
            done, _ = await asyncio.wait({watcher}, timeout=seconds)
        finally:
            watcher.cancel()
        return bool(done)

    # endpoint bodies

    async def _send(self, request: AnyRequest, version: str, phone_number_id: str) -> Response[Any]:
        raw = await request.body()
        try:
            body = _REQUEST_DECODER.decode(raw)
        except msgspec.DecodeError:
            body = None
        self._record(request, body)
        self._check(request, version, phone_number_id)
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object.")
        product = body.get("messaging_product")
        if product is None:
            raise _invalid("The parameter messaging_product is required.")
        if product != "whatsapp":
            raise _invalid("Param messaging_product must be 'whatsapp'.")
        if "status" in body and "type" not in body:
            _validate_mark_read(body)
            return Response({"success": True})
        to, kind = _validate_send(body)
        fault = self._take_fault()
        if fault is not None:
            if fault.delay and await self._hang(request, fault.delay):
                return _Dropped()  # nobody is listening any more; the send is lost
            if fault.drop:
                return _Dropped()
            answer = (fault.status, fault.code, fault.retry_after, fault.title, fault.details)
            if any(part is not None for part in answer):
                raise _fault_error(fault)
        wa_id = re.sub(r"\D", "", to) or to
        wamid = wb.new_wamid(wa_id)
        failure = 131026 if wa_id.endswith("0000") else None
        if failure is None and wa_id.endswith("0047") and kind != "template":
            failure = 131047
        if self.options.webhook_url:
            category = "utility" if kind == "template" else "service"
            self._spawn(
                self._deliver_statuses(wamid, wa_id, failure, category, body.get("biz_opaque_callback_data"))
            )
        sent: dict[str, Any] = {"id": wamid}
        if kind == "template":
            sent["message_status"] = "accepted"
        return Response(
            {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": wa_id}], "messages": [sent]}
        )

    async def _object_info(self, request: AnyRequest, version: str, object_id: str) -> Response[Any]:
        self._record(request, None)
        self._check(request, version, None)
        if object_id == self.options.phone_number_id:
            number = self.options.display_phone_number
            return Response(
                {
                    "verified_name": "zaphub sandbox",
                    "code_verification_status": "VERIFIED",
                    "display_phone_number": f"+{number}",
                    "quality_rating": "GREEN",
                    "platform_type": "CLOUD_API",
                    "throughput": {"level": "STANDARD"},
                    "id": object_id,
                }
            )
        media = self._media(object_id)
        if media is None:
            raise _unknown_object(object_id, "get")
        url = f"{request.url.scheme}://{request.url.netloc}{self.options.prefix}/download/{object_id}"
        return Response(
            {
                "messaging_product": "whatsapp",
                "url": url,
                "mime_type": media.mime_type,
                "sha256": hashlib.sha256(media.data).hexdigest(),
                "file_size": len(media.data),
                "id": object_id,
            }
        )

    async def _upload(self, request: AnyRequest, version: str, phone_number_id: str) -> Response[Any]:
        form = await request.form()
        file = form.get("file")
        summary = {
            key: (
                {"filename": value.filename, "content_type": value.content_type}
                if isinstance(value, UploadFile)
                else value
            )
            for key, value in form.items()
        }
        self._record(request, None, summary)
        self._check(request, version, phone_number_id)
        if form.get("messaging_product") != "whatsapp":
            raise _invalid("The parameter messaging_product is required and must be 'whatsapp'.")
        if not isinstance(file, UploadFile):
            raise _invalid("The parameter file is required.")
        mime = str(form.get("type") or file.content_type or "").strip()
        if not _UPLOAD_MIME.fullmatch(mime):
            title = wb.ERROR_TITLES[131053]
            raise GraphError(400, 131053, f"(#131053) {title}", details=f"Unsupported file type {mime!r}.")
        data = await file.read()
        if not data:
            raise _invalid("The parameter file must not be empty.")
        media_id = _new_media_id("")
        self._store_upload(media_id, _Media(data, mime))
        return Response({"id": media_id})

    # routes

    def _build_router(self) -> Router:
        sandbox = self
        controls: list[Guard] = [self._control_guard]

        @post("/{version:str}/{phone_number_id:str}/messages", status_code=200)
        async def send_message(
            request: AnyRequest, version: FromPath[str], phone_number_id: FromPath[str]
        ) -> Response[Any]:
            return await sandbox._send(request, version, phone_number_id)

        @get("/{version:str}/{object_id:str}")
        async def object_info(
            request: AnyRequest, version: FromPath[str], object_id: FromPath[str]
        ) -> Response[Any]:
            return await sandbox._object_info(request, version, object_id)

        @delete("/{version:str}/{media_id:str}", status_code=200)
        async def delete_media(
            request: AnyRequest, version: FromPath[str], media_id: FromPath[str]
        ) -> Response[Any]:
            sandbox._record(request, None)
            sandbox._check(request, version, None)
            if sandbox._media(media_id) is None:
                raise _unknown_object(media_id, "delete")
            sandbox._uploads.pop(media_id, None)
            sandbox._deleted[media_id] = None
            while len(sandbox._deleted) > _MAX_RECORDED:
                sandbox._deleted.popitem(last=False)
            return Response({"success": True})

        @post(
            "/{version:str}/{phone_number_id:str}/media",
            status_code=200,
            request_max_body_size=_MAX_UPLOAD_BODY,
        )
        async def upload_media(
            request: AnyRequest, version: FromPath[str], phone_number_id: FromPath[str]
        ) -> Response[Any]:
            return await sandbox._upload(request, version, phone_number_id)

        @get("/download/{media_id:str}")
        async def download(request: AnyRequest, media_id: FromPath[str]) -> Response[Any]:
            sandbox._record(request, None)
            header = request.headers.get("authorization", "")
            token = sandbox.options.access_token
            if not header.startswith("Bearer ") or (token is not None and header != f"Bearer {token}"):
                raise GraphError(401, 190, "Invalid OAuth access token - Cannot parse access token")
            media = sandbox._media(media_id)
            if media is None:
                raise HTTPException(status_code=404, detail=f"media {media_id!r} not found")
            return Response(media.data, media_type=media.mime_type)

        @get("/_sandbox/requests", guards=controls)
        async def list_requests() -> list[dict[str, Any]]:
            return list(sandbox._requests)

        @delete("/_sandbox/requests", status_code=200, guards=controls)
        async def clear_requests() -> dict[str, int]:
            cleared = len(sandbox._requests)
            sandbox._requests.clear()
            return {"cleared": cleared}

        @get("/_sandbox/faults", guards=controls)
        async def list_faults() -> list[Fault]:
            return list(sandbox._faults)

        @post("/_sandbox/faults", status_code=200, guards=controls)
        async def add_faults(request: AnyRequest) -> list[Fault]:
            try:
                faults = _FAULTS_DECODER.decode(await request.body())
            except (msgspec.DecodeError, ValueError) as exc:
                raise ValidationException(detail=f"invalid fault: {exc}") from exc
            sandbox._faults.extend(faults if isinstance(faults, list) else [faults])
            return list(sandbox._faults)

        @delete("/_sandbox/faults", status_code=200, guards=controls)
        async def clear_faults() -> dict[str, int]:
            cleared = len(sandbox._faults)
            sandbox._faults.clear()
            return {"cleared": cleared}

        @get("/_sandbox/deliveries", guards=controls)
        async def list_deliveries() -> list[dict[str, Any]]:
            return list(sandbox._deliveries)

        @delete("/_sandbox/deliveries", status_code=200, guards=controls)
        async def clear_deliveries() -> dict[str, int]:
            cleared = len(sandbox._deliveries)
            sandbox._deliveries.clear()
            return {"cleared": cleared}

        @post("/_sandbox/inbound", status_code=200, guards=controls)
        async def inbound(request: AnyRequest) -> dict[str, Any]:
            try:
                spec = _INBOUND_DECODER.decode(await request.body())
                media_id = spec.media_id or (_new_media_id(spec.type) if spec.type in _TYPE_PREFIX else None)
                base = f"{request.url.scheme}://{request.url.netloc}{sandbox.options.prefix}"
                msg = inbound_message(
                    spec.type,
                    spec.text,
                    from_=spec.from_,
                    media_id=media_id,
                    media_url=f"{base}/download/{media_id}" if media_id else None,
                    reply_to=spec.reply_to,
                    wamid=spec.wamid,
                    timestamp=spec.timestamp,
                )
            except (msgspec.DecodeError, ValueError) as exc:
                raise ValidationException(detail=str(exc)) from exc
            sandbox._require_webhook_url()
            contact = wb.contact(spec.from_, spec.name)
            payload = sandbox._envelope(messages=[msg], contacts=[contact])
            result = await sandbox.deliver(payload, what={"kind": "inbound", "wamid": msg["id"]})
            return {"wamid": msg["id"], "message": msg, "delivery": result}

        @post("/_sandbox/statuses", status_code=200, guards=controls)
        async def statuses(request: AnyRequest) -> dict[str, Any]:
            try:
                specs = _STATUSES_DECODER.decode(await request.body())
            except msgspec.DecodeError as exc:
                raise ValidationException(detail=str(exc)) from exc
            sandbox._require_webhook_url()
            items = [
                wb.status(
                    s.wamid,
                    s.status,
                    timestamp=s.timestamp,
                    recipient_id=s.recipient_id,
                    error_code=s.error_code,
                    error_title=s.error_title,
                    biz_opaque_callback_data=s.biz_opaque_callback_data,
                )
                for s in (specs if isinstance(specs, list) else [specs])
            ]
            what = {"kind": "status", "wamid": items[0]["id"] if items else None, "status": "custom"}
            result = await sandbox.deliver(sandbox._envelope(statuses=items), what=what)
            return {"statuses": items, "delivery": result}

        def graph_error(_: AnyRequest, exc: GraphError) -> Response[Any]:
            return exc.to_response()

        handlers: list[Any] = [
            send_message,
            object_info,
            delete_media,
            upload_media,
            download,
            list_requests,
            clear_requests,
            list_faults,
            add_faults,
            clear_faults,
            list_deliveries,
            clear_deliveries,
            inbound,
            statuses,
        ]
        errors: dict[type[Exception], Callable[[AnyRequest, GraphError], Response[Any]]]
        errors = {GraphError: graph_error}
        return Router(
            self.options.prefix or "/",
            route_handlers=handlers,
            exception_handlers=errors,  # type: ignore[arg-type]  # Litestar types handlers loosely
            include_in_schema=False,
        )

    def _require_webhook_url(self) -> None:
        if not self.options.webhook_url:
            raise HTTPException(
                status_code=409,
                detail="webhook_url is not set: start the sandbox with --webhook-url "
                "http://127.0.0.1:3000/meta-whatsapp/webhook",
            )


_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def _is_local(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """The peer is this machine and no proxy relayed the request (a local proxy hides the client)."""
    if any(name in connection.headers for name in _FORWARDING_HEADERS):
        return False
    host = connection.client.host if connection.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_sandbox_app(options: SandboxOptions, *, http_client: httpx.AsyncClient | None = None) -> Litestar:
    """A standalone Litestar app serving the sandbox (what ``zaphub sandbox`` runs).

    Args:
        options: How the sandbox behaves.
        http_client: Client used to deliver webhooks (default: its own).
    """
    sandbox = Sandbox(options, http_client=http_client)
    return Litestar(route_handlers=[sandbox.router], lifespan=[sandbox.lifespan], openapi_config=None)
