"""Meta's rules for what may be sent: one constrained msgspec Struct per kind of outgoing content.

This module is the only home of WhatsApp's send limits (text 4096 characters, caption 1024, three
reply buttons of 20 characters, ten list rows…). Everything that checks a send uses it:

- :mod:`plugins.whatsapp.outbound` turns a caller's content (zaphub's friendly forms accepted)
  into Graph's object through :func:`check_content`, and words a :class:`RuleViolation` for
  zaphub's API (``400 validation_error``, ``"text.body is longer than 4096 characters"``);
- :mod:`plugins.whatsapp.sandbox` checks the bodies it receives with the same function and words
  the violation as Meta does (``"(#100) Param text['body'] must be at most 4096 characters long."``);
- :mod:`plugins.crm_realtime.models` builds the REST send body from the constrained field types
  below (:data:`TextBody`, :data:`Caption`, …), so its OpenAPI schema shows the same limits.
  ``crm_realtime`` may import this module: its REST contract *is* a WhatsApp send (templates,
  ``media_id``, the 24-hour window), and this module imports nothing but msgspec. Core stays
  transport-neutral: it never imports it.

The Structs describe the object Graph expects under the message's type key (reference 7.2):
``TextContent`` is ``{"body", "preview_url"}``, ``ImageContent`` is ``{"id" | "link", "caption"}``.
Unknown fields are refused, so a typo is an error instead of a silently dropped field. Three
places pass Meta's open-ended objects through after checking what zaphub knows of them:
template components (parameter types keep growing), contact cards (a vCard-like object) and
interactive kinds other than ``button`` and ``list`` (``cta_url``, ``flow``… Meta keeps adding).

Where Meta documents no limit, zaphub sets its own and says so at the constant: a document's
``filename`` is at most 255 characters (the longest file name common filesystems keep), location
texts at most 1,024, a reaction at most 16 characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
import msgspec.inspect as mi

__all__ = [
    "BUTTONS_MAX",
    "BUTTON_BODY_MAX",
    "BUTTON_ID_MAX",
    "BUTTON_TITLE_MAX",
    "CALLBACK_DATA_MAX",
    "CAPTION_MAX",
    "CONTENT_TYPES",
    "FILENAME_MAX",
    "FOOTER_MAX",
    "HEADER_TEXT_MAX",
    "INTERACTIVE_KINDS",
    "LIST_BODY_MAX",
    "LIST_BUTTON_MAX",
    "LIST_ROWS_MAX",
    "LIST_ROW_DESCRIPTION_MAX",
    "LIST_ROW_ID_MAX",
    "LIST_ROW_TITLE_MAX",
    "LIST_SECTIONS_MAX",
    "LIST_SECTION_TITLE_MAX",
    "LOCATION_TEXT_MAX",
    "MEDIA_TYPES",
    "REACTION_EMOJI_MAX",
    "TEMPLATE_NAME_MAX",
    "TEXT_MAX",
    "AudioContent",
    "ButtonMessage",
    "Caption",
    "ContactsContent",
    "DocumentContent",
    "Filename",
    "ImageContent",
    "ListMessage",
    "LocationContent",
    "MediaId",
    "MediaLink",
    "NonBlank",
    "ReactionContent",
    "RuleViolation",
    "StickerContent",
    "TemplateContent",
    "TemplateName",
    "TextBody",
    "TextContent",
    "VideoContent",
    "check_content",
]

# --- limits ---------------------------------------------------------------------------------------
# Meta's, from the "Text", "Image/Document", "Interactive reply buttons" and "Interactive list"
# pages (reference 7.1, 7.2), unless the comment says zaphub chose it.

TEXT_MAX: Final = 4096
CAPTION_MAX: Final = 1024
#: zaphub's: Meta documents no limit ("Document filename, with extension"); 255 is the longest
#: name common filesystems keep, so the file can be saved under the name the contact sees.
FILENAME_MAX: Final = 255
BUTTONS_MAX: Final = 3
BUTTON_ID_MAX: Final = 256
BUTTON_TITLE_MAX: Final = 20
BUTTON_BODY_MAX: Final = 1024
LIST_BODY_MAX: Final = 4096
LIST_BUTTON_MAX: Final = 20
LIST_SECTIONS_MAX: Final = 10
#: Rows across all sections of a list, not per section.
LIST_ROWS_MAX: Final = 10
LIST_ROW_ID_MAX: Final = 200
LIST_ROW_TITLE_MAX: Final = 24
LIST_ROW_DESCRIPTION_MAX: Final = 72
LIST_SECTION_TITLE_MAX: Final = 24
HEADER_TEXT_MAX: Final = 60
FOOTER_MAX: Final = 60
#: ``biz_opaque_callback_data`` of the send body, echoed in status webhooks.
CALLBACK_DATA_MAX: Final = 512
#: Meta's limit for a template's name when it is created.
TEMPLATE_NAME_MAX: Final = 512
#: zaphub's: a location's ``name`` and ``address`` (Meta documents none).
LOCATION_TEXT_MAX: Final = 1024
#: zaphub's: one emoji, possibly with modifiers and joiners, is far shorter.
REACTION_EMOJI_MAX: Final = 16

#: The interactive kinds Meta documents (reference 7.2). Only ``button`` and ``list`` are
#: checked field by field; the others are passed through with their common shape checked.
INTERACTIVE_KINDS: Final = (
    "button",
    "call_permission_request",
    "carousel",
    "catalog_message",
    "cta_url",
    "flow",
    "list",
    "location_request_message",
    "product",
    "product_list",
    "voice_call",
)

# --- constrained field types ------------------------------------------------------------------------

_HTTP_LINK = re.compile(r"https?://\S")

#: A required string; in a content Struct it must not be blank either.
NonBlank = Annotated[str, msgspec.Meta(min_length=1)]
TextBody = Annotated[str, msgspec.Meta(min_length=1, max_length=TEXT_MAX)]
Caption = Annotated[str, msgspec.Meta(max_length=CAPTION_MAX)]
Filename = Annotated[str, msgspec.Meta(max_length=FILENAME_MAX)]
#: A public http(s) URL Meta downloads the media from.
MediaLink = Annotated[str, msgspec.Meta(min_length=1)]
#: The id Graph's media upload answered.
MediaId = NonBlank
TemplateName = Annotated[str, msgspec.Meta(min_length=1, max_length=TEMPLATE_NAME_MAX)]


# Required texts: not empty (nor blank, checked by the Structs), no longer than Meta allows.
HeaderText = Annotated[str, msgspec.Meta(min_length=1, max_length=HEADER_TEXT_MAX)]
FooterText = Annotated[str, msgspec.Meta(min_length=1, max_length=FOOTER_MAX)]
ButtonBodyText = Annotated[str, msgspec.Meta(min_length=1, max_length=BUTTON_BODY_MAX)]
ListBodyText = Annotated[str, msgspec.Meta(min_length=1, max_length=LIST_BODY_MAX)]
ButtonId = Annotated[str, msgspec.Meta(min_length=1, max_length=BUTTON_ID_MAX)]
ButtonTitle = Annotated[str, msgspec.Meta(min_length=1, max_length=BUTTON_TITLE_MAX)]
ListButtonText = Annotated[str, msgspec.Meta(min_length=1, max_length=LIST_BUTTON_MAX)]
RowId = Annotated[str, msgspec.Meta(min_length=1, max_length=LIST_ROW_ID_MAX)]
RowTitle = Annotated[str, msgspec.Meta(min_length=1, max_length=LIST_ROW_TITLE_MAX)]
# Optional texts: an empty one counts as absent.
RowDescription = Annotated[str, msgspec.Meta(max_length=LIST_ROW_DESCRIPTION_MAX)]
SectionTitle = Annotated[str, msgspec.Meta(max_length=LIST_SECTION_TITLE_MAX)]
LocationText = Annotated[str, msgspec.Meta(max_length=LOCATION_TEXT_MAX)]
Emoji = Annotated[str, msgspec.Meta(max_length=REACTION_EMOJI_MAX)]


# --- Structs --------------------------------------------------------------------------------------


class _Checked(msgspec.Struct, kw_only=True):
    """Base of every Struct here: blank required texts refused, empty optional ones dropped."""

    def __post_init__(self) -> None:
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str) or value.strip():
                continue
            if field.required:
                raise ValueError(f"{field.encode_name}: is required")
            if value == "" and field.default is None:
                setattr(self, field.name, None)  # Graph refuses empty strings: an empty caption is none


class _Rules(_Checked, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of the content Structs: unknown fields refused, absent optionals left out."""


