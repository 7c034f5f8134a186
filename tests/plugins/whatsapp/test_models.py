from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from core.models import (
    InboundMessage,
    LifecycleAction,
    MessageEdit,
    MessageReaction,
    MessageRevoke,
    NumberChange,
)
from plugins.whatsapp import webhook_builders as p
from plugins.whatsapp.models import ParsedWebhook, WebhookPayloadError, parse_webhook


def _parse(**kwargs: Any) -> ParsedWebhook:
    return parse_webhook(p.encode(p.envelope(**kwargs)))


def _one(msg: dict[str, Any], **kwargs: Any) -> InboundMessage:
    result = _parse(messages=[msg], **kwargs)
    assert result.ignored == []
    assert len(result.messages) == 1
    return result.messages[0]


# (builder, expected type, expected body, media expected)
CASES: list[tuple[str, Callable[[], dict[str, Any]], str, str | None, bool]] = [
    ("text", lambda: p.text("Olá! Qual o preço?"), "text", "Olá! Qual o preço?", False),
    ("image", lambda: p.image(caption="Foto do produto"), "image", "Foto do produto", True),
    ("image-no-caption", lambda: p.image(), "image", None, True),
    ("video", lambda: p.video(caption="Vídeo"), "video", "Vídeo", True),
    ("audio-voice", lambda: p.audio(voice=True), "audio", None, True),
    ("audio-file", lambda: p.audio(voice=False), "audio", None, True),
    ("document", lambda: p.document(caption="Orçamento"), "document", "Orçamento", True),
    ("sticker", lambda: p.sticker(animated=True), "sticker", None, True),
    ("location", lambda: p.location(name="Av. Paulista", address="São Paulo"), "location", None, False),
    ("contacts", lambda: p.contacts(), "contacts", None, False),
    ("button_reply", lambda: p.button_reply("Sim"), "interactive", "Sim", False),
    ("list_reply", lambda: p.list_reply("Entrega expressa"), "interactive", "Entrega expressa", False),
    ("nfm_reply", lambda: p.flow_reply(), "interactive", "Sent", False),
    ("button", lambda: p.button("Quero saber mais"), "button", "Quero saber mais", False),
    ("reaction", lambda: p.reaction("wamid.OUT1", "❤️"), "reaction", "❤️", False),
    ("reaction-removed", lambda: p.reaction("wamid.OUT1", None), "reaction", None, False),
    ("reaction-removed-empty", lambda: p.reaction("wamid.OUT1", ""), "reaction", None, False),
    ("order", lambda: p.order(text="Pode entregar?"), "order", "Pode entregar?", False),
    ("system", lambda: p.system(body="João mudou de número"), "system", "João mudou de número", False),
    ("unsupported", lambda: p.unsupported(), "unsupported", None, False),
    ("request_welcome", lambda: p.request_welcome(), "request_welcome", None, False),
    ("future-type", lambda: p.message("poll", {"question": "Pizza?"}), "poll", None, False),
]


