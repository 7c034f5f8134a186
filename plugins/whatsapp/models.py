"""Meta's webhook payloads as msgspec Structs, and their translation to core's neutral structs.

:func:`parse_webhook` is the one entry point: it parses a POST body once and returns the
:class:`~core.models.InboundMessage` and :class:`~core.models.InboundStatus` objects in it.

How the single parse works: the body is decoded by one module-level typed decoder into the
envelope Structs, except that ``messages[]`` and ``statuses[]`` stay plain dicts, because the
store keeps Meta's raw message exactly. Each dict is then ``msgspec.convert``-ed (cheap, no JSON
involved) into its typed Struct, so one malformed message costs only that message. Only when the
envelope itself has an unexpected shape somewhere does a slower, lenient walk parse the body
again, change by change, to keep whatever is usable.

Unknown fields are ignored everywhere (Meta adds fields often), unknown message types become an
``InboundMessage`` with that type and no body, and nothing but malformed JSON raises.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import msgspec

from core.errors import ZaphubError
from core.models import (
    InboundMessage,
    InboundStatus,
    LifecycleAction,
    MessageEdit,
    MessageReaction,
    MessageRevoke,
    NumberChange,
)

__all__ = [
    "CALLBACK_PREFIX",
    "WHATSAPP_OBJECT",
    "Audio",
    "Button",
    "ButtonReply",
    "Change",
    "Context",
    "Conversation",
    "Document",
    "Edit",
    "EditedContent",
    "Entry",
    "Envelope",
    "Interactive",
    "ListReply",
    "Location",
    "Media",
    "Metadata",
    "NfmReply",
    "Order",
    "ParsedWebhook",
    "Pricing",
    "Reaction",
    "Referral",
    "Revoke",
    "SharedContact",
    "Sticker",
    "System",
    "Text",
    "Value",
    "WebhookPayloadError",
    "WireContact",
    "WireError",
    "WireMessage",
    "WireStatus",
    "callback_data",
    "message_id_from_callback",
    "parse_webhook",
    "to_inbound_message",
    "to_inbound_status",
]

WHATSAPP_OBJECT: Final = "whatsapp_business_account"

#: Prefix of ``biz_opaque_callback_data`` on zaphub's sends (``"zaphub:<message id>"``). Meta
#: echoes it in status webhooks, which lets a status link a message whose Graph answer never
#: arrived (a timeout after sending); other values (another app's, a campaign tag) are ignored.
CALLBACK_PREFIX: Final = "zaphub:"


def callback_data(message_id: int) -> str:
    """The ``biz_opaque_callback_data`` the outbox worker puts on the send of ``message_id``."""
    return f"{CALLBACK_PREFIX}{message_id}"


def message_id_from_callback(data: str | None) -> int | None:
    """The message id in a status's ``biz_opaque_callback_data``, or ``None`` when not zaphub's."""
    if data is None or not data.startswith(CALLBACK_PREFIX):
        return None
    digits = data[len(CALLBACK_PREFIX) :]
    # Our ids are 64-bit: a longer number is not one of ours (and int() of 5,000 digits raises).
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19):
        return None
    number = int(digits)
    return number if 0 < number < 2**63 else None


_T = TypeVar("_T")

#: Message types whose object carries a media id and MIME type.
MEDIA_TYPES: Final = frozenset({"image", "video", "audio", "document", "sticker"})


class _Wire(msgspec.Struct, kw_only=True, forbid_unknown_fields=False, gc=False):
    """Base of Meta's wire objects: unknown fields tolerated; no cycles, so GC tracking is off."""


# --- shared pieces -------------------------------------------------------------------------------


class ErrorData(_Wire):
    """``error_data`` of an error."""

    details: str | None = None


class WireError(_Wire):
    """One ``errors[]`` item (on ``value``, on an ``unsupported`` message, on a ``failed`` status)."""

    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None
    href: str | None = None


class Profile(_Wire):
    """``contacts[].profile``."""

    name: str | None = None


class WireContact(_Wire):
    """``value.contacts[]``: the sender's WhatsApp id and display name."""

    wa_id: str | None = None
    profile: Profile | None = None
    user_id: str | None = None
    """Business-scoped user id (``US.1349…``) newer payloads carry."""
    parent_user_id: str | None = None


class Metadata(_Wire):
    """``value.metadata``: which business number the change is about."""

    display_phone_number: str | None = None
    phone_number_id: str | None = None


# --- message objects -----------------------------------------------------------------------------