class TextContent(_Rules, kw_only=True):
    """``text``: up to 4096 characters; ``preview_url`` renders the first link."""

    body: TextBody
    preview_url: bool | None = None


class _Media(_Rules, kw_only=True):
    id: MediaId | None = None
    """An id from Graph's media upload."""
    link: MediaLink | None = None
    """A public http(s) URL. Exactly one of ``id`` and ``link``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.id is None) == (self.link is None):
            raise ValueError("needs exactly one of id or link")
        if self.link is not None and not _HTTP_LINK.match(self.link):
            raise ValueError("link: must be a public http(s) URL")


class ImageContent(_Media, kw_only=True):
    """``image`` with an optional caption."""

    caption: Caption | None = None


class VideoContent(_Media, kw_only=True):
    """``video`` with an optional caption."""

    caption: Caption | None = None


class DocumentContent(_Media, kw_only=True):
    """``document`` with an optional caption and file name."""

    caption: Caption | None = None
    filename: Filename | None = None


class AudioContent(_Media, kw_only=True):
    """``audio``: no caption."""


class StickerContent(_Media, kw_only=True):
    """``sticker``: no caption."""


class HeaderDocument(_Media, kw_only=True):
    """A document in an interactive header (no caption: the text goes in ``body``)."""

    filename: Filename | None = None


class TemplateLanguage(_Rules, kw_only=True):
    """``{"code": "pt_BR"}``."""

    code: NonBlank
    policy: str | None = None


class TemplateComponent(_Checked, kw_only=True):
    """A template component: ``type`` required; other keys (``sub_type``, ``index``…) pass through."""

    type: NonBlank
    parameters: list[dict[str, Any]] | None = None


class TemplateContent(_Rules, kw_only=True):
    """``template``: an approved template by name and language, with its variables."""

    name: TemplateName
    language: TemplateLanguage
    components: list[TemplateComponent] | None = None
    """Passed to Graph as given: Meta reports parameter errors with the template's own codes."""


