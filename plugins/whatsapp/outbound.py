"""zaphub's outgoing message → Graph's send body, validated before it is queued.

A CRM, autoreply or a plugin describes a message as a ``type`` plus a type-specific ``content``
object. :func:`validate_content` checks it against Meta's documented limits (so a mistake is a
``400`` naming the field now, not a ``131009`` from Graph minutes later in the outbox) and returns
the normalised object; :func:`build_send_body` wraps it into ``POST /{v}/{PNID}/messages``'s body.

Normalised content is exactly the object Graph expects under the type's key, with two
conveniences accepted on input:

- media (``image``, ``document``, ``audio``, ``video``, ``sticker``): ``{"media_id": …}`` becomes
  Graph's ``{"id": …}``;
- template: ``"language": "pt_BR"`` becomes ``{"code": "pt_BR"}``;
- interactive buttons: ``{"id": …, "title": …}`` becomes ``{"type": "reply", "reply": {…}}``.

``contacts`` is the one type whose Graph value is a list: its content is ``{"contacts": [card, …]}``.

Validation is idempotent (normalised content validates to itself), so content can be re-checked
after an ``on_before_send`` hook changed it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from core.errors import ValidationFailed

__all__ = [
    "FREE_FORM_TYPES",
    "MEDIA_TYPES",
    "OUTBOUND_TYPES",
    "body_for",
    "build_send_body",
    "normalise_recipient",
    "validate_content",
]

MEDIA_TYPES: frozenset[str] = frozenset({"image", "document", "audio", "video", "sticker"})
OUTBOUND_TYPES: frozenset[str] = MEDIA_TYPES | {
    "text",
    "template",
    "interactive",
    "reaction",
    "location",
    "contacts",
}
#: Types allowed only inside the 24-hour customer service window: all but ``template``.
FREE_FORM_TYPES: frozenset[str] = OUTBOUND_TYPES - {"template"}

# Limits from Meta's "Text messages", "Image messages", "Interactive reply buttons/list messages"
# pages (reference sections 7.2).
TEXT_MAX = 4096
CAPTION_MAX = 1024
BUTTONS_MAX = 3
BUTTON_TITLE_MAX = 20
BUTTON_ID_MAX = 256
BUTTON_BODY_MAX = 1024
LIST_BODY_MAX = 4096
LIST_BUTTON_MAX = 20
LIST_SECTIONS_MAX = 10
LIST_ROWS_MAX = 10
LIST_ROW_ID_MAX = 200
LIST_ROW_TITLE_MAX = 24
LIST_ROW_DESCRIPTION_MAX = 72
LIST_SECTION_TITLE_MAX = 24
HEADER_TEXT_MAX = 60
FOOTER_MAX = 60
CALLBACK_DATA_MAX = 512

_NO_CAPTION = frozenset({"audio", "sticker"})
_MEDIA_HEADER_TYPES = frozenset({"image", "video", "document"})
# E.164: up to 15 digits, no leading zero. A wa_id is the same digits without "+".
_PHONE_RE = re.compile(r"\+?[1-9][0-9]{4,14}")


def _fail(message: str) -> ValidationFailed:
    return ValidationFailed(message)


def _require_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be an object")
    return value


def _reject_unknown(obj: dict[str, Any], where: str, allowed: frozenset[str] | set[str]) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise _fail(
            f"{where} does not take {', '.join(unknown)}: allowed fields are {', '.join(sorted(allowed))}"
        )


def _required_text(obj: dict[str, Any], key: str, where: str, *, max_len: int) -> str:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _fail(f"{where}.{key} is required")
    if not isinstance(value, str):
        raise _fail(f"{where}.{key} must be a string")
    if len(value) > max_len:
        raise _fail(f"{where}.{key} is longer than {max_len} characters")
    return value


def _optional_text(obj: dict[str, Any], key: str, where: str, *, max_len: int) -> str | None:
    """The string at ``key``, or ``None`` when absent or empty (Graph rejects empty strings)."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _fail(f"{where}.{key} must be a string")
    if len(value) > max_len:
        raise _fail(f"{where}.{key} is longer than {max_len} characters")
    return value


