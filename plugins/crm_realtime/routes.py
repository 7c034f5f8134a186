"""The CRM REST API under ``/api`` and the Socket.IO mount at ``/socket.io``.

Every ``/api`` endpoint takes the same JWT as Socket.IO in ``Authorization: Bearer …`` (declared in
OpenAPI as the ``bearerAuth`` scheme) and applies the token's scope: lists are filtered to the
allowed business numbers, single resources outside it answer ``403 forbidden``. Errors use the
host's envelope ``{"error": {"code", "message"}}``. Browsers on the origins of
``cors_allowed_origins`` may call it cross-origin (:class:`ApiCors`).
"""

# No `from __future__ import annotations`: Litestar reads the handlers' annotations at runtime, and
# some of them (page-size bounds) close over this host's settings.
import base64
import binascii
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

from litestar import Response, Router, get, post
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.handlers import asgi
from litestar.middleware import ASGIMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import SecurityRequirement
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.status_codes import HTTP_202_ACCEPTED
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send
from litestar.types import Message as ASGIMessage

from core.errors import ForbiddenError, NotFoundError, UnauthorizedError, ValidationFailed
from core.host import Host, MediaStream
from core.models import Conversation, Message
from core.stash import StashKey
from plugins.crm_realtime.auth import Agent, AuthError, TokenVerifier
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.crm_realtime.models import (
    ApiContact,
    ApiConversation,
    ApiMessageDetail,
    ConversationPage,
    ErrorBody,
    MessagePage,
    SendAccepted,
    SendBody,
    api_contact,
    api_conversation,
    api_message,
    api_message_detail,
    send_content,
)
from plugins.crm_realtime.realtime import MAX_ID, Realtime

__all__ = ["REALTIME", "ApiCors", "api_router", "socketio_mount"]

REALTIME: StashKey[Realtime] = StashKey("crm_realtime.realtime")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Every /api operation needs the CRM JWT; core/app.py declares the `bearerAuth` scheme.
_SECURITY: list[SecurityRequirement] = [{"bearerAuth": []}]


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    text = {
        400: "Malformed parameters or body (validation_error)",
        401: "Missing, bad or expired bearer token (unauthorized)",
        403: "The token's scope does not include the resource's business number (forbidden)",
        404: "No such resource (not_found)",
        409: "Idempotency-Key reused with a different body (conflict)",
        422: "Outside the 24-hour window (window_closed) or refused by a plugin (send_vetoed)",
        502: "Meta could not provide the media (media_unavailable)",
    }
    # 400 always: Litestar would otherwise document its own validation body, which the host's
    # error envelope replaces.
    return {
        code: ResponseSpec(ErrorBody, description=text[code], generate_examples=False)
        for code in (400, 401, *codes)
    }


def _check_id(value: int, what: str) -> int:
    if not 0 < value <= MAX_ID:
        raise NotFoundError(f"{what} {value} does not exist")
    return value