class _Text(_Rules, kw_only=True):
    text: TextBody


class ButtonBody(_Rules, kw_only=True):
    """The text of a reply-buttons message."""

    text: ButtonBodyText


class ListBody(_Rules, kw_only=True):
    """The text of a list message."""

    text: ListBodyText


class Footer(_Rules, kw_only=True):
    """An interactive footer."""

    text: FooterText


class TextHeader(_Rules, kw_only=True, tag_field="type", tag="text"):
    """A text header (the only header a list takes)."""

    text: HeaderText


class ImageHeader(_Rules, kw_only=True, tag_field="type", tag="image"):
    """An image header."""

    image: _Media


class VideoHeader(_Rules, kw_only=True, tag_field="type", tag="video"):
    """A video header."""

    video: _Media


class DocumentHeader(_Rules, kw_only=True, tag_field="type", tag="document"):
    """A document header."""

    document: HeaderDocument


class ButtonReply(_Rules, kw_only=True):
    """What a reply button shows and what its tap answers."""

    id: ButtonId
    title: ButtonTitle


class ReplyButton(_Rules, kw_only=True, tag_field="type", tag="reply"):
    """``{"type": "reply", "reply": {"id", "title"}}``."""

    reply: ButtonReply


class ButtonAction(_Rules, kw_only=True):
    """One to three reply buttons, titles and ids unique."""

    buttons: Annotated[list[ReplyButton], msgspec.Meta(min_length=1, max_length=BUTTONS_MAX)]

    def __post_init__(self) -> None:
        super().__post_init__()
        _unique("buttons[{}].reply.title", [b.reply.title for b in self.buttons])
        _unique("buttons[{}].reply.id", [b.reply.id for b in self.buttons])


