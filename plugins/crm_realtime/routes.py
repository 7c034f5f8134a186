"""The CRM REST API under ``/api`` and the Socket.IO mount at ``/socket.io``.

Every ``/api`` endpoint takes the same JWT as Socket.IO in ``Authorization: Bearer …`` (declared in
OpenAPI as the ``bearerAuth`` scheme) and applies the token's scope: lists are filtered to the
allowed business numbers, single resources outside it answer ``403 forbidden``. Errors use the
host's envelope ``{"error": {"code", "message"}}``. Browsers on the origins of
``cors_allowed_origins`` may call it cross-origin (:class:`ApiCors`).

One Litestar ``Controller`` per resource (:data:`CONTROLLERS`); :func:`api_router` mounts them under
``/api`` for one host, with its CORS origins and page-size bound. Handlers receive the ``host`` and
the verified ``agent``, both app dependencies: the host's bearer check (:mod:`core.auth`) uses the
verifier this plugin registers, so plugin routes can require the same token. To add an endpoint, add
a handler to the controller of its resource, or a controller to :data:`CONTROLLERS`.
"""

# Litestar resolves the handlers' annotations when the router registers them, with the names of
# the module and of the router's `signature_namespace` (which binds `PageSize` per host), so the
# imports used in annotations stay runtime imports.
from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, cast

from litestar import Controller, Response, Router, get, patch, post
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.di import NamedDependency
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

from core.auth import Agent
from core.errors import ApiError, ForbiddenError, NotFoundError, ValidationFailed
from core.event_payloads import EVENT_TYPES
from core.host import Host, MediaStream
from core.models import CONVERSATION_MODES, Conversation, ConversationMode, Message
from core.stash import StashKey
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.crm_realtime.models import (
    AgentActionDone,
    ApiContact,
    ApiConversation,
    ApiMessageDetail,
    ContactPage,
    ConversationPage,
    ConversationPatch,
    ErrorBody,
    EventPageDoc,
    MessagePage,
    SendAccepted,
    SendBody,
    StartBody,
    api_contact,
    api_conversation,
    api_message,
    api_message_detail,
    encode_event_page,
    send_content,
)
from plugins.crm_realtime.realtime import MAX_ID, Realtime

__all__ = [
    "CONTROLLERS",
    "REALTIME",
    "ApiCors",
    "ContactController",
    "ConversationController",
    "EventController",
    "MessageController",
    "api_router",
    "socketio_mount",
]

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
        409: (
            "Idempotency-Key reused with a different body, or a retry of a send not in failed "
            "(conflict); no inbound message to acknowledge (nothing_to_acknowledge)"
        ),
        410: "The events after `after` were pruned by retention (events_expired)",
        422: "Outside the 24-hour window (window_closed), refused by a plugin (send_vetoed) or by Meta",
        502: "Meta could not provide the media (media_unavailable) or did not answer (upstream_error)",
    }
    # 400 always: Litestar would otherwise document its own validation body, which the host's
    # error envelope replaces.
    return {
        code: ResponseSpec(ErrorBody, description=text[code], generate_examples=False)
        for code in (400, 401, *codes)
    }


def page_size(maximum: int) -> Any:
    """The type of a list endpoint's ``limit`` query parameter: 1 to ``maximum``."""
    return Annotated[int, QueryParameter(ge=1, le=maximum, description="Page size")]


if TYPE_CHECKING:
    # At runtime the router binds the name to `page_size(settings.max_page_size)`; a router that
    # does not fails at startup instead of serving unbounded pages.
    PageSize = int


def _check_id(value: int, what: str) -> int:
    if not 0 < value <= MAX_ID:
        raise NotFoundError(f"{what} {value} does not exist")
    return value


def parse_mode(value: object, where: str) -> ConversationMode:
    """``value`` as a conversation mode, or ``400`` naming the valid ones."""
    for mode in CONVERSATION_MODES:
        if value == mode:
            return mode
    raise ValidationFailed(
        f"{where}: {value!r} is not a conversation mode; use one of: {', '.join(CONVERSATION_MODES)}"
    )


def _encode_cursor(conversation: Conversation) -> str:
    ts = conversation.last_message_at or conversation.created_at
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    micros = (ts - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}:{conversation.id}".encode()).decode().rstrip("=")