def _encode_cursor(conversation: Conversation) -> str:
    ts = conversation.last_message_at or conversation.created_at
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    micros = (ts - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}:{conversation.id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, _, ident = raw.partition(":")
        return _EPOCH + timedelta(microseconds=int(micros)), int(ident)
    except (ValueError, binascii.Error, OverflowError):
        raise ValidationFailed(
            f"before: {cursor[:40]!r} is not a cursor; pass the next_before value of the previous page"
        ) from None


def socketio_mount(host: Host) -> Any:
    """The ASGI mount serving Socket.IO at ``/socket.io/`` on the app's own port."""

    @asgi("/socket.io", is_mount=True, copy_scope=True)
    async def socketio_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        # Built in on_startup; the server accepts no request before startup has finished.
        await host.stash[REALTIME].asgi(scope, receive, send)

    return socketio_endpoint


class ApiCors(ASGIMiddleware):
    """CORS for the ``/api`` router, from the same ``cors_allowed_origins`` as Socket.IO.

    Installed on the router only, so ``/socket.io`` (python-socketio answers its own CORS) and the
    Meta webhook never see it. A preflight (``OPTIONS`` with ``Origin`` and
    ``Access-Control-Request-Method``) from an allowed origin is answered here, ``204``, before auth;
    from any other origin it gets ``403 forbidden`` in the error envelope, without CORS headers.
    Other responses, error envelopes included, carry ``Access-Control-Allow-Origin`` for an allowed
    origin (``*`` when the list holds ``"*"``, as Socket.IO reads it). Paths the router does not
    have (``404``) or methods it does not serve (``405``) are answered before any route middleware,
    so they have no CORS headers.

    Args:
        allowed_origins: exact origins (``https://crm.example.com``), or ``["*"]`` for any.
    """

    scopes = (ScopeType.HTTP,)
    allow_methods = "GET, POST, OPTIONS"
    allow_headers = "Authorization, Content-Type, Idempotency-Key"
    expose_headers = "Idempotent-Replayed, Content-Disposition"
    max_age_seconds = 600

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        origins = frozenset(allowed_origins)
        self.any_origin = "*" in origins
        self.origins = origins
        preflight = {
            "Access-Control-Allow-Methods": self.allow_methods,
            "Access-Control-Allow-Headers": self.allow_headers,
            "Access-Control-Max-Age": str(self.max_age_seconds),
        }
        self._preflight = [(k.lower().encode(), v.encode()) for k, v in preflight.items()]

    def allows(self, origin: str) -> bool:
        """Whether a browser on ``origin`` may call the API."""
        return self.any_origin or origin in self.origins

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Answer a preflight, or add the CORS headers to the response of the route."""
        headers = Headers.from_scope(scope)
        origin = headers.get("origin")
        allowed = origin is not None and self.allows(origin)
        method = cast("HTTPScope", scope)["method"]  # `scopes` lets only HTTP through
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            if not allowed:
                # The host's exception handler renders the envelope; browsers show it in devtools.
                raise ForbiddenError(
                    f"origin {origin} is not allowed: add it to plugins.crm_realtime.cors_allowed_origins"
                )
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [*self._origin_headers(origin), *self._preflight],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        async def send_with_cors(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                out = MutableScopeHeaders.from_message(message)
                if not self.any_origin:
                    # The answer depends on Origin even when it carries no CORS header: caches must know.
                    out.extend_header_value("Vary", "Origin")
                if allowed and origin is not None:
                    out["Access-Control-Allow-Origin"] = "*" if self.any_origin else origin
                    out["Access-Control-Expose-Headers"] = self.expose_headers
            await send(message)

        await next_app(scope, receive, send_with_cors)

    def _origin_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


def api_router(host: Host, settings: CrmRealtimeSettings, verifier: TokenVerifier) -> Router:
    """The ``/api`` router, bound to one host."""
    storage = host.storage
    max_page = settings.max_page_size

    async def authenticate(
        # Out of the schema: OpenAPI documents the header as the `bearerAuth` security scheme.
        authorization: Annotated[
            str | None, HeaderParameter(name="Authorization", include_in_schema=False)
        ] = None,
    ) -> Agent:
        if not authorization:
            raise UnauthorizedError(
                "missing bearer token: send Authorization: Bearer <JWT> (try `zaphub token --sub you`)"
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <JWT>'")
        try:
            return verifier.verify(token)
        except AuthError as exc:
            raise UnauthorizedError(exc.reason) from None

    async def conversation_for(agent: Agent, conversation_id: int) -> Conversation:
        conversation = await storage.get_conversation(_check_id(conversation_id, "conversation"))
        if conversation is None:
            raise NotFoundError(f"conversation {conversation_id} does not exist")
        agent.require(conversation.phone_number_id, f"conversation {conversation_id}")
        return conversation

    async def message_for(agent: Agent, message_id: int) -> Message:
        message = await storage.get_message(_check_id(message_id, "message"))
        if message is None:
            raise NotFoundError(f"message {message_id} does not exist")
        agent.require(message.phone_number_id, f"message {message_id}")
        return message

    async def with_details(items: list[Conversation]) -> list[ApiConversation]:
        if not items:
            return []
        last_ids = {c.id: c.last_message_id for c in items if c.last_message_id is not None}
        contacts = await storage.get_contacts(c.contact_id for c in items)
        last = await storage.get_messages(last_ids.values())
        out = []
        for c in items:
            message_id = last_ids.get(c.id)
            out.append(
                api_conversation(
                    c, contacts[c.contact_id], last.get(message_id) if message_id else None, host.public_url
                )
            )
        return out

    @get(
        "/conversations",
        summary="List conversations, newest activity first",
        description="Each item has its contact and last message. Page with `before=<next_before>`.",
        responses=_errors(),
    )
    async def list_conversations(
        agent: NamedDependency[Agent],
        limit: Annotated[int, QueryParameter(ge=1, le=max_page, description="Page size")] = 50,
        before: Annotated[
            str | None, QueryParameter(description="Cursor: the `next_before` of the previous page")
        ] = None,
    ) -> ConversationPage:
        cursor = _decode_cursor(before) if before else None
        scope = sorted(agent.scope) if agent.scope is not None else None
        page = await storage.list_conversations(limit=limit + 1, before=cursor, phone_number_ids=scope)
        more = len(page) > limit
        page = page[:limit]
        return ConversationPage(
            conversations=await with_details(page),
            next_before=_encode_cursor(page[-1]) if more and page else None,
        )

    @get("/conversations/{conversation_id:int}", summary="One conversation", responses=_errors(403, 404))
    async def get_conversation(
        agent: NamedDependency[Agent], conversation_id: FromPath[int]
    ) -> ApiConversation:
        conversation = await conversation_for(agent, conversation_id)
        return (await with_details([conversation]))[0]

    @get(
        "/conversations/{conversation_id:int}/messages",
        summary="Messages of a conversation, oldest first",
        description=(
            "The resync cursor: after a reconnect, ask for `after_id=<last id you saw>` and repeat with "
            "`next_after_id` until it is null."
        ),
        responses=_errors(403, 404),
    )
    async def list_messages(
        agent: NamedDependency[Agent],
        conversation_id: FromPath[int],
        after_id: Annotated[
            int, QueryParameter(ge=0, le=MAX_ID, description="Only messages with a greater id")
        ] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=max_page, description="Page size")] = 100,
    ) -> MessagePage:
        await conversation_for(agent, conversation_id)
        page = await storage.list_messages(conversation_id, after_id=after_id, limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return MessagePage(
            messages=[api_message(m, host.public_url) for m in page],
            next_after_id=page[-1].id if more else None,
        )

    @post(
        "/conversations/{conversation_id:int}/messages",
        status_code=HTTP_202_ACCEPTED,
        summary="Send a message",
        description=(
            "Stored in the outbox, then sent; `whatsapp:message_sent` and `whatsapp:message_status` "
            "follow over Socket.IO. A repeated `Idempotency-Key` (per token `sub`) answers the first "
            "message again without sending twice."
        ),
        responses=_errors(403, 404, 409, 422),
    )
    async def send_message(
        agent: NamedDependency[Agent],
        conversation_id: FromPath[int],
        data: JSONBody[SendBody],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                max_length=256,
                description="Any unique string (a UUID); retries with the same key and body send once",
            ),
        ] = None,
    ) -> Response[SendAccepted]:
        conversation = await conversation_for(agent, conversation_id)
        context_wamid = None
        if data.reply_to is not None:
            quoted = await storage.get_message(_check_id(data.reply_to, "message"))
            if quoted is None or quoted.conversation_id != conversation.id:
                raise ValidationFailed(
                    f"reply_to: message {data.reply_to} is not in conversation {conversation.id}"
                )
            if quoted.wamid is None:
                raise ValidationFailed(f"reply_to: message {data.reply_to} has not reached WhatsApp yet")
            context_wamid = quoted.wamid
        message, created = await host.sender.send(
            conversation.id,
            str(data.__struct_config__.tag),  # the variant's "type"
            send_content(data),
            source="api",
            context_wamid=context_wamid,
            idempotency_key=idempotency_key or None,
            idempotency_scope=f"crm_realtime:{agent.sub}",
        )
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return Response(
            SendAccepted(message_id=message.id, conversation_id=conversation.id, status="queued"),
            status_code=HTTP_202_ACCEPTED,
            headers=headers,
        )

    @get(
        "/messages/{message_id:int}",
        summary="One message with its status history",
        responses=_errors(403, 404),
    )
    async def get_message(agent: NamedDependency[Agent], message_id: FromPath[int]) -> ApiMessageDetail:
        message = await message_for(agent, message_id)
        history = await storage.status_history(message.id)
        return api_message_detail(message, history, host.public_url)

    @get(
        "/messages/{message_id:int}/media",
        summary="The media bytes of an inbound media message",
        description="Fetched from Meta and streamed; the Content-Type is the media's.",
        responses={
            200: ResponseSpec(
                bytes,
                description="The media bytes",
                media_type="application/octet-stream",
                generate_examples=False,
            ),
            **_errors(403, 404, 502),
        },
    )
    async def get_media(agent: NamedDependency[Agent], message_id: FromPath[int]) -> Stream:
        message = await message_for(agent, message_id)
        if message.media_id is None or not message.is_inbound:
            raise NotFoundError(f"message {message_id} has no media to download (type {message.type})")
        media: MediaStream | None = await host.hooks.first("media_for_message", host=host, message=message)
        if media is None:
            raise NotFoundError(f"no transport can fetch the media of message {message_id}")
        headers: dict[str, str] = {}
        if media.size is not None:
            headers["Content-Length"] = str(media.size)
        if media.filename:
            headers["Content-Disposition"] = f'inline; filename="{media.filename.replace(chr(34), "")}"'
        return Stream(media.chunks, media_type=media.mime_type, headers=headers)

    @get("/contacts/{contact_id:int}", summary="One contact", responses=_errors(403, 404))
    async def get_contact(agent: NamedDependency[Agent], contact_id: FromPath[int]) -> ApiContact:
        contact = await storage.get_contact(_check_id(contact_id, "contact"))
        if contact is None:
            raise NotFoundError(f"contact {contact_id} does not exist")
        if agent.scope is not None:
            numbers = await storage.contact_phone_number_ids(contact.id)
            if not numbers & agent.scope:
                raise ForbiddenError(
                    f"contact {contact_id} has no conversation with a business number your token's "
                    "scope includes"
                )
        return api_contact(contact)

    return Router(
        "/api",
        route_handlers=[
            list_conversations,
            get_conversation,
            list_messages,
            send_message,
            get_message,
            get_media,
            get_contact,
        ],
        dependencies={"agent": Provide(authenticate)},
        # None or []: no CORS here (same origin only, or a reverse proxy answers it), as for Socket.IO.
        middleware=[ApiCors(settings.cors_allowed_origins)] if settings.cors_allowed_origins else [],
        security=_SECURITY,
        tags=["crm"],
    )