@pytest.mark.parametrize(
    ("build", "type_", "body", "has_media"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_every_message_type_translates(
    build: Callable[[], dict[str, Any]], type_: str, body: str | None, has_media: bool
) -> None:
    raw = build()
    msg = _one(raw, phone_number_id="100000000000099")

    assert msg.type == type_
    assert msg.body == body
    assert msg.wamid == raw["id"]
    assert msg.phone_number_id == "100000000000099"
    assert msg.wa_id == p.DEFAULT_FROM
    assert msg.raw == raw
    assert msg.timestamp == datetime.fromtimestamp(int(raw["timestamp"]), UTC)
    assert msg.timestamp.tzinfo is not None
    if has_media:
        assert msg.media_id == raw[type_]["id"]
        assert msg.media_mime_type == raw[type_]["mime_type"]
    else:
        assert msg.media_id is None
        assert msg.media_mime_type is None
    if type_ == "system":  # no contacts[] in that webhook
        assert msg.profile_name is None
    else:
        assert msg.profile_name == "João Silva"


def test_context_and_referral() -> None:
    reply = _one(p.text("Esse aqui", context=p.reply_to("wamid.SENT1"), referral=p.ad_referral()))
    assert reply.context_wamid == "wamid.SENT1"
    assert reply.raw["referral"]["headline"] == "Promoção de verão"

    assert _one(p.text("fwd", context=p.forwarded())).context_wamid is None
    assert _one(p.button_reply(context=p.reply_to("wamid.BTN"))).context_wamid == "wamid.BTN"


def test_timestamp_is_utc_aware() -> None:
    msg = _one(p.text("oi", timestamp="1749416383"))

    assert msg.timestamp == datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)


def test_contact_matching_and_profile_names() -> None:
    a, b = p.text("a", from_="5511911111111"), p.text("b", from_="5521922222222")
    result = _parse(
        messages=[a, b], contacts=[p.contact("5521922222222", "Ana"), p.contact("5511911111111", "")]
    )

    assert [(m.wa_id, m.profile_name) for m in result.messages] == [
        ("5511911111111", None),  # empty name -> None
        ("5521922222222", "Ana"),
    ]


def test_wa_id_falls_back_to_first_contact_then_from() -> None:
    # Brazilian numbers: Meta's wa_id may lack the 9th digit that `from` has.
    msg = _one(p.text("oi", from_="5511999999999"), contacts=[p.contact("551199999999", "Zé")])
    assert (msg.wa_id, msg.profile_name) == ("551199999999", "Zé")

    msg = _one(p.text("oi", from_="5511977777777"), contacts=[])
    assert (msg.wa_id, msg.profile_name) == ("5511977777777", None)


def test_statuses_translate() -> None:
    sent = p.status("wamid.OUT1", "sent", timestamp="1751142880", recipient_id="5511988887777")
    failed = p.status("wamid.OUT2", "failed", timestamp="1751142888", error_code=131049)
    result = _parse(statuses=[sent, failed], phone_number_id="123")

    assert result.messages == []
    assert result.ignored == []
    s, f = result.statuses
    assert (s.phone_number_id, s.wamid, s.status, s.timestamp) == ("123", "wamid.OUT1", "sent", "1751142880")
    assert s.recipient_id == "5511988887777"
    assert s.error_code is None
    assert s.error_title is None
    assert s.raw == sent
    assert (f.status, f.error_code) == ("failed", 131049)
    assert f.error_title == "This message was not delivered to maintain healthy ecosystem engagement."


@pytest.mark.parametrize(
    ("callback_data", "message_id"),
    [("zaphub:42", 42), (None, None), ("campanha-42", None), ("zaphub:", None), ("zaphub:4x", None)],
)
def test_a_status_echoing_our_callback_data_names_our_message(
    callback_data: str | None, message_id: int | None
) -> None:
    status = p.status("wamid.OUT1", "sent", biz_opaque_callback_data=callback_data)
    assert _parse(statuses=[status]).statuses[0].message_id == message_id


def test_unknown_status_value_is_kept() -> None:
    assert _parse(statuses=[p.status("wamid.X", "deleted")]).statuses[0].status == "deleted"


def test_batch_of_1000_across_entries_and_changes() -> None:
    envelopes = []
    for e in range(4):
        changes = []
        for c in range(5):
            msgs = [p.text(f"msg {e}-{c}-{i}", from_=f"55119{e}{c}{i:06d}") for i in range(40)]
            sts = [p.status(f"wamid.OUT.{e}.{c}.{i}", "read") for i in range(10)]
            env = p.envelope(messages=msgs, statuses=sts, phone_number_id=f"PN{c}")
            changes.extend(env["entry"][0]["changes"])
        envelopes.append(
            {"object": "whatsapp_business_account", "entry": [{"id": f"W{e}", "changes": changes}]}
        )
    result = parse_webhook(p.encode(p.merge(*envelopes)))

    assert result.ignored == []
    assert len(result.messages) == 800
    assert len(result.statuses) == 200
    assert len({m.wamid for m in result.messages}) == 800
    assert result.messages[-1].body == "msg 3-4-39"
    assert {m.phone_number_id for m in result.messages} == {f"PN{c}" for c in range(5)}


def test_other_object_is_ignored_not_raised() -> None:
    result = parse_webhook(p.encode(p.envelope(messages=[p.text("oi")], object_="page")))

    assert result.object == "page"
    assert result.messages == []
    assert result.statuses == []
    assert "page" in result.ignored[0]


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"object": "whatsapp_business_account",}'])
def test_malformed_json_raises(body: bytes) -> None:
    with pytest.raises(WebhookPayloadError, match="not valid JSON"):
        parse_webhook(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1, 2]", "array"),
        (b"42", "number"),
        (b'"hello"', "string"),
        (b"null", "null"),
        (b"{}", "object ''"),
        (b'{"object": 7}', "object 7"),
        (b'{"object": "whatsapp_business_account", "entry": {}}', "entry is a JSON object"),
    ],
)
def test_valid_json_of_other_shapes_is_ignored(body: bytes, reason: str) -> None:
    result = parse_webhook(body)

    assert result.messages == []
    assert result.statuses == []
    assert len(result.ignored) == 1
    assert reason in result.ignored[0]


def test_bad_message_in_batch_is_skipped_and_the_rest_kept() -> None:
    good1, good2 = p.text("primeira"), p.text("terceira")
    bad_ts = p.text("ts ruim", wamid="wamid.BADTS", timestamp="ontem")
    no_id = p.text("sem id")
    del no_id["id"]
    bad_body = p.message("text", {"body": 12}, wamid="wamid.BADBODY")
    env = p.envelope(messages=[good1, bad_ts, no_id, bad_body, good2])
    env["entry"][0]["changes"][0]["value"]["messages"].insert(1, "not an object")
    result = parse_webhook(p.encode(env))

    assert [m.body for m in result.messages] == ["primeira", "terceira"]
    assert len(result.ignored) == 4
    assert "messages[1]" in result.ignored[0]
    assert "object" in result.ignored[0]
    assert "wamid.BADTS" in result.ignored[1]
    assert "wamid.BADBODY" in result.ignored[3]
    assert "$.text.body" in result.ignored[3]