class ButtonMessage(_Rules, kw_only=True, tag_field="type", tag="button"):
    """``interactive`` reply buttons."""

    header: TextHeader | ImageHeader | VideoHeader | DocumentHeader | None = None
    body: ButtonBody
    footer: Footer | None = None
    action: ButtonAction


class ListRow(_Rules, kw_only=True):
    """One choice of a list."""

    id: RowId
    title: RowTitle
    description: RowDescription | None = None


class ListSection(_Rules, kw_only=True):
    """A titled group of rows."""

    title: SectionTitle | None = None
    rows: Annotated[list[ListRow], msgspec.Meta(min_length=1, max_length=LIST_ROWS_MAX)]


class ListAction(_Rules, kw_only=True):
    """The button that opens the list, and its sections."""

    button: ListButtonText
    sections: Annotated[list[ListSection], msgspec.Meta(min_length=1, max_length=LIST_SECTIONS_MAX)]

    def __post_init__(self) -> None:
        super().__post_init__()
        rows = sum(len(section.rows) for section in self.sections)
        if rows > LIST_ROWS_MAX:
            raise ValueError(
                f"sections: have {rows} rows; at most {LIST_ROWS_MAX} rows in total across all sections"
            )
        for index, section in enumerate(self.sections):
            if section.title is None and len(self.sections) > 1:
                raise ValueError(
                    f"sections[{index}].title: is required when the list has more than one section"
                )
        seen: set[str] = set()
        for index, section in enumerate(self.sections):
            for row_index, row in enumerate(section.rows):
                if row.id in seen:
                    raise ValueError(
                        f"sections[{index}].rows[{row_index}].id: repeats {row.id!r}; row ids must be unique"
                    )
                seen.add(row.id)


class ListMessage(_Rules, kw_only=True, tag_field="type", tag="list"):
    """``interactive`` list."""

    header: TextHeader | None = None
    body: ListBody
    footer: Footer | None = None
    action: ListAction


class OtherInteractive(_Checked, kw_only=True):
    """The shape every other interactive kind shares; the rest passes through."""

    type: NonBlank
    body: _Text | None = None
    footer: Footer | None = None
    action: dict[str, Any]


class ReactionContent(_Rules, kw_only=True):
    """``reaction`` to a message the contact sent; ``emoji: ""`` removes it."""

    message_id: NonBlank
    """The wamid of the message reacted to."""
    emoji: Emoji

    def __post_init__(self) -> None:
        # Not the base check: unlike other required texts, an empty emoji means "remove the reaction".
        if not self.message_id.strip():
            raise ValueError("message_id: is required")


class LocationContent(_Rules, kw_only=True):
    """``location``: coordinates, optionally a place's name and address."""

    latitude: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    longitude: Annotated[float, msgspec.Meta(ge=-180, le=180)]
    name: LocationText | None = None
    address: LocationText | None = None


class ContactName(_Checked, kw_only=True):
    """A contact card's name: ``formatted_name`` required; other keys pass through."""

    formatted_name: NonBlank


class ContactCard(_Checked, kw_only=True):
    """A contact card: ``name`` required; ``phones``, ``emails``, ``org``… pass through."""

    name: ContactName
    phones: list[dict[str, Any]] | None = None


class ContactsContent(_Rules, kw_only=True):
    """``contacts``: Graph's value is the list itself (``{"contacts": [card, …]}`` here)."""

    contacts: Annotated[list[ContactCard], msgspec.Meta(min_length=1)]


MEDIA_TYPES: Final = frozenset({"image", "document", "audio", "video", "sticker"})

