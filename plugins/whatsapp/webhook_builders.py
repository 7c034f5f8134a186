"""Public builders of Meta webhook bodies: every message kind, statuses, errors, signatures.

Use them to test a plugin (docs/plugins.md, "Testing a plugin"), to drive ``zaphub simulate``
and the sandbox. Every builder is a pure function returning plain dicts shaped exactly as Meta's
webhook reference shows them (envelope, message types, statuses). Message builders return one
message object; :func:`envelope` wraps messages and statuses in the full POST body;
:func:`encode` turns it into the bytes Meta would send, :func:`sign` computes the
``X-Hub-Signature-256`` header and :func:`signed` does both.

Example:
    >>> from plugins.whatsapp import webhook_builders as wb
    >>> msg = wb.text("Olá! Qual o preço?", context=wb.reply_to("wamid.HBgLSENT"))
    >>> body = wb.encode(wb.envelope(messages=[msg]))
    >>> headers = {"X-Hub-Signature-256": wb.sign(body, "app-secret")}

Every message builder accepts the keyword options of :class:`MessageOptions` (``wamid``,
``from_``, ``timestamp``, ``context``, ``referral``, ``errors``). Wamids default to unique fake
``wamid.HBgL…`` strings and timestamps to "now" as a string of Unix seconds, as Meta sends them.
The names in ``__all__`` are a public API: they change only with a changelog entry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

__all__ = [
    "DEFAULT_DISPLAY_PHONE_NUMBER",
    "DEFAULT_FROM",
    "DEFAULT_PHONE_NUMBER_ID",
    "DEFAULT_WABA_ID",
    "ERROR_TITLES",
    "MessageOptions",
    "account_update",
    "ad_referral",
    "audio",
    "button",
    "button_reply",
    "change",
    "contact",
    "contact_card",
    "contacts",
    "document",
    "encode",
    "envelope",
    "error",
    "flow_reply",
    "forwarded",
    "image",
    "list_reply",
    "location",
    "merge",
    "message",
    "new_wamid",
    "order",
    "product_inquiry",
    "profile_name_for",
    "reaction",
    "reply_to",
    "request_welcome",
    "sign",
    "signed",
    "status",
    "sticker",
    "system",
    "text",
    "unsupported",
    "video",
]

DEFAULT_FROM = "5511999999999"
"""The default sender: a São Paulo mobile number, digits only as Meta sends it."""
DEFAULT_PHONE_NUMBER_ID = "100000000000002"
DEFAULT_DISPLAY_PHONE_NUMBER = "15551234567"
DEFAULT_WABA_ID = "100000000000001"

_NAMES = (
    "João Silva",
    "Maria Oliveira",
    "Ana Souza",
    "José Santos",
    "Francisca Lima",
    "Antônio Pereira",
    "Luíza Costa",
    "Conceição Araújo",
)

#: Titles Meta uses for the error codes a receiver meets most (reference section 8.2).
ERROR_TITLES: dict[int, str] = {
    131000: "Something went wrong",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131049: "This message was not delivered to maintain healthy ecosystem engagement.",
    131050: "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
    "messages on WhatsApp from your business.",
    131051: "Message type unknown",
    131052: "Media download error",
    131053: "Media upload error",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    131060: "This message is currently unavailable",
    130429: "Rate limit hit",
    132001: "Template does not exist",
}

_ERROR_DETAILS: dict[int, str] = {
    131026: "Message Undeliverable.",
    131047: "Message failed to send because more than 24 hours have passed since the customer last "
    "replied to this number.",
    131049: "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    131051: "Message type is currently not supported.",
}


class MessageOptions(TypedDict, total=False):
    """Keyword options every message builder accepts.

    Attributes:
        wamid: The message id; default a fresh fake ``wamid.HBgL…``.
        from_: The sender's number, digits only (Meta's ``from``); default :data:`DEFAULT_FROM`.
        timestamp: Unix seconds (int or string); default now. Always sent as a string.
        context: A ``context`` object, e.g. from :func:`reply_to` or :func:`forwarded`.
        referral: A ``referral`` object from :func:`ad_referral` (click-to-WhatsApp ad).
        errors: Message-level ``errors[]`` (only ``unsupported`` messages carry them).
    """

    wamid: str
    from_: str
    timestamp: int | str
    context: dict[str, Any]
    referral: dict[str, Any]
    errors: list[dict[str, Any]]


# --- ids, names, small objects -------------------------------------------------------------------


def new_wamid(from_: str = DEFAULT_FROM) -> str:
    """A unique fake wamid shaped like Meta's (``wamid.HBgL`` + base64, may end with ``=``)."""
    raw = f"{from_}\x15\x02\x00\x12\x18\x14{uuid.uuid4().hex.upper()}\x00".encode()
    return "wamid.HBgL" + base64.b64encode(raw).decode("ascii")