def test_bad_status_is_skipped() -> None:
    bad = p.status("wamid.B")
    del bad["status"]
    result = _parse(statuses=[bad, p.status("wamid.G")])

    assert [s.wamid for s in result.statuses] == ["wamid.G"]
    assert "wamid.B" in result.ignored[0]


def test_malformed_change_does_not_lose_the_others() -> None:
    good = p.envelope(messages=[p.text("ok")])
    broken = p.envelope(messages=[p.text("perdida")])
    broken["entry"][0]["changes"][0]["value"]["metadata"] = "oops"
    broken["entry"][0]["changes"][0]["value"]["contacts"] = "oops"
    result = parse_webhook(p.encode(p.merge(broken, good)))

    assert [m.body for m in result.messages] == ["ok"]
    assert len(result.ignored) == 1
    assert "entry[0].changes[0]" in result.ignored[0]


def test_missing_phone_number_id_is_reported() -> None:
    env = p.envelope(messages=[p.text("oi")])
    del env["entry"][0]["changes"][0]["value"]["metadata"]
    result = parse_webhook(p.encode(env))

    assert result.messages == []
    assert "phone_number_id" in result.ignored[0]


def test_other_fields_are_ignored_and_value_errors_collected() -> None:
    env = p.envelope(
        messages=[p.text("oi")],
        errors=[p.error(131000, "Something went wrong", details="Unsupported webhook payload")],
        extra_changes=[p.account_update(), p.change("history", {"history": [{"threads": "weird"}]})],
    )
    result = parse_webhook(p.encode(env))

    assert [m.body for m in result.messages] == ["oi"]
    assert result.errors[0]["code"] == 131000
    assert result.errors[0]["error_data"]["details"] == "Unsupported webhook payload"
    assert len(result.ignored) == 2
    assert "'account_update'" in result.ignored[0]
    assert "'history'" in result.ignored[1]


def test_non_messages_field_with_unexpected_value_shape() -> None:
    # Valid JSON whose other field does not look like a messages value at all.
    env = p.envelope(messages=[p.text("oi")], extra_changes=[p.change("calls", {"metadata": ["x"]})])
    result = parse_webhook(p.encode(env))

    assert [m.body for m in result.messages] == ["oi"]
    assert len(result.ignored) == 1
    assert "'calls'" in result.ignored[0]


def test_unknown_fields_are_tolerated_and_kept_in_raw() -> None:
    raw = p.text("oi")
    raw["brand_new_field"] = {"x": 1}
    raw["text"]["format"] = "markdown"
    msg = _one(raw)

    assert msg.body == "oi"
    assert msg.raw["brand_new_field"] == {"x": 1}


def test_escaped_slashes_and_unicode_decode() -> None:
    raw = p.image(
        caption="Pão de açúcar 🍞", url="https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"
    )
    result = parse_webhook(p.encode(p.envelope(messages=[raw]), escape_slashes=True))

    assert result.messages[0].body == "Pão de açúcar 🍞"
    assert result.messages[0].raw == raw


@pytest.mark.parametrize(
    ("raw", "action"),
    [
        (
            p.edit("wamid.ORIG", "Texto corrigido"),
            MessageEdit(target_wamid="wamid.ORIG", body="Texto corrigido"),
        ),
        (  # an edited caption, as pywa's fixture has it
            p.message(
                "edit",
                {
                    "original_message_id": "wamid.ORIG",
                    "message": {"type": "image", "image": {"id": "65463453", "caption": "nova legenda"}},
                },
            ),
            MessageEdit(target_wamid="wamid.ORIG", body="nova legenda"),
        ),
        (p.revoke("wamid.ORIG"), MessageRevoke(target_wamid="wamid.ORIG")),
        (p.reaction("wamid.ORIG", "❤️"), MessageReaction(target_wamid="wamid.ORIG", emoji="❤️")),
        (p.reaction("wamid.ORIG", ""), MessageReaction(target_wamid="wamid.ORIG", emoji=None)),
        (p.reaction("wamid.ORIG", None), MessageReaction(target_wamid="wamid.ORIG", emoji=None)),
        (p.system("5511900001111"), NumberChange(new_wa_id="5511900001111")),
        (
            p.system("5511900001111", system_type="customer_changed_number"),
            NumberChange(new_wa_id="5511900001111"),
        ),
        (p.system("5511900001111", system_type="customer_identity_changed"), None),
        (p.message("revoke", {}), None),  # names no message: stored as it came
        (p.text("oi"), None),
    ],
    ids=[
        "edit",
        "edit-caption",
        "revoke",
        "reaction",
        "reaction-removed-empty",
        "reaction-removed",
        "number-change",
        "customer-changed-number",
        "identity-change",
        "revoke-without-target",
        "text",
    ],
)
def test_edits_deletions_reactions_and_number_changes_say_what_they_change(
    raw: dict[str, Any], action: LifecycleAction | None
) -> None:
    assert _one(raw).action == action