#: The Struct checking each sendable type's content.
CONTENT_TYPES: Final[Mapping[str, Any]] = {
    "text": TextContent,
    "image": ImageContent,
    "video": VideoContent,
    "document": DocumentContent,
    "audio": AudioContent,
    "sticker": StickerContent,
    "template": TemplateContent,
    "interactive": ButtonMessage | ListMessage,
    "reaction": ReactionContent,
    "location": LocationContent,
    "contacts": ContactsContent,
}


def _unique(where: str, values: list[str]) -> None:
    """Refuse a repeated value; ``where`` has a ``{}`` for the index of the repeat."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            field = where.rsplit(".", 1)[-1]
            raise ValueError(f"{where.format(index)}: repeats {value!r}; {field}s must be unique")
        seen.add(value)


# --- checking --------------------------------------------------------------------------------------

Problem = Literal[
    "required", "too_long", "too_many", "too_few", "unknown_field", "wrong_type", "out_of_range", "invalid"
]


class RuleViolation(ValueError):
    """Content that breaks a rule, described so each caller can word it for its audience.

    Attributes:
        path: where, below the type's object: ``("action", "buttons", 0, "reply", "title")``.
        problem: what kind of rule was broken.
        limit: the bound broken (``too_long``, ``too_many``, ``too_few``).
        bounds: ``(minimum, maximum)`` of a number (``out_of_range``).
        expected: the JSON type wanted (``wrong_type``): ``string``, ``object``, ``array``…
        allowed: the fields that are allowed (``unknown_field``; the unknown one ends ``path``),
            or the kinds that are (``invalid`` of a ``type``).
        text: the rule in words (``invalid``), e.g. ``"needs exactly one of id or link"``.
    """

    def __init__(
        self,
        path: tuple[str | int, ...],
        problem: Problem,
        *,
        limit: int | None = None,
        bounds: tuple[float, float] | None = None,
        expected: str | None = None,
        allowed: tuple[str, ...] = (),
        text: str | None = None,
    ) -> None:
        super().__init__(f"{problem} at {path}")
        self.path = path
        self.problem = problem
        self.limit = limit
        self.bounds = bounds
        self.expected = expected
        self.allowed = allowed
        self.text = text


def check_content(type_: str, content: Any) -> dict[str, Any]:
    """Check one message's content against Meta's rules and return Graph's object for it.

    Args:
        type_: a key of :data:`CONTENT_TYPES`.
        content: the object Graph expects under the type's key (for ``contacts``,
            ``{"contacts": [card, …]}``).

    Returns:
        A new dict in Graph's shape: empty optional texts and absent fields left out, objects
        that pass through (template components, contact cards, other interactive kinds) as given.

    Raises:
        RuleViolation: the first broken rule.
        KeyError: ``type_`` is not sendable.
    """
    target = CONTENT_TYPES[type_]
    if type_ == "interactive" and isinstance(content, dict) and content.get("type") not in ("button", "list"):
        _convert(content, OtherInteractive)
        return dict(content)
    checked = msgspec.to_builtins(_convert(content, target))
    if type_ == "template" and content.get("components") is not None:
        checked["components"] = content["components"]
    if type_ == "contacts":
        checked["contacts"] = content["contacts"]
    return checked  # type: ignore[no-any-return]  # to_builtins of a Struct is a dict


def _convert(content: Any, target: Any) -> Any:
    try:
        return msgspec.convert(content, target)
    except msgspec.ValidationError as exc:
        raise _violation(str(exc), target, content) from None


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_EXPECTED: Final = {
    "str": "string",
    "object": "object",
    "array": "array",
    "float": "number",
    "int": "integer",
    "bool": "boolean",
}


def _violation(message: str, target: Any, content: Any) -> RuleViolation:
    """Classify one of msgspec's validation messages (its wording is stable and tested)."""
    match = _AT.fullmatch(message)
    assert match is not None  # the pattern matches any string
    what = match["what"]
    path: tuple[str | int, ...] = tuple(
        name if name else int(index) for name, index in _SEGMENT.findall(match["path"] or "")
    )
    if found := re.fullmatch(r"Object missing required field `(.+)`", what):
        return RuleViolation((*path, found[1]), "required")
    if found := re.fullmatch(r"Object contains unknown field `(.+)`", what):
        kind = _type_at(target, content, path)
        fields = tuple(f.encode_name for f in kind.fields) if isinstance(kind, mi.StructType) else ()
        return RuleViolation((*path, found[1]), "unknown_field", allowed=fields)
    if re.fullmatch(r"Expected `[^`]+`, got `null`", what) or what == "Expected `str` of length >= 1":
        return RuleViolation(path, "required")
    if found := re.fullmatch(r"Expected `str` of length <= (\d+)", what):
        return RuleViolation(path, "too_long", limit=int(found[1]))
    if found := re.fullmatch(r"Expected `array` of length ([<>])= (\d+)", what):
        return RuleViolation(path, "too_many" if found[1] == "<" else "too_few", limit=int(found[2]))
    if re.fullmatch(r"Expected `(?:float|int)` [<>]=? .+", what):
        kind = _type_at(target, content, path)
        low, high = getattr(kind, "ge", None), getattr(kind, "le", None)
        return RuleViolation(path, "out_of_range", bounds=(float(low or 0), float(high or 0)))
    if found := re.fullmatch(r"Expected `(\w+)[^`]*`, got `\w+`", what):
        return RuleViolation(path, "wrong_type", expected=_EXPECTED.get(found[1], found[1]))
    if what.startswith("Invalid value "):
        tags = _tags_at(target, content, path[:-1])
        return RuleViolation(path, "invalid", allowed=tags, text=f"must be one of {', '.join(tags)}")
    # A rule of a __post_init__: "text", or "sub.path[0]: text" naming a field below the Struct.
    if found := re.fullmatch(r"(\w[\w.\[\]]*): (.+)", what, re.DOTALL):
        below = tuple(name if name else int(index) for name, index in _SEGMENT.findall(f".{found[1]}"))
        if found[2] == "is required":
            return RuleViolation((*path, *below), "required")
        return RuleViolation((*path, *below), "invalid", text=found[2])
    return RuleViolation(path, "invalid", text=what)