def _id_string(value: Any, where: str) -> str:
    # Graph ids are numeric strings; a JSON number is accepted because CRMs send both.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _fail(f"{where} must be a string")
    text = str(value).strip()
    if not text:
        raise _fail(f"{where} is required")
    return text


def _validate_text(content: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(content, "text", {"body", "preview_url"})
    out: dict[str, Any] = {"body": _required_text(content, "body", "text", max_len=TEXT_MAX)}
    preview = content.get("preview_url")
    if preview is not None:
        if not isinstance(preview, bool):
            raise _fail("text.preview_url must be true or false")
        out["preview_url"] = preview
    return out


def _validate_media(type_: str, content: dict[str, Any]) -> dict[str, Any]:
    allowed = {"link", "media_id", "id"}
    if type_ not in _NO_CAPTION:
        allowed.add("caption")
    if type_ == "document":
        allowed.add("filename")
    if "caption" in content and type_ in _NO_CAPTION:
        raise _fail(f"{type_} does not take a caption")
    if "filename" in content and type_ != "document":
        raise _fail(f"{type_} does not take a filename: only document does")
    _reject_unknown(content, type_, allowed)

    sources = [key for key in ("link", "media_id", "id") if content.get(key) not in (None, "")]
    if len(sources) != 1:
        raise _fail(f"{type_} needs exactly one of link or media_id")
    out: dict[str, Any] = {}
    if sources[0] == "link":
        link = content["link"]
        if not isinstance(link, str) or not link.startswith(("https://", "http://")):
            raise _fail(f"{type_}.link must be a public http(s) URL")
        out["link"] = link
    else:
        out["id"] = _id_string(content[sources[0]], f"{type_}.media_id")
    caption = _optional_text(content, "caption", type_, max_len=CAPTION_MAX)
    if caption:
        out["caption"] = caption
    filename = _optional_text(content, "filename", type_, max_len=255)
    if filename:
        out["filename"] = filename
    return out


def _validate_template(content: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(content, "template", {"name", "language", "components"})
    name = _required_text(content, "name", "template", max_len=512)
    language = content.get("language")
    if isinstance(language, str):
        language = {"code": language}
    if language is None:
        raise _fail("template.language.code is required (for example pt_BR)")
    language = dict(_require_dict(language, "template.language"))
    _reject_unknown(language, "template.language", {"code", "policy"})
    code = language.get("code")
    if not isinstance(code, str) or not code.strip():
        raise _fail("template.language.code is required (for example pt_BR)")
    out: dict[str, Any] = {"name": name, "language": language}
    components = content.get("components")
    if components is not None:
        if not isinstance(components, list):
            raise _fail("template.components must be a list")
        for index, component in enumerate(components):
            where = f"template.components[{index}]"
            component = _require_dict(component, where)
            if not isinstance(component.get("type"), str):
                raise _fail(f"{where}.type is required (header, body, button…)")
            if "parameters" in component and not isinstance(component["parameters"], list):
                raise _fail(f"{where}.parameters must be a list")
        # Parameters are passed through: Meta's parameter types grow (currency, date_time, named
        # variables, flows…) and Graph reports their errors with the template's own codes.
        out["components"] = components
    return out


def _validate_header(header: Any, where: str, *, media_allowed: bool) -> dict[str, Any]:
    header = _require_dict(header, where)
    kind = header.get("type")
    if kind == "text":
        _reject_unknown(header, where, {"type", "text"})
        return {"type": "text", "text": _required_text(header, "text", where, max_len=HEADER_TEXT_MAX)}
    if media_allowed and kind in _MEDIA_HEADER_TYPES:
        assert isinstance(kind, str)
        _reject_unknown(header, where, {"type", kind})
        media = _require_dict(header.get(kind), f"{where}.{kind}")
        if "caption" in media:
            raise _fail(f"{where}.{kind} does not take a caption: put the text in interactive.body")
        return {"type": kind, kind: _validate_media(kind, media)}
    allowed = "text, image, video or document" if media_allowed else "text"
    raise _fail(f"{where}.type must be {allowed}")


def _validate_body_footer(
    interactive: dict[str, Any], out: dict[str, Any], *, body_max: int, body_required: bool
) -> None:
    body = interactive.get("body")
    if body is None:
        if body_required:
            raise _fail("interactive.body.text is required")
    else:
        body = _require_dict(body, "interactive.body")
        out["body"] = {"text": _required_text(body, "text", "interactive.body", max_len=body_max)}
    footer = interactive.get("footer")
    if footer is not None:
        footer = _require_dict(footer, "interactive.footer")
        out["footer"] = {"text": _required_text(footer, "text", "interactive.footer", max_len=FOOTER_MAX)}


def _validate_buttons(interactive: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(interactive, "interactive", {"type", "header", "body", "footer", "action"})
    out: dict[str, Any] = {"type": "button"}
    if interactive.get("header") is not None:
        out["header"] = _validate_header(interactive["header"], "interactive.header", media_allowed=True)
    _validate_body_footer(interactive, out, body_max=BUTTON_BODY_MAX, body_required=True)
    action = _require_dict(interactive.get("action"), "interactive.action")
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not buttons:
        raise _fail("interactive button: action.buttons needs 1 to 3 buttons")
    if len(buttons) > BUTTONS_MAX:
        raise _fail(f"interactive button: at most {BUTTONS_MAX} buttons (got {len(buttons)})")
    normalised = []
    ids: set[str] = set()
    titles: set[str] = set()
    for index, button in enumerate(buttons):
        where = f"interactive.action.buttons[{index}]"
        button = _require_dict(button, where)
        reply = button.get("reply", button)  # accept the shorthand {"id", "title"}
        reply = _require_dict(reply, f"{where}.reply")
        button_id = _required_text(reply, "id", where, max_len=BUTTON_ID_MAX)
        title = _required_text(reply, "title", where, max_len=BUTTON_TITLE_MAX)
        if title in titles:
            raise _fail(f"interactive button: {where}.title {title!r} is used twice; titles must be unique")
        if button_id in ids:
            raise _fail(f"interactive button: {where}.id {button_id!r} is used twice; ids must be unique")
        ids.add(button_id)
        titles.add(title)
        normalised.append({"type": "reply", "reply": {"id": button_id, "title": title}})
    out["action"] = {"buttons": normalised}
    return out


def _validate_list(interactive: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(interactive, "interactive", {"type", "header", "body", "footer", "action"})
    out: dict[str, Any] = {"type": "list"}
    if interactive.get("header") is not None:
        out["header"] = _validate_header(interactive["header"], "interactive.header", media_allowed=False)
    _validate_body_footer(interactive, out, body_max=LIST_BODY_MAX, body_required=True)
    action = _require_dict(interactive.get("action"), "interactive.action")
    button = _required_text(action, "button", "interactive.action", max_len=LIST_BUTTON_MAX)
    sections = action.get("sections")
    if not isinstance(sections, list) or not sections:
        raise _fail("interactive list: action.sections needs at least one section")
    if len(sections) > LIST_SECTIONS_MAX:
        raise _fail(f"interactive list: at most {LIST_SECTIONS_MAX} sections (got {len(sections)})")
    total_rows = 0
    row_ids: set[str] = set()
    normalised_sections = []
    for s_index, section in enumerate(sections):
        where = f"interactive.action.sections[{s_index}]"
        section = _require_dict(section, where)
        title = _optional_text(section, "title", where, max_len=LIST_SECTION_TITLE_MAX)
        if title is None and len(sections) > 1:
            raise _fail(f"{where}.title is required when the list has more than one section")
        rows = section.get("rows")
        if not isinstance(rows, list) or not rows:
            raise _fail(f"interactive list: {where}.rows needs at least one row")
        total_rows += len(rows)
        if total_rows > LIST_ROWS_MAX:
            raise _fail(f"interactive list: at most {LIST_ROWS_MAX} rows in total across all sections")
        normalised_rows = []
        for r_index, row in enumerate(rows):
            row_where = f"{where}.rows[{r_index}]"
            row = _require_dict(row, row_where)
            _reject_unknown(row, row_where, {"id", "title", "description"})
            row_id = _required_text(row, "id", row_where, max_len=LIST_ROW_ID_MAX)
            if row_id in row_ids:
                raise _fail(
                    f"interactive list: {row_where}.id {row_id!r} is used twice; row ids must be unique"
                )
            row_ids.add(row_id)
            new_row: dict[str, Any] = {
                "id": row_id,
                "title": _required_text(row, "title", row_where, max_len=LIST_ROW_TITLE_MAX),
            }
            description = _optional_text(row, "description", row_where, max_len=LIST_ROW_DESCRIPTION_MAX)
            if description:
                new_row["description"] = description
            normalised_rows.append(new_row)
        new_section: dict[str, Any] = {"rows": normalised_rows}
        if title:
            new_section = {"title": title, **new_section}
        normalised_sections.append(new_section)
    out["action"] = {"button": button, "sections": normalised_sections}
    return out


def _validate_interactive(content: dict[str, Any]) -> dict[str, Any]:
    kind = content.get("type")
    if not isinstance(kind, str) or not kind:
        raise _fail("interactive.type is required (button, list, cta_url, flow, …)")
    if kind == "button":
        return _validate_buttons(content)
    if kind == "list":
        return _validate_list(content)
    # cta_url, flow, product, carousel…: Meta keeps adding kinds, so they pass through with only
    # the shape every kind shares checked.
    _require_dict(content.get("action"), "interactive.action")
    out = dict(content)
    if content.get("body") is not None or content.get("footer") is not None:
        _validate_body_footer(content, out, body_max=TEXT_MAX, body_required=False)
    return out


def _validate_reaction(content: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(content, "reaction", {"message_id", "emoji"})
    message_id = content.get("message_id")
    if not isinstance(message_id, str) or not message_id.strip():
        raise _fail("reaction.message_id is required: the wamid of the message you react to")
    emoji = content.get("emoji")
    if not isinstance(emoji, str):
        raise _fail('reaction.emoji is required (use "" to remove a reaction)')
    if len(emoji) > 16:
        raise _fail("reaction.emoji must be a single emoji")
    return {"message_id": message_id, "emoji": emoji}


def _coordinate(content: dict[str, Any], key: str, limit: float) -> float:
    value = content.get(key)
    if value is None:
        raise _fail(f"location.{key} is required")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(f"location.{key} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise _fail(f"location.{key} must be a number") from None
    if not math.isfinite(number) or abs(number) > limit:
        raise _fail(f"location.{key} must be between -{limit:g} and {limit:g}")
    return number


def _validate_location(content: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(content, "location", {"latitude", "longitude", "name", "address"})
    out: dict[str, Any] = {
        "latitude": _coordinate(content, "latitude", 90.0),
        "longitude": _coordinate(content, "longitude", 180.0),
    }
    for key in ("name", "address"):
        value = _optional_text(content, key, "location", max_len=1024)
        if value:
            out[key] = value
    return out


def _validate_contacts(content: dict[str, Any]) -> dict[str, Any]:
    if "contacts" not in content and "name" in content:
        content = {"contacts": [content]}  # a single card, as a CRM naturally writes it
    _reject_unknown(content, "contacts", {"contacts"})
    cards = content.get("contacts")
    if not isinstance(cards, list) or not cards:
        raise _fail("contacts.contacts needs at least one contact card")
    for index, card in enumerate(cards):
        where = f"contacts.contacts[{index}]"
        card = _require_dict(card, where)
        name = _require_dict(card.get("name"), f"{where}.name")
        _required_text(name, "formatted_name", f"{where}.name", max_len=1024)
        phones = card.get("phones")
        if phones is not None and not isinstance(phones, list):
            raise _fail(f"{where}.phones must be a list")
    return {"contacts": cards}


_VALIDATORS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "text": _validate_text,
    "template": _validate_template,
    "interactive": _validate_interactive,
    "reaction": _validate_reaction,
    "location": _validate_location,
    "contacts": _validate_contacts,
}


def validate_content(type_: str, content: dict[str, Any]) -> dict[str, Any]:
    """Check one outgoing message's content and return it normalised to Graph's shape.

    Args:
        type_: one of :data:`OUTBOUND_TYPES`.
        content: the type-specific object, in Graph's shape or zaphub's friendly form
            (``{"media_id": …}`` for media, ``"language": "pt_BR"`` for templates).

    Returns:
        A new dict: the object Graph expects under the key named ``type_`` (for ``contacts``,
        ``{"contacts": [...]}``).

    Raises:
        ValidationFailed: the message names the field and the fix, for example
            ``"text.body is longer than 4096 characters"``.

    Example:
        >>> validate_content("image", {"media_id": "123", "caption": "Recibo"})
        {'id': '123', 'caption': 'Recibo'}
    """
    if type_ not in OUTBOUND_TYPES:
        raise _fail(f"type {type_!r} cannot be sent: use one of {', '.join(sorted(OUTBOUND_TYPES))}")
    # A JSON null means "not given" (CRMs serialise absent optionals that way); Graph wants neither.
    content = {key: value for key, value in _require_dict(content, type_).items() if value is not None}
    if type_ in MEDIA_TYPES:
        return _validate_media(type_, content)
    return _VALIDATORS[type_](content)


def normalise_recipient(to: str) -> str:
    """Return ``to`` as ``+``-prefixed international digits, which is what Graph's ``to`` needs.

    Without the ``+`` Meta prepends the *business* number's country code and may misdeliver
    (reference 7.1), so a bare ``wa_id`` gets one.

    Raises:
        ValidationFailed: ``to`` is not a phone number / ``wa_id``.
    """
    candidate = to.strip() if isinstance(to, str) else ""
    if not _PHONE_RE.fullmatch(candidate):
        raise _fail("to must be a phone number in international format: digits with country code, optional +")
    return candidate if candidate.startswith("+") else f"+{candidate}"


def build_send_body(
    *,
    to: str,
    type_: str,
    content: dict[str, Any],
    context_wamid: str | None = None,
    biz_opaque_callback_data: str | None = None,
) -> dict[str, Any]:
    """Build the JSON body of ``POST /{v}/{PNID}/messages``.

    Args:
        to: the recipient's ``wa_id`` or phone number (``5511999999999`` or ``+5511999999999``).
        type_: the message type.
        content: the type-specific object (validated and normalised here).
        context_wamid: the wamid this message replies to (shown quoted on the user's phone).
        biz_opaque_callback_data: up to 512 characters Meta echoes back in status webhooks.

    Returns:
        The body, ready for :meth:`plugins.whatsapp.client.GraphClient.send`.

    Raises:
        ValidationFailed: bad recipient, content or callback data.
    """
    normalised = validate_content(type_, content)
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": normalise_recipient(to),
        "type": type_,
    }
    if context_wamid:
        body["context"] = {"message_id": context_wamid}
    body[type_] = normalised["contacts"] if type_ == "contacts" else normalised
    if biz_opaque_callback_data is not None:
        if len(biz_opaque_callback_data) > CALLBACK_DATA_MAX:
            raise _fail(f"biz_opaque_callback_data is longer than {CALLBACK_DATA_MAX} characters")
        body["biz_opaque_callback_data"] = biz_opaque_callback_data
    return body


def body_for(type_: str, content: dict[str, Any]) -> str | None:
    """What zaphub shows as a message's ``body``.

    Text body, media caption, template name, reaction emoji or the interactive body text;
    ``None`` for anything else (location, contacts, a removed reaction). Works on normalised and
    friendly content alike and never raises.
    """
    if not isinstance(content, dict):
        return None
    value: Any = None
    if type_ == "text":
        value = content.get("body")
    elif type_ in MEDIA_TYPES:
        value = content.get("caption")
    elif type_ == "template":
        value = content.get("name")
    elif type_ == "reaction":
        value = content.get("emoji")
    elif type_ == "interactive":
        body = content.get("body")
        value = body.get("text") if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None