def _check_cursor_id(value: int) -> int:
    if not 0 < value <= MAX_ID:
        raise ValueError(value)
    return value


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, _, ident = raw.partition(":")
        if len(micros) > 20 or len(ident) > 20:  # never a cursor of ours; int() of 5,000 digits raises
            raise ValueError(cursor)
        return _EPOCH + timedelta(microseconds=int(micros)), _check_cursor_id(int(ident))
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
    allow_methods = "GET, POST, PATCH, OPTIONS"
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


async def conversation_for(host: Host, agent: Agent, conversation_id: int) -> Conversation:
    """The conversation, if it exists (else ``404``) and the agent's scope includes it (else ``403``)."""
    conversation = await host.storage.get_conversation(_check_id(conversation_id, "conversation"))
    if conversation is None:
        raise NotFoundError(f"conversation {conversation_id} does not exist")
    agent.require(conversation.phone_number_id, f"conversation {conversation_id}")
    return conversation


async def message_for(host: Host, agent: Agent, message_id: int) -> Message:
    """The message, if it exists (else ``404``) and the agent's scope includes it (else ``403``)."""
    message = await host.storage.get_message(_check_id(message_id, "message"))
    if message is None:
        raise NotFoundError(f"message {message_id} does not exist")
    agent.require(message.phone_number_id, f"message {message_id}")
    return message


async def with_details(host: Host, items: list[Conversation]) -> list[ApiConversation]:
    """The conversations as the API shows them, each with its contact and last message."""
    if not items:
        return []
    storage = host.storage
    last_ids = {c.id: c.last_message_id for c in items if c.last_message_id is not None}
    contacts = await storage.get_contacts(c.contact_id for c in items)
    last = await storage.get_messages(last_ids.values())
    reactions = await storage.reactions(last_ids.values())
    out = []
    for c in items:
        message_id = last_ids.get(c.id)
        out.append(
            api_conversation(
                c,
                contacts[c.contact_id],
                last.get(message_id) if message_id else None,
                host.public_url,
                window_open=host.sender.window_open(c),
                reactions=reactions.get(message_id) if message_id else None,
            )
        )
    return out