def _unwrap(kind: mi.Type, data: Any) -> mi.Type:
    """The Struct a union member or an annotated type stands for, chosen by the data's tag."""
    while True:
        if isinstance(kind, mi.Metadata):
            kind = kind.type
        elif isinstance(kind, mi.UnionType):
            structs = [t for t in kind.types if isinstance(t, mi.StructType)]
            tag = data.get(structs[0].tag_field) if structs and isinstance(data, dict) else None
            chosen = next((t for t in structs if t.tag == tag), None)
            others = [t for t in kind.types if not isinstance(t, mi.NoneType)]
            kind = chosen or (structs[0] if structs else others[0])
        else:
            return kind


def _walk(target: Any, content: Any, path: tuple[str | int, ...]) -> tuple[mi.Type, Any]:
    """The type (not unwrapped) and the data found at ``path``."""
    kind: mi.Type = mi.type_info(target)
    data = content
    for segment in path:
        kind = _unwrap(kind, data)
        if isinstance(segment, int) and isinstance(kind, mi.ListType):
            kind, data = kind.item_type, data[segment] if isinstance(data, list) else None
        elif isinstance(kind, mi.StructType):
            field = next((f for f in kind.fields if f.encode_name == segment), None)
            if field is None:
                break
            kind, data = field.type, data.get(segment) if isinstance(data, dict) else None
    return kind, data


def _type_at(target: Any, content: Any, path: tuple[str | int, ...]) -> mi.Type:
    return _unwrap(*_walk(target, content, path))


def _tags_at(target: Any, content: Any, path: tuple[str | int, ...]) -> tuple[str, ...]:
    kind, _ = _walk(target, content, path)
    while isinstance(kind, mi.Metadata):
        kind = kind.type
    members = kind.types if isinstance(kind, mi.UnionType) else (kind,)
    return tuple(str(t.tag) for t in members if isinstance(t, mi.StructType) and t.tag is not None)