class ReferredProduct(_Wire):
    """``context.referred_product``: the catalog product the user asked about."""

    catalog_id: str | None = None
    product_retailer_id: str | None = None


class Context(_Wire):
    """``context``: what the message replies to, or that it was forwarded."""

    id: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: ReferredProduct | None = None


class WelcomeMessage(_Wire):
    """``referral.welcome_message``."""

    text: str | None = None


class Referral(_Wire):
    """``referral``: the click-to-WhatsApp ad or post the message came from."""

    source_url: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    headline: str | None = None
    body: str | None = None
    media_type: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    thumbnail_url: str | None = None
    ctwa_clid: str | None = None
    welcome_message: WelcomeMessage | None = None


class Text(_Wire):
    """``text``."""

    body: str


class Media(_Wire):
    """``image`` / ``video``: media id (download it within 7 days), MIME type, caption."""

    id: str
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    url: str | None = None


class Audio(Media):
    """``audio``: ``voice`` is true for a recorded voice note."""

    voice: bool = False


class Document(Media):
    """``document``."""

    filename: str | None = None


class Sticker(Media):
    """``sticker``."""

    animated: bool = False


class Location(_Wire):
    """``location``; a chosen place also has a name, address and URL."""

    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


class ContactName(_Wire):
    """``contacts[].name`` of a shared contact card."""

    formatted_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    middle_name: str | None = None
    suffix: str | None = None
    prefix: str | None = None


class ContactPhone(_Wire):
    """``contacts[].phones[]``."""

    phone: str | None = None
    wa_id: str | None = None
    type: str | None = None


class ContactOrg(_Wire):
    """``contacts[].org``."""

    company: str | None = None
    department: str | None = None
    title: str | None = None


class SharedContact(_Wire):
    """One card of a ``contacts`` message (vCard-like)."""

    name: ContactName | None = None
    phones: list[ContactPhone] = []
    emails: list[dict[str, Any]] = []
    urls: list[dict[str, Any]] = []
    addresses: list[dict[str, Any]] = []
    org: ContactOrg | None = None
    birthday: str | None = None


class ButtonReply(_Wire):
    """``interactive.button_reply``."""

    id: str
    title: str


class ListReply(_Wire):
    """``interactive.list_reply``."""

    id: str
    title: str
    description: str | None = None


class NfmReply(_Wire):
    """``interactive.nfm_reply``: a completed Flow; ``response_json`` is a JSON *string*."""

    response_json: str | None = None
    body: str | None = None
    name: str | None = None


class Interactive(_Wire):
    """``interactive``: the reply to an interactive message we sent."""

    type: str
    button_reply: ButtonReply | None = None
    list_reply: ListReply | None = None
    nfm_reply: NfmReply | None = None


class Button(_Wire):
    """``button``: a quick-reply button tapped on a template."""

    text: str | None = None
    payload: str | None = None


class Reaction(_Wire):
    """``reaction``; a missing or empty ``emoji`` means the reaction was removed."""

    message_id: str | None = None
    emoji: str | None = None


class ProductItem(_Wire):
    """``order.product_items[]``."""

    product_retailer_id: str | None = None
    quantity: int | float | None = None
    item_price: float | None = None
    currency: str | None = None


class Order(_Wire):
    """``order``: a cart sent from the catalog."""

    catalog_id: str | None = None
    text: str | None = None
    product_items: list[ProductItem] = []


class System(_Wire):
    """``system``: e.g. ``user_changed_number`` (``wa_id`` is the new id)."""

    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    new_wa_id: str | None = None
    """Older payloads name the new id ``new_wa_id``."""


class Unsupported(_Wire):
    """``unsupported``: what the user sent that the Cloud API does not deliver."""

    type: str | None = None


class EditedContent(_Wire):
    """``edit.message``: the edited message's new content (text, or a media caption)."""

    type: str | None = None
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    document: Document | None = None


class Edit(_Wire):
    """``edit``: the contact edited ``original_message_id``."""

    original_message_id: str | None = None
    message: EditedContent | None = None


class Revoke(_Wire):
    """``revoke``: the contact deleted ``original_message_id`` for everyone."""

    original_message_id: str | None = None


#: ``system.type`` values that move the contact to ``system.wa_id``.
NUMBER_CHANGES: Final = frozenset({"user_changed_number", "customer_changed_number"})


