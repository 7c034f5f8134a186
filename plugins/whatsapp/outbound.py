"""zaphub's outgoing message → Graph's send body, validated before it is queued.

A CRM, autoreply or a plugin describes a message as a ``type`` plus a type-specific ``content``
object. :func:`validate_content` checks it against Meta's rules, which live in
:mod:`plugins.whatsapp.send_rules` (so a mistake is a ``400`` naming the field and the limit now,
not a ``131009`` from Graph minutes later in the outbox), and returns the normalised object;
:func:`build_send_body` wraps it into ``POST /{v}/{PNID}/messages``'s body.

Normalised content is exactly the object Graph expects under the type's key, with a few
conveniences accepted on input (this module's only rules are about them):

- media (``image``, ``document``, ``audio``, ``video``, ``sticker``, and media headers of
  interactive messages): ``{"media_id": …}`` becomes Graph's ``{"id": …}``, a number is accepted;
- template: ``"language": "pt_BR"`` becomes ``{"code": "pt_BR"}``;
- interactive buttons: ``{"id": …, "title": …}`` becomes ``{"type": "reply", "reply": {…}}``;
- contacts: one card (``{"name": …}``) becomes ``{"contacts": [card]}``;
- location: coordinates written as strings become numbers;
- a JSON ``null`` means "not given", an empty optional text (a caption) means "none".

``contacts`` is the one type whose Graph value is a list: its content is ``{"contacts": [card, …]}``.

Validation is idempotent (normalised content validates to itself), so content can be re-checked
after an ``on_before_send`` hook changed it.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from core.errors import ValidationFailed
from plugins.whatsapp.send_rules import (
    CALLBACK_DATA_MAX,
    CONTENT_TYPES,
    MEDIA_TYPES,
    RuleViolation,
    check_content,
)

__all__ = [
    "FREE_FORM_TYPES",
    "MEDIA_TYPES",
    "OUTBOUND_TYPES",
    "body_for",
    "build_send_body",
    "normalise_recipient",
    "validate_content",
]

OUTBOUND_TYPES: frozenset[str] = frozenset(CONTENT_TYPES)
#: Types allowed only inside the 24-hour customer service window: all but ``template``.
FREE_FORM_TYPES: frozenset[str] = OUTBOUND_TYPES - {"template"}

# E.164: up to 15 digits, no leading zero. A wa_id is the same digits without "+".
_PHONE_RE = re.compile(r"\+?[1-9][0-9]{4,14}")
_MEDIA_HEADERS = frozenset({"image", "video", "document"})

# What to add after "… is required" for fields whose fix is not obvious.
_REQUIRED_HINTS = {
    "template.language": "for example pt_BR",
    "template.language.code": "for example pt_BR",
    "interactive.type": "button, list, cta_url, flow, …",
    "reaction.message_id": "the wamid of the message you react to",
    "reaction.emoji": 'use "" to remove a reaction',
}
_TYPE_WORDS = {
    "string": "a string",
    "object": "an object",
    "array": "a list",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
}


def _fail(message: str) -> ValidationFailed:
    return ValidationFailed(message)


def _require_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be an object")
    return value


def _friendly_media(media: Any, where: str) -> Any:
    """``media_id`` (or a numeric id) → Graph's string ``id``; exactly one source."""
    if not isinstance(media, dict):
        return media
    sources = [key for key in ("link", "media_id", "id") if media.get(key) not in (None, "")]
    if len(sources) != 1:
        raise _fail(f"{where} needs exactly one of link or media_id")
    out = {key: value for key, value in media.items() if key not in ("link", "media_id", "id")}
    value = media[sources[0]]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # Graph ids are numeric strings; CRMs send both
    out["link" if sources[0] == "link" else "id"] = value
    return out


def _friendly_interactive(content: dict[str, Any]) -> dict[str, Any]:
    out = dict(content)
    header = out.get("header")
    if isinstance(header, dict) and header.get("type") in _MEDIA_HEADERS:
        kind = header["type"]
        out["header"] = {**header, kind: _friendly_media(header.get(kind), f"interactive.header.{kind}")}
    action = out.get("action")
    if out.get("type") == "button" and isinstance(action, dict) and isinstance(action.get("buttons"), list):
        buttons = [
            {"type": "reply", "reply": button}
            if isinstance(button, dict) and "reply" not in button
            else button
            for button in action["buttons"]
        ]
        out["action"] = {**action, "buttons": buttons}
    return out


def _coordinates(content: dict[str, Any]) -> dict[str, Any]:
    out = dict(content)
    for key in ("latitude", "longitude"):
        if isinstance(out.get(key), str):
            with contextlib.suppress(ValueError):  # not a number: the rules say so
                out[key] = float(out[key])
    return out


def _friendly(type_: str, content: dict[str, Any]) -> dict[str, Any]:
    """Rewrite zaphub's conveniences (module docstring) into Graph's shape."""
    if type_ in MEDIA_TYPES:
        return _friendly_media(content, type_)  # type: ignore[no-any-return]  # content is a dict
    if type_ == "template" and isinstance(content.get("language"), str):
        return {**content, "language": {"code": content["language"]}}
    if type_ == "interactive":
        return _friendly_interactive(content)
    if type_ == "contacts" and "contacts" not in content and "name" in content:
        return {"contacts": [content]}  # a single card, as a CRM naturally writes it
    if type_ == "location":
        return _coordinates(content)
    return content


def _explain(type_: str, violation: RuleViolation) -> str:
    """Word a broken rule for zaphub's API: the field as a dotted path, the limit, the fix."""

    def dotted(path: tuple[str | int, ...]) -> str:
        return type_ + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)

    where = dotted(violation.path)
    match violation.problem:
        case "required":
            hint = _REQUIRED_HINTS.get(where)
            return f"{where} is required" + (f" ({hint})" if hint else "")
        case "too_long":
            return f"{where} is longer than {violation.limit} characters"
        case "too_many":
            return f"{where} takes at most {violation.limit} items"
        case "too_few":
            return f"{where} needs at least {violation.limit} item{'s' if violation.limit != 1 else ''}"
        case "unknown_field":
            allowed = violation.allowed
            if "link" in allowed:  # media: callers write media_id
                allowed = tuple("media_id" if name == "id" else name for name in allowed)
            return (
                f"{dotted(violation.path[:-1])} does not take {violation.path[-1]}: "
                f"allowed fields are {', '.join(sorted(allowed))}"
            )
        case "wrong_type":
            expected = violation.expected or "string"
            return f"{where} must be {_TYPE_WORDS.get(expected, expected)}"
        case "out_of_range":
            low, high = violation.bounds or (0.0, 0.0)
            return f"{where} must be between {low:g} and {high:g}"
        case _:
            return f"{where} {violation.text}"


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
    try:
        return check_content(type_, _friendly(type_, content))
    except RuleViolation as violation:
        raise _fail(_explain(type_, violation)) from None


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