def _now() -> str:
    return str(int(time.time()))


def _ts(timestamp: int | str | None) -> str:
    return _now() if timestamp is None else str(timestamp)


def _sha256() -> str:
    return base64.b64encode(hashlib.sha256(uuid.uuid4().bytes).digest()).decode("ascii")


def _media_id() -> str:
    # Media ids are long decimal strings.
    return str(1_000_000_000_000_000 + uuid.uuid4().int % 9_000_000_000_000_000)


def profile_name_for(wa_id: str) -> str:
    """A stable Portuguese display name for a number (the same number always gets the same name)."""
    if wa_id == DEFAULT_FROM:
        return _NAMES[0]
    return _NAMES[zlib.crc32(wa_id.encode()) % len(_NAMES)]


def reply_to(wamid: str, *, from_: str = DEFAULT_DISPLAY_PHONE_NUMBER) -> dict[str, Any]:
    """A ``context`` for a swipe-reply to ``wamid`` (also what interactive/button replies carry)."""
    return {"from": from_, "id": wamid}


def forwarded(*, frequently: bool = False) -> dict[str, Any]:
    """A ``context`` for a forwarded message (``frequently``: forwarded more than 5 times)."""
    return {"frequently_forwarded": True} if frequently else {"forwarded": True}


def product_inquiry(
    wamid: str,
    *,
    catalog_id: str = "194836987003835",
    product_retailer_id: str = "camiseta-azul-m",
    from_: str = DEFAULT_DISPLAY_PHONE_NUMBER,
) -> dict[str, Any]:
    """A ``context`` for "Message business" tapped on a catalog product."""
    return {
        "from": from_,
        "id": wamid,
        "referred_product": {"catalog_id": catalog_id, "product_retailer_id": product_retailer_id},
    }


def ad_referral(
    *,
    headline: str = "Promoção de verão",
    body: str = "Fale com a gente no WhatsApp e ganhe 10% de desconto!",
    source_type: str = "ad",
    media_type: str = "image",
    ctwa_clid: str
    | None = "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRMXP",
) -> dict[str, Any]:
    """A ``referral`` object: the message came from a click-to-WhatsApp ad or post."""
    ref: dict[str, Any] = {
        "source_url": "https://fb.me/3cr4Wqqkn",
        "source_id": "120200000000000001",
        "source_type": source_type,
        "headline": headline,
        "body": body,
        "media_type": media_type,
    }
    if media_type == "video":
        ref["video_url"] = "https://video.xx.fbcdn.net/v/t42.1790-2/ad.mp4"
        ref["thumbnail_url"] = "https://scontent.xx.fbcdn.net/v/t45.1600-4/thumb.jpg"
    else:
        ref["image_url"] = "https://scontent.xx.fbcdn.net/v/t45.1600-4/ad.jpg"
    if ctwa_clid is not None:  # Meta omits it for WhatsApp Status ads
        ref["ctwa_clid"] = ctwa_clid
    return ref


