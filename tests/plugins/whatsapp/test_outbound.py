"""Outgoing messages become the send bodies Meta documents (reference 7.1, 7.2), or clear 400s."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from core.errors import ValidationFailed
from plugins.whatsapp.client import GraphClient
from plugins.whatsapp.outbound import (
    FREE_FORM_TYPES,
    OUTBOUND_TYPES,
    body_for,
    build_send_body,
    validate_content,
)

PNID = "100000000000001"
TO = "15557654321"  # a wa_id: digits only
HEAD = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "+15557654321"}


@pytest.fixture
async def sent() -> AsyncIterator[tuple[GraphClient, list[dict[str, Any]]]]:
    """A GraphClient whose fake Graph records each JSON body it receives."""
    bodies: list[dict[str, Any]] = []

    def graph(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": "+15557654321", "wa_id": TO}],
                "messages": [{"id": "wamid.TESTOUT1"}],
            },
        )

    async with GraphClient(
        base_url="https://graph.facebook.com",
        version="v25.0",
        access_token="EAAGtest0000000000",
        transport=httpx.MockTransport(graph),
    ) as client:
        yield client, bodies


TEMPLATE = {
    "name": "order_update",
    "language": {"code": "en_US"},
    "components": [
        {
            "type": "header",
            "parameters": [{"type": "image", "image": {"link": "https://example.com/p.jpg"}}],
        },
        {
            "type": "body",
            "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "#1234"}],
        },
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "0",
            "parameters": [{"type": "payload", "payload": "TRACK_1234"}],
        },
    ],
}
BUTTONS = {
    "type": "button",
    "body": {"text": "Confirm your booking?"},
    "action": {
        "buttons": [
            {"type": "reply", "reply": {"id": "confirm_yes", "title": "Yes"}},
            {"type": "reply", "reply": {"id": "confirm_no", "title": "No"}},
        ]
    },
}
LIST = {
    "type": "list",
    "body": {"text": "Which shipping option?"},
    "action": {
        "button": "Options",
        "sections": [
            {"title": "Fast", "rows": [{"id": "express", "title": "Express", "description": "1-2 days"}]}
        ],
    },
}
CONTACT_CARD = {
    "name": {"formatted_name": "Support Desk", "first_name": "Support"},
    "phones": [{"phone": "+15551234567", "type": "WORK", "wa_id": "15551234567"}],
}

# (type, content as a caller writes it, reply-to wamid, the body Meta documents)
DOCUMENTED_BODIES: list[tuple[str, dict[str, Any], str | None, dict[str, Any]]] = [
    (
        "text",
        {"body": "Hello!", "preview_url": False},
        None,
        {**HEAD, "type": "text", "text": {"preview_url": False, "body": "Hello!"}},
    ),
    (
        "text",
        {"body": "Replying to your question"},
        "wamid.TESTIN1",
        {
            **HEAD,
            "context": {"message_id": "wamid.TESTIN1"},
            "type": "text",
            "text": {"body": "Replying to your question"},
        },
    ),
    (
        "text",
        {"body": "Veja https://example.com/pedido", "preview_url": True},
        None,
        {**HEAD, "type": "text", "text": {"body": "Veja https://example.com/pedido", "preview_url": True}},
    ),
    ("template", TEMPLATE, None, {**HEAD, "type": "template", "template": TEMPLATE}),
    (
        "image",
        {"media_id": "100000000000003", "caption": "Your receipt"},
        None,
        {**HEAD, "type": "image", "image": {"id": "100000000000003", "caption": "Your receipt"}},
    ),
    (
        "document",
        {"link": "https://example.com/invoice.pdf", "filename": "invoice.pdf", "caption": "Invoice"},
        None,
        {
            **HEAD,
            "type": "document",
            "document": {
                "link": "https://example.com/invoice.pdf",
                "filename": "invoice.pdf",
                "caption": "Invoice",
            },
        },
    ),
    (
        "audio",
        {"media_id": "100000000000004"},
        "wamid.TESTIN1",
        {
            **HEAD,
            "context": {"message_id": "wamid.TESTIN1"},
            "type": "audio",
            "audio": {"id": "100000000000004"},
        },
    ),
    (
        "video",
        {"link": "https://example.com/v.mp4", "caption": "Como usar"},
        None,
        {**HEAD, "type": "video", "video": {"link": "https://example.com/v.mp4", "caption": "Como usar"}},
    ),
    (
        "sticker",
        {"media_id": "100000000000005"},
        None,
        {**HEAD, "type": "sticker", "sticker": {"id": "100000000000005"}},
    ),
    ("interactive", BUTTONS, None, {**HEAD, "type": "interactive", "interactive": BUTTONS}),
    ("interactive", LIST, None, {**HEAD, "type": "interactive", "interactive": LIST}),
    (
        "reaction",
        {"message_id": "wamid.TESTIN1", "emoji": "👍"},
        None,
        {**HEAD, "type": "reaction", "reaction": {"message_id": "wamid.TESTIN1", "emoji": "👍"}},
    ),
    (
        "location",
        {"latitude": 37.4847, "longitude": -122.1477, "name": "HQ", "address": "1 Example Way"},
        None,
        {
            **HEAD,
            "type": "location",
            "location": {
                "latitude": 37.4847,
                "longitude": -122.1477,
                "name": "HQ",
                "address": "1 Example Way",
            },
        },
    ),
    (
        "contacts",
        {"contacts": [CONTACT_CARD]},
        None,
        {**HEAD, "type": "contacts", "contacts": [CONTACT_CARD]},
    ),
]


@pytest.mark.parametrize(
    ("type_", "content", "context", "expected"),
    DOCUMENTED_BODIES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(DOCUMENTED_BODIES)],
)
async def test_graph_receives_the_documented_body(
    sent: tuple[GraphClient, list[dict[str, Any]]],
    type_: str,
    content: dict[str, Any],
    context: str | None,
    expected: dict[str, Any],
) -> None:
    client, bodies = sent
    result = await client.send(
        PNID, build_send_body(to=TO, type_=type_, content=content, context_wamid=context)
    )

    assert result.wamid == "wamid.TESTOUT1"
    assert bodies == [expected]


def test_every_outbound_type_has_a_documented_body() -> None:
    assert {case[0] for case in DOCUMENTED_BODIES} == OUTBOUND_TYPES
    assert "template" not in FREE_FORM_TYPES
    assert FREE_FORM_TYPES < OUTBOUND_TYPES
    assert len(OUTBOUND_TYPES) - len(FREE_FORM_TYPES) == 1


@pytest.mark.parametrize(
    ("to", "expected"), [("5511999999999", "+5511999999999"), ("+5511999999999", "+5511999999999")]
)
def test_recipient_gets_a_plus_and_country_code(to: str, expected: str) -> None:
    assert build_send_body(to=to, type_="text", content={"body": "Oi"})["to"] == expected


@pytest.mark.parametrize("to", ["", "abc", "011999", "+55 11 99999-9999", "US.13491208655302741918"])
def test_recipient_that_is_not_a_phone_number_is_refused(to: str) -> None:
    with pytest.raises(ValidationFailed, match="international format"):
        build_send_body(to=to, type_="text", content={"body": "Oi"})


def test_callback_data_is_passed_and_bounded() -> None:
    body = build_send_body(
        to=TO, type_="text", content={"body": "Oi"}, biz_opaque_callback_data="campanha-42"
    )
    assert body["biz_opaque_callback_data"] == "campanha-42"
    with pytest.raises(ValidationFailed, match="longer than 512"):
        build_send_body(to=TO, type_="text", content={"body": "Oi"}, biz_opaque_callback_data="x" * 513)


# -- friendly forms -----------------------------------------------------------------------------------


def test_friendly_forms_are_normalised_and_idempotent() -> None:
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("image", {"media_id": 123, "caption": "Recibo"}, {"id": "123", "caption": "Recibo"}),
        (
            "document",
            {"link": "https://x.example/a.pdf", "caption": None},
            {"link": "https://x.example/a.pdf"},
        ),
        (
            "template",
            {"name": "boas_vindas", "language": "pt_BR"},
            {"name": "boas_vindas", "language": {"code": "pt_BR"}},
        ),
        (
            "interactive",
            {
                "type": "button",
                "body": {"text": "Confirma?"},
                "action": {"buttons": [{"id": "s", "title": "Sim"}]},
            },
            {
                "type": "button",
                "body": {"text": "Confirma?"},
                "action": {"buttons": [{"type": "reply", "reply": {"id": "s", "title": "Sim"}}]},
            },
        ),
        ("contacts", CONTACT_CARD, {"contacts": [CONTACT_CARD]}),
    ]
    for type_, friendly, graph_form in cases:
        assert validate_content(type_, friendly) == graph_form
        assert validate_content(type_, graph_form) == graph_form


def test_unknown_interactive_kinds_pass_through() -> None:
    cta = {
        "type": "cta_url",
        "body": {"text": "Acompanhe seu pedido"},
        "action": {
            "name": "cta_url",
            "parameters": {"display_text": "Abrir", "url": "https://example.com/p/1"},
        },
    }
    assert validate_content("interactive", cta) == cta


# -- validation messages name the field and the fix ----------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "content", "message"),
    [
        ("text", {}, "text.body is required"),
        ("text", {"body": "   "}, "text.body is required"),
        ("text", {"body": "x" * 4097}, "text.body is longer than 4096 characters"),
        (
            "text",
            {"body": "oi", "preview": True},
            "text does not take preview: allowed fields are body, preview_url",
        ),
        ("text", {"body": "oi", "preview_url": "yes"}, "text.preview_url must be true or false"),
        (
            "audio",
            {"media_id": "1", "caption": "ouça"},
            "audio does not take caption: allowed fields are link, media_id",
        ),
        ("sticker", {"media_id": "1", "caption": "oi"}, "sticker does not take caption"),
        (
            "image",
            {"media_id": "1", "filename": "a.jpg"},
            "image does not take filename: allowed fields are caption, link, media_id",
        ),
        ("image", {}, "image needs exactly one of link or media_id"),
        (
            "image",
            {"link": "https://x.example/a.jpg", "media_id": "1"},
            "image needs exactly one of link or media_id",
        ),
        ("image", {"link": "ftp://x.example/a.jpg"}, "image.link must be a public http(s) URL"),
        ("image", {"media_id": "1", "caption": "x" * 1025}, "image.caption is longer than 1024 characters"),
        ("template", {"name": "t"}, "template.language is required (for example pt_BR)"),
        ("template", {"name": "t", "language": {}}, "template.language.code is required"),
        ("template", {"language": "pt_BR"}, "template.name is required"),
        (
            "template",
            {"name": "t", "language": "pt_BR", "components": {}},
            "template.components must be a list",
        ),
        ("interactive", {"body": {"text": "x"}}, "interactive.type is required"),
        (
            "interactive",
            {**BUTTONS, "action": {"buttons": [{"id": str(i), "title": f"B{i}"} for i in range(4)]}},
            "interactive.action.buttons takes at most 3 items",
        ),
        (
            "interactive",
            {**BUTTONS, "action": {"buttons": [{"id": "1", "title": "Sim"}, {"id": "2", "title": "Sim"}]}},
            "titles must be unique",
        ),
        (
            "interactive",
            {**BUTTONS, "action": {"buttons": [{"id": "1", "title": "x" * 21}]}},
            "interactive.action.buttons[0].reply.title is longer than 20 characters",
        ),
        ("interactive", {**BUTTONS, "body": None}, "interactive.body is required"),
        (
            "interactive",
            {
                **LIST,
                "action": {
                    "button": "Opções",
                    "sections": [
                        {"title": "A", "rows": [{"id": f"a{i}", "title": "x"} for i in range(6)]},
                        {"title": "B", "rows": [{"id": f"b{i}", "title": "x"} for i in range(5)]},
                    ],
                },
            },
            "interactive.action.sections have 11 rows; at most 10 rows in total",
        ),
        (
            "interactive",
            {**LIST, "action": {"button": "Opções", "sections": [{"rows": []}]}},
            "interactive.action.sections[0].rows needs at least 1 item",
        ),
        ("reaction", {"emoji": "👍"}, "reaction.message_id is required"),
        ("reaction", {"message_id": " ", "emoji": "👍"}, "reaction.message_id is required"),
        ("location", {"latitude": 91, "longitude": 0}, "location.latitude must be between -90 and 90"),
        ("location", {"latitude": 1}, "location.longitude is required"),
        ("contacts", {"contacts": [{"name": {}}]}, "contacts.contacts[0].name.formatted_name is required"),
        ("voice", {"media_id": "1"}, "type 'voice' cannot be sent: use one of"),
        (
            "document",
            {"media_id": "1", "filename": "a" * 252 + ".pdf"},
            "document.filename is longer than 255 characters",
        ),
        (
            "interactive",
            {**BUTTONS, "action": {"buttons": [{"id": "1", "title": "Sim"}, {"id": "1", "title": "Não"}]}},
            "interactive.action.buttons[1].reply.id repeats '1'; ids must be unique",
        ),
        (
            "interactive",
            {
                **LIST,
                "action": {
                    "button": "Opções",
                    "sections": [
                        {"title": "A", "rows": [{"id": "x", "title": "Um"}]},
                        {"rows": [{"id": "y", "title": "Dois"}]},
                    ],
                },
            },
            "interactive.action.sections[1].title is required when the list has more than one section",
        ),
        (
            "interactive",
            {
                **LIST,
                "action": {
                    "button": "Opções",
                    "sections": [
                        {"title": "A", "rows": [{"id": "x", "title": "Um"}]},
                        {"title": "B", "rows": [{"id": "x", "title": "Dois"}]},
                    ],
                },
            },
            "interactive.action.sections[1].rows[0].id repeats 'x'; row ids must be unique",
        ),
        (
            "interactive",
            {**LIST, "header": {"type": "image", "image": {"media_id": "1"}}},
            "interactive.header.type must be one of text",
        ),
        (
            "interactive",
            {**BUTTONS, "header": {"type": "image", "image": {"media_id": "1", "caption": "x"}}},
            "interactive.header.image does not take caption",
        ),
        (
            "interactive",
            {**BUTTONS, "footer": {"text": "x" * 61}},
            "interactive.footer.text is longer than 60",
        ),
        ("location", {"latitude": "sul", "longitude": 0}, "location.latitude must be a number"),
        ("reaction", {"message_id": "wamid.X"}, 'reaction.emoji is required (use "" to remove a reaction)'),
    ],
)
def test_validation_messages_name_the_field(type_: str, content: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_content(type_, content)
    assert message in str(info.value)
    assert info.value.status_code == 400
    assert info.value.code == "validation_error"


def test_empty_optional_texts_are_left_out_and_media_headers_take_media_id() -> None:
    assert validate_content("image", {"media_id": "1", "caption": ""}) == {"id": "1"}
    assert validate_content("location", {"latitude": "-23.5", "longitude": -46.6, "name": ""}) == {
        "latitude": -23.5,
        "longitude": -46.6,
    }
    header = {"type": "document", "document": {"media_id": 42, "filename": "tabela.pdf"}}
    checked = validate_content("interactive", {**BUTTONS, "header": header})
    assert checked["header"] == {"type": "document", "document": {"id": "42", "filename": "tabela.pdf"}}


def test_content_must_be_an_object() -> None:
    with pytest.raises(ValidationFailed, match="text must be an object"):
        validate_content("text", "Olá")  # type: ignore[arg-type]


def test_removing_a_reaction_is_allowed() -> None:
    assert validate_content("reaction", {"message_id": "wamid.X", "emoji": ""}) == {
        "message_id": "wamid.X",
        "emoji": "",
    }


# -- what zaphub shows as the body ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "content", "body"),
    [
        ("text", {"body": "Olá!"}, "Olá!"),
        ("image", {"id": "1", "caption": "Recibo"}, "Recibo"),
        ("image", {"id": "1"}, None),
        ("template", {"name": "boas_vindas", "language": {"code": "pt_BR"}}, "boas_vindas"),
        ("reaction", {"message_id": "wamid.X", "emoji": "❤️"}, "❤️"),
        ("reaction", {"message_id": "wamid.X", "emoji": ""}, None),
        ("interactive", BUTTONS, "Confirm your booking?"),
        ("location", {"latitude": 1.0, "longitude": 2.0, "name": "HQ"}, None),
        ("contacts", {"contacts": [CONTACT_CARD]}, None),
    ],
)
def test_body_for(type_: str, content: dict[str, Any], body: str | None) -> None:
    assert body_for(type_, content) == body
