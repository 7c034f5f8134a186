import hashlib
import hmac
import json

import pytest

from plugins.whatsapp import webhook_builders as p


def _value(env: dict) -> dict:
    return env["entry"][0]["changes"][0]["value"]


def test_non_ascii_is_escaped_with_lowercase_hex_like_meta() -> None:
    body = p.encode(p.envelope(messages=[p.text("Olá! Preço ç äöå 😀")]))

    assert body.isascii()
    assert b"Ol\\u00e1" in body
    assert b"\\u00e4\\u00f6\\u00e5" in body
    assert b"\\ud83d\\ude00" in body  # emoji as a surrogate pair, lowercase
    assert b": " not in body
    assert b", " not in body
    assert json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == (
        "Olá! Preço ç äöå 😀"
    )


def test_escape_slashes_keeps_the_same_json() -> None:
    payload = p.envelope(messages=[p.image(url="https://lookaside.fbsbx.com/x")])
    body = p.encode(payload, escape_slashes=True)

    assert b"image\\/jpeg" in body
    assert json.loads(body) == json.loads(p.encode(payload))


def test_signature_is_hmac_sha256_of_the_exact_bytes() -> None:
    body = p.encode(p.envelope(messages=[p.text("Olá, João!")]))
    header = p.sign(body, "s3cr3t")

    algo, _, digest = header.partition("=")
    assert algo == "sha256"
    assert len(digest) == 64
    assert digest == digest.lower()
    expected = hmac.new(b"s3cr3t", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(digest, expected)
    # Re-serializing the decoded body the "usual" way changes the bytes, so the signature breaks.
    reserialized = json.dumps(json.loads(body), ensure_ascii=False).encode()
    assert p.sign(reserialized, "s3cr3t") != header
    assert p.sign(body, "other-secret") != header


def test_signed_returns_body_and_meta_headers() -> None:
    body, headers = p.signed(p.envelope(messages=[p.text("oi")]), "k")

    assert headers == {"Content-Type": "application/json", "X-Hub-Signature-256": p.sign(body, "k")}


def test_envelope_has_meta_shape_and_derives_contacts() -> None:
    msgs = [p.text("oi", from_="5511911111111"), p.text("de novo", from_="5511911111111"), p.text("eu")]
    env = p.envelope(messages=msgs)

    assert env["object"] == "whatsapp_business_account"
    assert env["entry"][0]["id"] == p.DEFAULT_WABA_ID
    change = env["entry"][0]["changes"][0]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"] == {
        "display_phone_number": p.DEFAULT_DISPLAY_PHONE_NUMBER,
        "phone_number_id": p.DEFAULT_PHONE_NUMBER_ID,
    }
    assert [c["wa_id"] for c in value["contacts"]] == ["5511911111111", p.DEFAULT_FROM]
    assert value["contacts"][1]["profile"]["name"] == "João Silva"
    assert "statuses" not in value


def test_system_message_envelope_has_no_contacts() -> None:
    assert "contacts" not in _value(p.envelope(messages=[p.system()]))


def test_status_envelope_has_no_contacts_or_messages() -> None:
    value = _value(p.envelope(statuses=[p.status("wamid.OUT1", "read")]))

    assert "contacts" not in value
    assert "messages" not in value
    assert value["statuses"][0]["id"] == "wamid.OUT1"


def test_wamids_are_unique_and_meta_like() -> None:
    ids = {p.text("x")["id"] for _ in range(500)}

    assert len(ids) == 500
    assert all(i.startswith("wamid.HBgL") for i in ids)


def test_timestamps_are_strings_of_unix_seconds() -> None:
    assert p.text("x", timestamp=1749416383)["timestamp"] == "1749416383"
    assert p.text("x")["timestamp"].isdigit()
    assert p.status("wamid.A", "sent", timestamp=5)["timestamp"] == "5"


def test_common_options_context_and_referral() -> None:
    msg = p.text("Vi o anúncio", context=p.forwarded(), referral=p.ad_referral(), wamid="wamid.X")

    assert msg["id"] == "wamid.X"
    assert msg["context"] == {"forwarded": True}
    assert msg["referral"]["source_type"] == "ad"
    assert "ctwa_clid" in msg["referral"]
    assert p.forwarded(frequently=True) == {"frequently_forwarded": True}
    assert "ctwa_clid" not in p.ad_referral(ctwa_clid=None)
    assert p.product_inquiry("wamid.P")["referred_product"]["catalog_id"]