def error(
    code: int, title: str | None = None, *, details: str | None = None, href: bool = True
) -> dict[str, Any]:
    """One ``errors[]`` item as Meta sends it (``title`` and ``message`` carry the same text)."""
    title = title or ERROR_TITLES.get(code, f"Error {code}")
    err: dict[str, Any] = {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details or _ERROR_DETAILS.get(code, title)},
    }
    if href:
        err["href"] = "/documentation/business-messaging/whatsapp/support/error-codes"
    return err


# --- messages ------------------------------------------------------------------------------------


def message(type_: str, obj: Any = None, **opts: Unpack[MessageOptions]) -> dict[str, Any]:
    """Any inbound message: ``type_`` and its type-specific object (``None``: no object).

    Use it for a type Meta invents tomorrow: ``message("poll", {"question": "Pizza?"})``.
    """
    from_ = opts.get("from_", DEFAULT_FROM)
    msg: dict[str, Any] = {}
    if "context" in opts:
        msg["context"] = opts["context"]
    msg["from"] = from_
    msg["id"] = opts.get("wamid") or new_wamid(from_)
    msg["timestamp"] = _ts(opts.get("timestamp"))
    msg["type"] = type_
    if "referral" in opts:
        msg["referral"] = opts["referral"]
    if "errors" in opts:
        msg["errors"] = opts["errors"]
    if obj is not None:
        msg[type_] = obj
    return msg


def text(body: str, **opts: Unpack[MessageOptions]) -> dict[str, Any]:
    """A text message."""
    return message("text", {"body": body}, **opts)


def _media(
    type_: str,
    *,
    media_id: str | None,
    mime_type: str,
    caption: str | None = None,
    url: str | None = None,
    extra: Mapping[str, Any] | None = None,
    opts: MessageOptions,
) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if caption is not None:
        obj["caption"] = caption
    obj["mime_type"] = mime_type
    obj["sha256"] = _sha256()
    obj["id"] = media_id or _media_id()
    if url is not None:
        obj["url"] = url
    if extra:
        obj.update(extra)
    return message(type_, obj, **opts)