class WireMessage(_Wire):
    """One ``value.messages[]`` item, typed.

    Only the object named by ``type`` is set; an unknown ``type`` leaves them all ``None``.
    """

    id: str
    from_: str = msgspec.field(name="from")
    timestamp: str | int
    type: str
    context: Context | None = None
    referral: Referral | None = None
    errors: list[WireError] = []
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    audio: Audio | None = None
    document: Document | None = None
    sticker: Sticker | None = None
    location: Location | None = None
    contacts: list[SharedContact] | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    reaction: Reaction | None = None
    order: Order | None = None
    system: System | None = None
    unsupported: Unsupported | None = None
    edit: Edit | None = None
    revoke: Revoke | None = None


# --- statuses ------------------------------------------------------------------------------------


class Origin(_Wire):
    """``conversation.origin``."""

    type: str | None = None


class Conversation(_Wire):
    """``statuses[].conversation`` (dropped by Graph v24+; do not build logic on it)."""

    id: str | None = None
    expiration_timestamp: str | int | None = None
    origin: Origin | None = None


class Pricing(_Wire):
    """``statuses[].pricing``."""

    billable: bool | None = None
    pricing_model: str | None = None
    type: str | None = None
    category: str | None = None


class WireStatus(_Wire):
    """One ``value.statuses[]`` item: a status of a message we sent."""

    id: str
    status: str
    timestamp: str | int
    recipient_id: str | None = None
    recipient_type: str | None = None
    recipient_participant_id: str | None = None
    biz_opaque_callback_data: str | None = None
    conversation: Conversation | None = None
    pricing: Pricing | None = None
    errors: list[WireError] = []


# --- envelope ------------------------------------------------------------------------------------


class Value(_Wire):
    """``entry[].changes[].value`` of the ``messages`` field.

    ``messages``/``statuses``/``errors`` stay plain JSON values so each message is kept exactly
    as received and a malformed one does not fail the whole body.
    """

    messaging_product: str | None = None
    metadata: Metadata | None = None
    contacts: list[WireContact] = []
    messages: list[Any] = []
    statuses: list[Any] = []
    errors: list[Any] = []


class Change(_Wire):
    """``entry[].changes[]``: one subscription ``field`` and its ``value``."""

    field: str = ""
    value: Value | None = None


class Entry(_Wire):
    """``entry[]``: ``id`` is the WhatsApp Business Account id."""

    id: str | None = None
    changes: list[Change] = []


class Envelope(_Wire):
    """The POST body."""

    object: str = ""
    entry: list[Entry] = []


# --- public result -------------------------------------------------------------------------------


class WebhookPayloadError(ZaphubError):
    """The webhook body is not JSON at all (the route answers 400)."""


class ParsedWebhook(msgspec.Struct, kw_only=True):
    """What one webhook POST body contained, translated for core.

    Attributes:
        object: The envelope's ``object`` (``whatsapp_business_account``), ``""`` if absent.
        messages: Inbound messages, in body order.
        statuses: Statuses of messages we sent, in body order.
        ignored: Human-readable reasons for what was skipped (another ``object`` or ``field``,
            a malformed message), for the logs.
        errors: ``value.errors[]`` (system, app or account errors) as received.
    """

    object: str = ""
    messages: list[InboundMessage] = []
    statuses: list[InboundStatus] = []
    ignored: list[str] = []
    errors: list[dict[str, Any]] = []


_TOO_DEEP: Final = "webhook body nests JSON arrays/objects too deeply to decode (Meta's nest a few levels)"
_DECODER: Final = msgspec.json.Decoder(Envelope)
_ANY_DECODER: Final = msgspec.json.Decoder()