class ConversationController(Controller):
    """``/api/conversations``: the list, one conversation, its messages, and sending into it."""

    path = "/conversations"

    @get(
        "/",
        summary="List conversations, newest activity first",
        description="Each item has its contact and last message. Page with `before=<next_before>`.",
        responses=_errors(),
    )
    async def list_conversations(
        self,
        host: NamedDependency[Host],
        agent: NamedDependency[Agent],
        limit: PageSize = 50,
        before: Annotated[
            str | None, QueryParameter(description="Cursor: the `next_before` of the previous page")
        ] = None,
        q: Annotated[
            str | None,
            QueryParameter(
                max_length=100,
                description=(
                    "Only conversations whose contact's name or phone number contains this; names "
                    "ignore case and accents (`livia` finds `Lívia`), numbers compare by digits"
                ),
            ),
        ] = None,
        mode: Annotated[
            str | None,
            QueryParameter(description="Only conversations in this mode: `bot` or `human`"),
        ] = None,
    ) -> ConversationPage:
        """Newest activity first, limited to the business numbers of the token's scope."""
        cursor = _decode_cursor(before) if before else None
        scope = sorted(agent.scope) if agent.scope is not None else None
        if mode is not None:
            mode = parse_mode(mode, "mode")
        if (q is not None and q.strip()) or mode is not None:
            page = await host.storage.search_conversations(
                q=q if q is not None and q.strip() else None,
                mode=mode,
                limit=limit + 1,
                before=cursor,
                phone_number_ids=scope,
            )
        else:
            page = await host.storage.list_conversations(
                limit=limit + 1, before=cursor, phone_number_ids=scope
            )
        more = len(page) > limit
        page = page[:limit]
        return ConversationPage(
            conversations=await with_details(host, page),
            next_before=_encode_cursor(page[-1]) if more and page else None,
        )

    @get("/{conversation_id:int}", summary="One conversation", responses=_errors(403, 404))
    async def get_conversation(
        self, host: NamedDependency[Host], agent: NamedDependency[Agent], conversation_id: FromPath[int]
    ) -> ApiConversation:
        """One conversation with its contact and last message."""
        conversation = await conversation_for(host, agent, conversation_id)
        return (await with_details(host, [conversation]))[0]

    @patch(
        "/{conversation_id:int}",
        summary="Take a conversation over, or hand it back to the bot",
        description=(
            '`{"mode": "human"}`: an agent owns the conversation and auto-replies stay silent; '
            '`{"mode": "bot"}`: auto-replies may answer again. A change is sent as '
            "`whatsapp:conversation_updated`; setting the current mode changes nothing."
        ),
        responses=_errors(403, 404),
    )
    async def update_conversation(
        self,
        host: NamedDependency[Host],
        agent: NamedDependency[Agent],
        conversation_id: FromPath[int],
        data: JSONBody[ConversationPatch],
    ) -> ApiConversation:
        """Set the conversation's ``mode``; answers the conversation as ``GET`` does."""
        mode = parse_mode(data.mode, "mode")
        await conversation_for(host, agent, conversation_id)
        updated = await host.handoff.set_mode(conversation_id, mode)
        return (await with_details(host, [updated]))[0]

    @get(
        "/{conversation_id:int}/messages",
        summary="Messages of a conversation, oldest first",
        description=(
            "The resync cursor: after a reconnect, ask for `after_id=<last id you saw>` and repeat with "
            "`next_after_id` until it is null."
        ),
        responses=_errors(403, 404),
    )
    async def list_messages(
        self,
        host: NamedDependency[Host],
        agent: NamedDependency[Agent],
        conversation_id: FromPath[int],
        after_id: Annotated[
            int, QueryParameter(ge=0, le=MAX_ID, description="Only messages with a greater id")
        ] = 0,
        limit: PageSize = 100,
    ) -> MessagePage:
        """Oldest first, after ``after_id``."""
        await conversation_for(host, agent, conversation_id)
        page = await host.storage.list_messages(conversation_id, after_id=after_id, limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        reactions = await host.storage.reactions(m.id for m in page)
        return MessagePage(
            messages=[api_message(m, host.public_url, reactions.get(m.id)) for m in page],
            next_after_id=page[-1].id if more else None,
        )

    @post(
        "/{conversation_id:int}/messages",
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
        self,
        host: NamedDependency[Host],
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
        """Queue ``data`` in the outbox; ``202`` (with ``Idempotent-Replayed`` on a repeated key)."""
        conversation = await conversation_for(host, agent, conversation_id)
        context_wamid = None
        if data.reply_to is not None:
            quoted = await host.storage.get_message(_check_id(data.reply_to, "message"))
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

    @post(
        "/{conversation_id:int}/read",
        status_code=200,
        summary="Mark the contact's last message read",
        description=(
            "The customer sees blue ticks on everything up to the last message they sent. Answers "
            "`409` when the contact never wrote."
        ),
        responses=_errors(403, 404, 409, 422, 502),
    )
    async def mark_read(
        self, host: NamedDependency[Host], agent: NamedDependency[Agent], conversation_id: FromPath[int]
    ) -> AgentActionDone:
        """Read receipt for the last inbound message, at the transport (Meta)."""
        conversation = await conversation_for(host, agent, conversation_id)
        message = await host.sender.mark_read(conversation)
        return AgentActionDone(conversation_id=conversation.id, message_id=message.id)

    @post(
        "/{conversation_id:int}/typing",
        status_code=200,
        summary="Show the contact that an agent is typing",
        description=(
            "WhatsApp shows “typing…” for up to 25 seconds or until the reply, and marks the last "
            "message read. Call it when a reply follows. Answers `409` when the contact never wrote."
        ),
        responses=_errors(403, 404, 409, 422, 502),
    )
    async def typing(
        self, host: NamedDependency[Host], agent: NamedDependency[Agent], conversation_id: FromPath[int]
    ) -> AgentActionDone:
        """Typing indicator on the last inbound message, at the transport (Meta)."""
        conversation = await conversation_for(host, agent, conversation_id)
        message = await host.sender.typing(conversation)
        return AgentActionDone(conversation_id=conversation.id, message_id=message.id)


class MessageController(Controller):
    """``/api/messages``: start a conversation, one message with its status history, its media."""

    path = "/messages"

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Start a conversation: send to a phone number",
        description=(
            "Creates the contact and the conversation when they do not exist, then sends as "
            "`POST /api/conversations/{id}/messages` does. Outside an open 24-hour window only a "
            "`template` may go (`422 window_closed`). `phoneNumberId` picks the business number; "
            "it is required when the token may use several. `Idempotency-Key` honoured."
        ),
        responses=_errors(403, 409, 422),
    )
    async def start_conversation(
        self,
        host: NamedDependency[Host],
        agent: NamedDependency[Agent],
        data: JSONBody[StartBody],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                max_length=256,
                description="Any unique string (a UUID); retries with the same key and body send once",
            ),
        ] = None,
    ) -> Response[SendAccepted]:
        """Queue ``data`` to ``data.to``; ``202`` as a send (``Idempotent-Replayed`` on a repeat)."""
        if data.reply_to is not None:
            raise ValidationFailed("reply_to: a new conversation has no message to reply to; remove it")
        allowed = frozenset(agent.scope) if agent.scope is not None else None
        number = host.sender.business_number(data.phone_number_id, allowed)
        message, created = await host.sender.start(
            number,
            data.to,
            str(data.__struct_config__.tag),
            send_content(data),
            source="api",
            idempotency_key=idempotency_key or None,
            idempotency_scope=f"crm_realtime:{agent.sub}",
        )
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return Response(
            SendAccepted(message_id=message.id, conversation_id=message.conversation_id, status="queued"),
            status_code=HTTP_202_ACCEPTED,
            headers=headers,
        )

    @get("/{message_id:int}", summary="One message with its status history", responses=_errors(403, 404))
    async def get_message(
        self, host: NamedDependency[Host], agent: NamedDependency[Agent], message_id: FromPath[int]
    ) -> ApiMessageDetail:
        """The message, its raw payload and every status it went through."""
        message = await message_for(host, agent, message_id)
        history = await host.storage.status_history(message.id)
        reactions = await host.storage.reactions([message.id])
        return api_message_detail(message, history, host.public_url, reactions.get(message.id))

    @post(
        "/{message_id:int}/retry",
        status_code=HTTP_202_ACCEPTED,
        summary="Retry a failed send",
        description=(
            "Puts a message in `failed` back in the outbox with a fresh retry window; it answers like "
            "a send, and `whatsapp:message_sent` and statuses follow. `409 conflict` when the message "
            "is not in `failed`; `422 window_closed` for a free-form message outside the 24-hour window."
        ),
        responses=_errors(403, 404, 409, 422),
    )
    async def retry_message(
        self, host: NamedDependency[Host], agent: NamedDependency[Agent], message_id: FromPath[int]
    ) -> Response[SendAccepted]:
        """Re-queue a failed send; ``202`` as ``POST …/messages``."""
        message = await message_for(host, agent, message_id)
        requeued = await host.sender.retry(message.id)
        return Response(
            SendAccepted(message_id=requeued.id, conversation_id=requeued.conversation_id, status="queued"),
            status_code=HTTP_202_ACCEPTED,
        )

    @get(
        "/{message_id:int}/media",
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
    async def get_media(
        self, host: NamedDependency[Host], agent: NamedDependency[Agent], message_id: FromPath[int]
    ) -> Stream:
        """Stream the media through the transport that received the message (``media_for_message``)."""
        message = await message_for(host, agent, message_id)
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


class ContactController(Controller):
    """``/api/contacts``: search, one contact."""

    path = "/contacts"

    @get("/", summary="Search contacts by name or phone number", responses=_errors())
    async def search_contacts(
        self,
        host: NamedDependency[Host],
        agent: NamedDependency[Agent],
        q: Annotated[
            str,
            QueryParameter(
                min_length=1,
                max_length=100,
                description=(
                    "Part of the name (case and accents ignored: `livia` finds `Lívia`) or of the "
                    "phone number (digits compared: `+55 11 9999` finds `5511999991234`)"
                ),
            ),
        ],
        limit: PageSize = 50,
    ) -> ContactPage:
        """Matching contacts with a conversation on a number of the token's scope, by name."""
        scope = sorted(agent.scope) if agent.scope is not None else None
        found = await host.storage.search_contacts(q, limit=limit, phone_number_ids=scope)
        return ContactPage(contacts=[api_contact(c) for c in found])

    @get("/{contact_id:int}", summary="One contact", responses=_errors(403, 404))
    async def get_contact(
        self, host: NamedDependency[Host], agent: NamedDependency[Agent], contact_id: FromPath[int]
    ) -> ApiContact:
        """The contact, if one of its conversations is with a business number in the token's scope."""
        contact = await host.storage.get_contact(_check_id(contact_id, "contact"))
        if contact is None:
            raise NotFoundError(f"contact {contact_id} does not exist")
        if agent.scope is not None:
            numbers = await host.storage.contact_phone_number_ids(contact.id)
            if not numbers & agent.scope:
                raise ForbiddenError(
                    f"contact {contact_id} has no conversation with a business number your token's "
                    "scope includes"
                )
        return api_contact(contact)


class EventController(Controller):
    """``/api/events``: the change feed, every event of the log the token may see, oldest first."""

    path = "/events"

    @get(
        "/",
        summary="The change feed: events after an id, oldest first",
        description=(
            "Every event the token's scope may see (the same events as Socket.IO, with the same payloads "
            "in `data`), in commit order. Start with `after=0` (or the last `eventId` you have), then pass "
            "`nextAfter` until it is null; later, poll again from the last `id` you received. `types` "
            "keeps only the named events (comma-separated or repeated). Events older than the retention "
            "(`storage.event_log`) are gone: asking for them answers 410 `events_expired`."
        ),
        responses={
            200: ResponseSpec(EventPageDoc, description="A page of events", generate_examples=False),
            **_errors(410),
        },
    )
    async def list_events(
        self,
        host: NamedDependency[Host],
        agent: NamedDependency[Agent],
        after: Annotated[
            int, QueryParameter(ge=0, le=MAX_ID, description="Only events with a greater id")
        ] = 0,
        limit: PageSize = 100,
        types: Annotated[
            list[str] | None,
            QueryParameter(
                description="Only these event types, e.g. `whatsapp:message,whatsapp:message_status`"
            ),
        ] = None,
    ) -> Response[bytes]:
        """Events after ``after`` in the token's scope, oldest first."""
        wanted = _event_types(types)
        scope = sorted(agent.scope) if agent.scope is not None else None
        storage = host.storage
        page = await storage.read_events(after, limit + 1, types=wanted, phone_number_ids=scope)
        if after > 0 and (not page or page[0].id > after + 1):
            # Ids have no gaps: a hole right after `after` can only be retention at work.
            bounds = await storage.event_bounds()
            oldest = bounds.oldest if bounds.oldest is not None else bounds.last + 1
            if oldest > after + 1:
                raise ApiError(
                    f"events after {after} were pruned (the oldest kept is {oldest}, see "
                    "storage.event_log): resync from /api/conversations, then follow the feed from "
                    f"after={bounds.last}",
                    code="events_expired",
                    status_code=410,
                )
        more = len(page) > limit
        page = page[:limit]
        body = encode_event_page(page, page[-1].id if more else None)
        return Response(body, media_type="application/json")


def _event_types(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    wanted = [t.strip() for v in values for t in v.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in EVENT_TYPES]
    if unknown:
        raise ValidationFailed(
            f"types: unknown event type {unknown[0]!r}; use any of {', '.join(EVENT_TYPES)}"
        )
    return wanted or None


CONTROLLERS: tuple[type[Controller], ...] = (
    ConversationController,
    MessageController,
    ContactController,
    EventController,
)
"""The ``/api`` controllers, in the order the router registers them."""


def api_router(settings: CrmRealtimeSettings) -> Router:
    """The ``/api`` router: :data:`CONTROLLERS` behind the bearer token, CORS and the page-size bound.

    Args:
        settings: this host's ``plugins.crm_realtime`` section (``max_page_size``, CORS origins).
    """
    return Router(
        "/api",
        route_handlers=list(CONTROLLERS),
        # The handlers' `limit: PageSize` resolves here, so the bound (validation and OpenAPI's
        # `maximum`) is this host's `max_page_size`, not a module-level constant.
        signature_namespace={"PageSize": page_size(settings.max_page_size)},
        # None or []: no CORS here (same origin only, or a reverse proxy answers it), as for Socket.IO.
        middleware=[ApiCors(settings.cors_allowed_origins)] if settings.cors_allowed_origins else [],
        security=_SECURITY,
        tags=["crm"],
    )