def image(
    *,
    caption: str | None = None,
    media_id: str | None = None,
    mime_type: str = "image/jpeg",
    url: str | None = None,
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """An image (``url`` is the lookaside URL newer webhook versions add)."""
    return _media("image", media_id=media_id, mime_type=mime_type, caption=caption, url=url, opts=opts)


def video(
    *,
    caption: str | None = None,
    media_id: str | None = None,
    mime_type: str = "video/mp4",
    url: str | None = None,
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """A video."""
    return _media("video", media_id=media_id, mime_type=mime_type, caption=caption, url=url, opts=opts)


def audio(
    *,
    voice: bool = True,
    media_id: str | None = None,
    mime_type: str | None = None,
    url: str | None = None,
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """An audio: a recorded voice note (``voice=True``) or an attached audio file."""
    mime = mime_type or ("audio/ogg; codecs=opus" if voice else "audio/mpeg")
    return _media("audio", media_id=media_id, mime_type=mime, url=url, extra={"voice": voice}, opts=opts)


def document(
    *,
    filename: str = "orçamento.pdf",
    caption: str | None = None,
    media_id: str | None = None,
    mime_type: str = "application/pdf",
    url: str | None = None,
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """A document."""
    return _media(
        "document",
        media_id=media_id,
        mime_type=mime_type,
        caption=caption,
        url=url,
        extra={"filename": filename},
        opts=opts,
    )


def sticker(
    *,
    animated: bool = False,
    media_id: str | None = None,
    mime_type: str = "image/webp",
    url: str | None = None,
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """A sticker."""
    return _media(
        "sticker", media_id=media_id, mime_type=mime_type, url=url, extra={"animated": animated}, opts=opts
    )


def location(
    latitude: float = -23.561414,
    longitude: float = -46.655881,
    *,
    name: str | None = None,
    address: str | None = None,
    url: str | None = None,
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """A shared location (a chosen place also has ``name``/``address``/``url``)."""
    obj: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    if name is not None:
        obj["name"] = name
    if address is not None:
        obj["address"] = address
    if url is not None:
        obj["url"] = url
    return message("location", obj, **opts)


def contact_card(
    formatted_name: str = "Maria Oliveira",
    phone: str = "+55 21 98888-7777",
    *,
    wa_id: str | None = "5521988887777",
    email: str | None = None,
    company: str | None = None,
) -> dict[str, Any]:
    """One vCard of a ``contacts`` message."""
    first, _, last = formatted_name.partition(" ")
    name: dict[str, Any] = {"formatted_name": formatted_name, "first_name": first}
    if last:
        name["last_name"] = last
    phone_obj: dict[str, Any] = {"phone": phone, "type": "CELL"}
    if wa_id is not None:
        phone_obj["wa_id"] = wa_id
    card: dict[str, Any] = {"name": name, "phones": [phone_obj]}
    if email is not None:
        card["emails"] = [{"email": email, "type": "WORK"}]
    if company is not None:
        card["org"] = {"company": company}
    return card


def contacts(cards: Sequence[dict[str, Any]] | None = None, **opts: Unpack[MessageOptions]) -> dict[str, Any]:
    """A shared-contacts message (``cards`` from :func:`contact_card`; default one card)."""
    return message("contacts", list(cards) if cards is not None else [contact_card()], **opts)


def _with_reply_context(opts: MessageOptions) -> MessageOptions:
    # Replies to something we sent always carry context.id = our message.
    if "context" not in opts:
        opts["context"] = reply_to(new_wamid(opts.get("from_", DEFAULT_FROM)))
    return opts


def button_reply(
    title: str = "Sim, confirmar", id_: str = "confirm_yes", **opts: Unpack[MessageOptions]
) -> dict[str, Any]:
    """A tap on an interactive reply button (default ``context``: a reply to a fresh wamid)."""
    obj = {"type": "button_reply", "button_reply": {"id": id_, "title": title}}
    return message("interactive", obj, **_with_reply_context(opts))


def list_reply(
    title: str = "Entrega expressa",
    id_: str = "ship_express",
    *,
    description: str | None = "Chega amanhã",
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """A row chosen in an interactive list."""
    row: dict[str, Any] = {"id": id_, "title": title}
    if description is not None:
        row["description"] = description
    obj = {"type": "list_reply", "list_reply": row}
    return message("interactive", obj, **_with_reply_context(opts))


def flow_reply(
    response: Mapping[str, Any] | None = None,
    *,
    flow_token: str | None = "flow-token-123",
    body: str = "Sent",
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """A completed WhatsApp Flow (``interactive.nfm_reply``; ``response_json`` is a JSON string)."""
    data: dict[str, Any] = dict(response or {"nome": "João Silva", "cidade": "São Paulo"})
    if flow_token is not None:
        data.setdefault("flow_token", flow_token)
    obj = {
        "type": "nfm_reply",
        "nfm_reply": {
            "name": "flow",
            "body": body,
            "response_json": json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        },
    }
    return message("interactive", obj, **_with_reply_context(opts))


def button(
    text: str = "Quero saber mais", payload: str = "SABER_MAIS", **opts: Unpack[MessageOptions]
) -> dict[str, Any]:
    """A quick-reply button tapped on a *template* (type ``button``, not an interactive reply)."""
    return message("button", {"payload": payload, "text": text}, **_with_reply_context(opts))


def reaction(message_id: str, emoji: str | None = "👍", **opts: Unpack[MessageOptions]) -> dict[str, Any]:
    """A reaction to ``message_id``; ``emoji=None`` is a removed reaction (Meta omits the key).

    A removal has also been seen with ``emoji: ""``; pass ``emoji=""`` to build that.
    """
    obj: dict[str, Any] = {"message_id": message_id}
    if emoji is not None:
        obj["emoji"] = emoji
    return message("reaction", obj, **opts)


def edit(
    original_wamid: str, body: str = "Texto corrigido", **opts: Unpack[MessageOptions]
) -> dict[str, Any]:
    """The user edited their text message ``original_wamid``: its new ``body``."""
    obj = {"original_message_id": original_wamid, "message": {"type": "text", "text": {"body": body}}}
    return message("edit", obj, **opts)


def revoke(original_wamid: str, **opts: Unpack[MessageOptions]) -> dict[str, Any]:
    """The user deleted their message ``original_wamid`` for everyone."""
    return message("revoke", {"original_message_id": original_wamid}, **opts)


def order(
    product_items: Sequence[Mapping[str, Any]] | None = None,
    *,
    text: str | None = "Pode entregar à tarde?",
    catalog_id: str = "194836987003835",
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """An order placed from the catalog (``text`` is the optional note)."""
    items = (
        [dict(i) for i in product_items]
        if product_items is not None
        else [
            {"product_retailer_id": "camiseta-azul-m", "quantity": 2, "item_price": 59.9, "currency": "BRL"},
            {"product_retailer_id": "bone-preto", "quantity": 1, "item_price": 39.9, "currency": "BRL"},
        ]
    )
    obj: dict[str, Any] = {"catalog_id": catalog_id, "product_items": items}
    if text is not None:
        obj["text"] = text
    return message("order", obj, **opts)


def system(
    new_wa_id: str = "5511988887777",
    *,
    body: str | None = None,
    system_type: str = "user_changed_number",
    **opts: Unpack[MessageOptions],
) -> dict[str, Any]:
    """A system message: the user changed number (the envelope then has no ``contacts[]``)."""
    from_ = opts.get("from_", DEFAULT_FROM)
    text_ = body or f"{profile_name_for(from_)} changed from {from_} to {new_wa_id}"
    return message("system", {"body": text_, "wa_id": new_wa_id, "type": system_type}, **opts)


def unsupported(
    kind: str | None = "poll_creation", *, code: int = 131051, **opts: Unpack[MessageOptions]
) -> dict[str, Any]:
    """A message type the Cloud API cannot deliver (``errors[]`` with 131051, or 131060)."""
    opts.setdefault("errors", [error(code, href=False)])
    return message("unsupported", {"type": kind} if kind is not None else None, **opts)


def request_welcome(**opts: Unpack[MessageOptions]) -> dict[str, Any]:
    """The user opened the chat for the first time (no type object)."""
    return message("request_welcome", None, **opts)


# --- statuses ------------------------------------------------------------------------------------


def status(
    wamid: str,
    status: str = "delivered",
    *,
    timestamp: int | str | None = None,
    recipient_id: str = DEFAULT_FROM,
    error_code: int | None = None,
    error_title: str | None = None,
    pricing: bool | None = None,
    conversation: bool | None = None,
    category: str = "service",
    biz_opaque_callback_data: str | None = None,
) -> dict[str, Any]:
    """A status for a message we sent.

    ``pricing``/``conversation`` default to what Meta (≤ v23) sends: present on ``sent`` and
    ``delivered``, absent on ``read``/``failed``. A ``failed`` status always has ``errors[]``
    (default code 131026 "Message undeliverable").
    """
    st: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": _ts(timestamp),
        "recipient_id": recipient_id,
    }
    if biz_opaque_callback_data is not None:
        st["biz_opaque_callback_data"] = biz_opaque_callback_data
    billed = status in ("sent", "delivered")
    if conversation if conversation is not None else billed:
        conv: dict[str, Any] = {"id": uuid.uuid4().hex, "origin": {"type": category}}
        if status == "sent":
            conv["expiration_timestamp"] = str(int(st["timestamp"]) + 24 * 3600)
        st["conversation"] = conv
    if pricing if pricing is not None else billed:
        st["pricing"] = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": category}
    if status == "failed" or error_code is not None:
        st["errors"] = [error(error_code or 131026, error_title)]
    return st


# --- envelopes -----------------------------------------------------------------------------------


def contact(wa_id: str, name: str | None = None, *, user_id: str | None = None) -> dict[str, Any]:
    """One ``value.contacts[]`` item (default name from :func:`profile_name_for`; ``""`` keeps empty)."""
    item: dict[str, Any] = {"profile": {"name": profile_name_for(wa_id) if name is None else name}}
    item["wa_id"] = wa_id
    if user_id is not None:
        item["user_id"] = user_id
    return item


def change(field: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """One ``entry[].changes[]`` item for any subscription field."""
    return {"value": dict(value), "field": field}


def account_update(
    event: str = "VERIFIED_ACCOUNT", *, waba_id: str = DEFAULT_WABA_ID, timestamp: int | None = None
) -> dict[str, Any]:
    """A non-message change (field ``account_update``), for :func:`envelope`'s ``extra_changes``."""
    return change(
        "account_update",
        {"phone_number": DEFAULT_DISPLAY_PHONE_NUMBER, "event": event, "waba_info": {"waba_id": waba_id}}
        | ({"timestamp": timestamp} if timestamp is not None else {}),
    )


def envelope(
    *,
    messages: Iterable[Mapping[str, Any]] = (),
    statuses: Iterable[Mapping[str, Any]] = (),
    contacts: Sequence[Mapping[str, Any]] | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
    extra_changes: Iterable[Mapping[str, Any]] = (),
    object_: str = "whatsapp_business_account",
) -> dict[str, Any]:
    """A full webhook POST body: one entry with one ``messages`` change (plus ``extra_changes``).

    ``contacts`` defaults to one item per distinct sender (``from``) of the messages, with a
    profile name; ``system`` messages add none (Meta sends no ``contacts[]`` with them). Pass
    ``contacts=[]`` to leave the array out. The ``messages`` change is left out when only
    ``extra_changes`` are given. Combine bodies with :func:`merge`.
    """
    msgs = [dict(m) for m in messages]
    sts = [dict(s) for s in statuses]
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
    }
    if contacts is None:
        senders = dict.fromkeys(m["from"] for m in msgs if m.get("type") != "system" and "from" in m)
        contacts = [contact(s) for s in senders]
    if contacts:
        value["contacts"] = [dict(c) for c in contacts]
    if msgs:
        value["messages"] = msgs
    if sts:
        value["statuses"] = sts
    if errors:
        value["errors"] = [dict(e) for e in errors]
    changes = [dict(c) for c in extra_changes]
    if msgs or sts or errors or not changes:
        changes.insert(0, change("messages", value))
    return {"object": object_, "entry": [{"id": waba_id, "changes": changes}]}


def merge(*envelopes: Mapping[str, Any]) -> dict[str, Any]:
    """One body holding the entries of several envelopes (Meta batches up to 1,000 updates)."""
    entries: list[Any] = []
    for env in envelopes:
        entries.extend(env["entry"])
    obj = envelopes[0]["object"] if envelopes else "whatsapp_business_account"
    return {"object": obj, "entry": entries}


# --- bytes on the wire ---------------------------------------------------------------------------


def encode(payload: Any, *, escape_slashes: bool = False) -> bytes:
    r"""The body as Meta sends it: compact JSON, non-ASCII escaped as ``\uXXXX`` (lowercase hex).

    ``escape_slashes=True`` also writes ``/`` as ``\/``, as some real deliveries do; a receiver
    that hashes the raw bytes does not care, one that re-serializes breaks (which is the point).
    """
    # json.dumps escapes with lowercase hex (and surrogate pairs above U+FFFF), like Meta.
    text_ = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    if escape_slashes:
        text_ = text_.replace("/", "\\/")
    return text_.encode("ascii")


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value for ``body``: ``sha256=<64 lowercase hex>``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def signed(payload: Any, app_secret: str) -> tuple[bytes, dict[str, str]]:
    """Encoded body and the headers Meta sends with it, ready to POST."""
    body = encode(payload)
    return body, {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, app_secret)}