def parse_webhook(body: bytes) -> ParsedWebhook:
    """Parse one webhook POST body.

    Args:
        body: The raw request body (the bytes whose signature was checked).

    Returns:
        Every message and status in every entry and change. JSON that is not a WhatsApp
        envelope gives an empty result with the reason in ``ignored``; a malformed message or
        status is skipped, with a reason, and the rest of the batch kept.

    Raises:
        WebhookPayloadError: ``body`` is not valid JSON.
    """
    try:
        envelope = _DECODER.decode(body)
    except msgspec.ValidationError:
        # Valid JSON, unexpected shape somewhere: salvage it piece by piece (rare, slower).
        return _parse_lenient(_decode_any(body))
    except msgspec.DecodeError as exc:
        raise WebhookPayloadError(f"webhook body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise WebhookPayloadError(_TOO_DEEP) from exc
    out = ParsedWebhook(object=envelope.object)
    if envelope.object != WHATSAPP_OBJECT:
        out.ignored.append(f"object {envelope.object!r} is not {WHATSAPP_OBJECT!r}")
        return out
    for i, entry in enumerate(envelope.entry):
        for j, change in enumerate(entry.changes):
            _collect_change(change, i, j, out)
    return out


def _decode_any(body: bytes) -> Any:
    try:
        return _ANY_DECODER.decode(body)
    except msgspec.DecodeError as exc:  # pragma: no cover - the typed decoder parsed it already
        raise WebhookPayloadError(f"webhook body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the typed decoder stopped at a wrong type before the depth
        raise WebhookPayloadError(_TOO_DEEP) from exc


def _parse_lenient(doc: Any) -> ParsedWebhook:
    """Walk an envelope of unexpected shape, converting change by change."""
    if not isinstance(doc, dict):
        return ParsedWebhook(ignored=[f"body is a JSON {_json_kind(doc)}, not an object"])
    obj = doc.get("object")
    out = ParsedWebhook(object=obj if isinstance(obj, str) else "")
    if obj != WHATSAPP_OBJECT:
        out.ignored.append(f"object {obj!r} is not {WHATSAPP_OBJECT!r}")
        return out
    entries = doc.get("entry")
    if not isinstance(entries, list):
        out.ignored.append(f"entry is a JSON {_json_kind(entries)}, not an array")
        return out
    for i, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            out.ignored.append(f"entry[{i}]: no changes array")
            continue
        for j, raw_change in enumerate(changes):
            try:
                change = msgspec.convert(raw_change, Change, strict=False)
            except msgspec.ValidationError as exc:
                field = raw_change.get("field") if isinstance(raw_change, dict) else None
                if field is not None and field != "messages":
                    out.ignored.append(f"{_path(i, j)}: field {field!r} is not handled")
                else:
                    out.ignored.append(f"{_path(i, j)}: malformed change: {exc}")
                continue
            _collect_change(change, i, j, out)
    return out


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "object" if isinstance(value, dict) else type(value).__name__


def _collect_change(change: Change, i: int, j: int, out: ParsedWebhook) -> None:
    """Translate the messages and statuses of ``entry[i].changes[j]`` (a ``messages`` change) into ``out``."""
    if change.field != "messages":
        out.ignored.append(f"{_path(i, j)}: field {change.field!r} is not handled")
        return
    value = change.value
    if value is None:
        out.ignored.append(f"{_path(i, j)}: messages change without a value")
        return
    if value.errors:
        out.errors.extend(e for e in value.errors if isinstance(e, dict))
    if not value.messages and not value.statuses:
        return
    pnid = value.metadata.phone_number_id if value.metadata is not None else None
    if not pnid:
        n = len(value.messages) + len(value.statuses)
        out.ignored.append(f"{_path(i, j)}: no metadata.phone_number_id, {n} message(s)/status(es) skipped")
        return
    if value.messages:
        first = value.contacts[0] if value.contacts else None
        # The sender's contact by wa_id, else the first one: with one contact (Meta's usual
        # change), that is always the first, and no lookup table is needed.
        contacts = {c.wa_id: c for c in value.contacts if c.wa_id} if len(value.contacts) > 1 else {}
        for k, raw in enumerate(value.messages):
            try:
                wire = _to_wire(raw, WireMessage)
                out.messages.append(to_inbound_message(wire, raw, pnid, contacts.get(wire.from_) or first))
            except (msgspec.ValidationError, ValueError, OverflowError, OSError) as exc:
                out.ignored.append(f"{_path(i, j)}.messages[{k}]{_id_of(raw)}: malformed message: {exc}")
    for k, raw in enumerate(value.statuses):
        try:
            out.statuses.append(to_inbound_status(_to_wire(raw, WireStatus), raw, pnid))
        except msgspec.ValidationError as exc:
            out.ignored.append(f"{_path(i, j)}.statuses[{k}]{_id_of(raw)}: malformed status: {exc}")


def _path(i: int, j: int) -> str:
    """Where a change is in the body, for the reasons in ``ignored`` (formatted only when one is)."""
    return f"entry[{i}].changes[{j}]"


def _to_wire(raw: Any, type_: type[_T]) -> _T:
    if not isinstance(raw, dict):
        raise msgspec.ValidationError(f"expected an object, got a JSON {_json_kind(raw)}")
    # Lax mode: tolerate numbers sent as strings and the like; Meta is not always consistent.
    return msgspec.convert(raw, type_, strict=False)


def _id_of(raw: Any) -> str:
    wamid = raw.get("id") if isinstance(raw, dict) else None
    return f" ({wamid})" if isinstance(wamid, str) else ""


# --- translation ---------------------------------------------------------------------------------


def to_inbound_message(
    msg: WireMessage, raw: dict[str, Any], phone_number_id: str, contact: WireContact | None
) -> InboundMessage:
    """Translate one typed message to core's :class:`~core.models.InboundMessage`.

    Args:
        msg: The typed message.
        raw: The same message as received; stored unchanged.
        phone_number_id: ``metadata.phone_number_id`` of its change.
        contact: The ``contacts[]`` item of the sender (matched by ``wa_id``, else the first one),
            or ``None`` (e.g. ``system`` messages come without ``contacts[]``).

    Raises:
        ValueError: ``timestamp`` is not Unix seconds.
    """
    media: Media | None = None
    if msg.type in MEDIA_TYPES:
        media = getattr(msg, msg.type)
    name = contact.profile.name if contact is not None and contact.profile is not None else None
    # What Meta could not deliver (``unsupported``, error 131000…) says why in ``errors[]``.
    err = msg.errors[0] if msg.errors else None
    return InboundMessage(
        phone_number_id=phone_number_id,
        wamid=msg.id,
        wa_id=(contact.wa_id if contact is not None else None) or msg.from_,
        profile_name=name or None,
        type=msg.type,
        body=_body_of(msg),
        timestamp=datetime.fromtimestamp(int(msg.timestamp), UTC),
        raw=raw,
        media_id=media.id if media is not None else None,
        media_mime_type=media.mime_type if media is not None else None,
        context_wamid=msg.context.id if msg.context is not None else None,
        error_code=err.code if err is not None else None,
        error_title=(err.title or err.message) if err is not None else None,
        action=_action_of(msg),
    )


def _action_of(msg: WireMessage) -> LifecycleAction | None:
    """What the message does to an earlier one (edit, revoke, reaction) or to its sender."""
    t = msg.type
    if t == "edit" and msg.edit is not None and msg.edit.original_message_id:
        return MessageEdit(target_wamid=msg.edit.original_message_id, body=_body_of(msg))
    if t == "revoke" and msg.revoke is not None and msg.revoke.original_message_id:
        return MessageRevoke(target_wamid=msg.revoke.original_message_id)
    if t == "reaction" and msg.reaction is not None and msg.reaction.message_id:
        return MessageReaction(target_wamid=msg.reaction.message_id, emoji=msg.reaction.emoji or None)
    system = msg.system
    if t == "system" and system is not None and system.type in NUMBER_CHANGES:
        new = system.wa_id or system.new_wa_id
        if new and new != msg.from_:
            return NumberChange(new_wa_id=new)
    return None


def _body_of(msg: WireMessage) -> str | None:
    """The text a human would read first: body, caption, chosen title or emoji; else ``None``."""
    t = msg.type
    if t == "text" and msg.text is not None:
        return msg.text.body
    if t in ("image", "video", "document"):
        media: Media | None = getattr(msg, t)
        return media.caption if media is not None else None
    if t == "interactive" and msg.interactive is not None:
        it = msg.interactive
        if it.button_reply is not None:
            return it.button_reply.title
        if it.list_reply is not None:
            return it.list_reply.title
        if it.nfm_reply is not None:
            return it.nfm_reply.body
        return None
    if t == "button" and msg.button is not None:
        return msg.button.text
    if t == "reaction" and msg.reaction is not None:
        return msg.reaction.emoji or None  # missing or "" = reaction removed
    if t == "order" and msg.order is not None:
        return msg.order.text
    if t == "system" and msg.system is not None:
        return msg.system.body
    if t == "edit" and msg.edit is not None and msg.edit.message is not None:
        content = msg.edit.message
        if content.text is not None:
            return content.text.body
        edited: Media | None = content.image or content.video or content.document
        return edited.caption if edited is not None else None
    return None


def to_inbound_status(st: WireStatus, raw: dict[str, Any], phone_number_id: str) -> InboundStatus:
    """Translate one typed status to core's :class:`~core.models.InboundStatus`.

    ``error_code``/``error_title`` come from ``errors[0]`` (Meta sends errors on ``failed``).
    """
    err = st.errors[0] if st.errors else None
    return InboundStatus(
        phone_number_id=phone_number_id,
        wamid=st.id,
        status=st.status,
        timestamp=str(st.timestamp),
        recipient_id=st.recipient_id,
        error_code=err.code if err is not None else None,
        error_title=(err.title or err.message) if err is not None else None,
        raw=raw,
        message_id=message_id_from_callback(st.biz_opaque_callback_data),
    )
