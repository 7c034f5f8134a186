"""Meta's send rules as data: each broken rule is a RuleViolation saying where, what and the limit.

These also pin msgspec's validation wording, which send_rules classifies: a msgspec upgrade that
rewords a message fails here instead of turning every refusal into a vague "invalid".
"""

from __future__ import annotations

from typing import Any

import pytest

from plugins.whatsapp.send_rules import CONTENT_TYPES, RuleViolation, check_content

BUTTON = {"type": "reply", "reply": {"id": "1", "title": "Sim"}}


@pytest.mark.parametrize(
    ("type_", "content", "path", "problem", "detail"),
    [
        ("text", {}, ("body",), "required", {}),
        ("text", {"body": None}, ("body",), "required", {}),
        ("text", {"body": ""}, ("body",), "required", {}),
        ("text", {"body": " \n"}, ("body",), "required", {}),
        ("text", {"body": "x" * 4097}, ("body",), "too_long", {"limit": 4096}),
        ("text", {"body": 1}, ("body",), "wrong_type", {"expected": "string"}),
        (
            "text",
            {"body": "x", "preview": True},
            ("preview",),
            "unknown_field",
            {"allowed": ("body", "preview_url")},
        ),
        (
            "interactive",
            {"type": "button", "body": {"text": "x"}, "action": {"buttons": [BUTTON] * 4}},
            ("action", "buttons"),
            "too_many",
            {"limit": 3},
        ),
        (
            "interactive",
            {"type": "button", "body": {"text": "x"}, "action": {"buttons": []}},
            ("action", "buttons"),
            "too_few",
            {"limit": 1},
        ),
        (
            "location",
            {"latitude": 0, "longitude": 181},
            ("longitude",),
            "out_of_range",
            {"bounds": (-180, 180)},
        ),
        ("image", {"link": "https://x.example/a.jpg", "id": "1"}, (), "invalid", {}),
        ("image", {"link": "ftp://x.example/a.jpg"}, ("link",), "invalid", {}),
        (
            "interactive",
            {
                "type": "button",
                "header": {"type": "audio"},
                "body": {"text": "x"},
                "action": {"buttons": [BUTTON]},
            },
            ("header", "type"),
            "invalid",
            {"allowed": ("text", "image", "video", "document")},
        ),
        (
            "interactive",
            {"type": "button", "body": {"text": "x"}, "action": {"buttons": [BUTTON, BUTTON]}},
            ("action", "buttons", 1, "reply", "title"),
            "invalid",
            {},
        ),
    ],
)
def test_violations_say_where_what_and_the_limit(
    type_: str, content: dict[str, Any], path: tuple[Any, ...], problem: str, detail: dict[str, Any]
) -> None:
    with pytest.raises(RuleViolation) as info:
        check_content(type_, content)
    violation = info.value
    assert (violation.path, violation.problem) == (path, problem)
    for key, value in detail.items():
        assert getattr(violation, key) == value
    if problem == "invalid":
        assert violation.text


def test_open_ended_objects_pass_through_as_given() -> None:
    components = [
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "x"}]}
    ]
    template = {"name": "pedido", "language": {"code": "pt_BR"}, "components": components}
    assert check_content("template", template) == template
    card = {"name": {"formatted_name": "Loja", "first_name": "Loja"}, "org": {"company": "Loja"}}
    assert check_content("contacts", {"contacts": [card]}) == {"contacts": [card]}
    flow = {
        "type": "flow",
        "body": {"text": "Agende"},
        "action": {"name": "flow", "parameters": {"flow_id": "1"}},
    }
    assert check_content("interactive", flow) == flow


def test_every_sendable_type_has_rules() -> None:
    assert set(CONTENT_TYPES) == {
        "text",
        "image",
        "video",
        "document",
        "audio",
        "sticker",
        "template",
        "interactive",
        "reaction",
        "location",
        "contacts",
    }