def test_replies_carry_context_by_default() -> None:
    for msg in (p.button_reply(), p.list_reply(), p.flow_reply(), p.button()):
        assert msg["context"]["id"].startswith("wamid.")
    assert p.button_reply(context=p.reply_to("wamid.SENT"))["context"] == {
        "from": p.DEFAULT_DISPLAY_PHONE_NUMBER,
        "id": "wamid.SENT",
    }


def test_flow_reply_response_json_is_a_json_string() -> None:
    nfm = p.flow_reply({"cpf": "123"})["interactive"]["nfm_reply"]

    assert nfm["name"] == "flow"
    assert nfm["body"] == "Sent"
    assert json.loads(nfm["response_json"]) == {"cpf": "123", "flow_token": "flow-token-123"}


def test_reaction_removal_omits_emoji_or_sends_empty() -> None:
    assert "emoji" not in p.reaction("wamid.A", None)["reaction"]
    assert p.reaction("wamid.A", "")["reaction"]["emoji"] == ""


def test_audio_voice_flag_and_mime() -> None:
    voice, file = p.audio()["audio"], p.audio(voice=False)["audio"]

    assert voice["voice"] is True
    assert voice["mime_type"] == "audio/ogg; codecs=opus"
    assert file["voice"] is False
    assert file["mime_type"] == "audio/mpeg"


def test_unsupported_carries_131051() -> None:
    msg = p.unsupported()

    assert msg["errors"][0]["code"] == 131051
    assert msg["errors"][0]["error_data"]["details"] == "Message type is currently not supported."
    assert msg["unsupported"] == {"type": "poll_creation"}


def test_request_welcome_and_generic_message() -> None:
    assert "request_welcome" not in p.request_welcome()
    assert p.message("poll", {"question": "Pizza?"})["poll"] == {"question": "Pizza?"}


@pytest.mark.parametrize(
    ("status", "priced"),
    [("sent", True), ("delivered", True), ("read", False), ("failed", False)],
)
def test_status_pricing_and_conversation_defaults(status: str, priced: bool) -> None:
    st = p.status("wamid.OUT", status)

    assert ("pricing" in st) is priced
    assert ("conversation" in st) is priced
    if priced:
        assert st["pricing"]["pricing_model"] == "PMP"
        assert ("expiration_timestamp" in st["conversation"]) is (status == "sent")


def test_failed_status_has_meta_errors() -> None:
    st = p.status("wamid.OUT", "failed", error_code=131047)
    err = st["errors"][0]

    assert err["code"] == 131047
    assert err["title"] == err["message"] == "Re-engagement message"
    assert err["href"].startswith("/documentation/")
    assert p.status("wamid.OUT", "failed")["errors"][0]["code"] == 131026
    assert p.status("wamid.OUT", "read", pricing=True, conversation=False)["pricing"]["billable"] is True


def test_extra_changes_and_merge() -> None:
    only_account = p.envelope(extra_changes=[p.account_update()])
    assert [c["field"] for c in only_account["entry"][0]["changes"]] == ["account_update"]

    mixed = p.envelope(messages=[p.text("oi")], extra_changes=[p.account_update()])
    assert [c["field"] for c in mixed["entry"][0]["changes"]] == ["messages", "account_update"]

    merged = p.merge(mixed, p.envelope(statuses=[p.status("wamid.A")], waba_id="999"))
    assert [e["id"] for e in merged["entry"]] == [p.DEFAULT_WABA_ID, "999"]
    assert merged["object"] == "whatsapp_business_account"


def test_value_errors_and_explicit_contacts() -> None:
    value = _value(
        p.envelope(
            messages=[p.text("oi")],
            contacts=[p.contact(p.DEFAULT_FROM, "", user_id="BR.123")],
            errors=[p.error(131000, "Something went wrong")],
        )
    )

    assert value["contacts"] == [{"profile": {"name": ""}, "wa_id": p.DEFAULT_FROM, "user_id": "BR.123"}]
    assert value["errors"][0]["code"] == 131000
    assert "contacts" not in _value(p.envelope(messages=[p.text("oi")], contacts=[]))
