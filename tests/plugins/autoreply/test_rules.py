"""The auto-reply decision: rules, business hours, greeting, and their order."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from plugins.autoreply.config import AutoreplySettings
from plugins.autoreply.rules import Decision, RuleEngine, normalize

UTC = dt.UTC
# Monday 2026-03-02, 15:00 in São Paulo (UTC-3 all year since 2019): inside the usual hours.
OPEN_NOW = dt.datetime(2026, 3, 2, 18, 0, tzinfo=UTC)


def engine(**section: Any) -> RuleEngine:
    return RuleEngine(msgspec.convert(section, AutoreplySettings))


def keyword_engine(*keywords: str) -> RuleEngine:
    return engine(rules=[{"keywords": list(keywords), "reply": "match"}])


def matches(e: RuleEngine, text: str) -> bool:
    return e.decide(text, now=OPEN_NOW, first_message=False) is not None


def away_engine(hours: dict[str, Any], *, timezone: str = "America/Sao_Paulo", **away: Any) -> RuleEngine:
    return engine(away={"timezone": timezone, "hours": hours, "reply": "Fechado.", **away})


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- normalize -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Preço", "preco"),
        ("AÇÃO", "acao"),
        ("Você está aí?", "voce esta ai?"),
        ("pão de açúcar", "pao de acucar"),
        ("2ª VIA", "2a via"),
        ("Straße", "strasse"),
        ("\uff30\uff29\uff38", "pix"),  # full-width letters from some phone keyboards
    ],
)
def test_normalize_folds_case_and_accents(text: str, expected: str) -> None:
    assert normalize(text) == expected


# --- keywords --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "text", "expected"),
    [
        ("preço", "Qual o preço?", True),
        ("preço", "QUAL O PRECO", True),
        ("preço", "qual o preco", True),
        ("preco", "Qual o PREÇO?", True),
        ("preço", "preço", True),
        ("preço", "Preço: quanto?", True),
        ("preço", "(preço)", True),
        ("preço", "Qual o preço\ndo frete?", True),
        ("preço", "Quais os preços?", False),
        ("preço", "apreço muito", False),
        ("preço", "preço_final", False),
        ("preço", "precos", False),
        ("pix", "Aceita PIX?", True),
        ("pix", "pixel", False),
        ("horário", "horario de atendimento", True),
        ("horário", "horários", False),
        ("não", "Nao quero", True),
        ("c++", "vocês usam C++?", True),
        ("2ª via", "preciso da 2a via", True),
    ],
)
def test_keywords_match_whole_words_ignoring_case_and_accents(
    keyword: str, text: str, expected: bool
) -> None:
    assert matches(keyword_engine(keyword), text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Preciso da segunda via do boleto", True),
        ("SEGUNDA VIA", True),
        ("segunda   via", True),
        ("segunda\nvia", True),
        ("segunda-feira pela via expressa", False),
        ("segunda vias", False),
        ("via segunda", False),
        ("segunda", False),
    ],
)
def test_multi_word_keywords_match_as_a_phrase(text: str, expected: bool) -> None:
    assert matches(keyword_engine("segunda via"), text) is expected


def test_any_keyword_of_a_rule_matches() -> None:
    e = keyword_engine("preço", "price", "valor")

    assert matches(e, "What's the price?")
    assert matches(e, "qual o valor")
    assert not matches(e, "oi")


# --- patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Qual o horário?", True),
        ("HORARIO", True),
        ("horários de sábado", True),  # a pattern is searched, not matched as a whole word
        ("hora", False),
    ],
)
def test_pattern_is_searched_in_the_text_as_received(text: str, expected: bool) -> None:
    e = engine(rules=[{"pattern": "(?i)hor[aá]rio", "reply": "9h às 18h"}])

    assert matches(e, text) is expected


def test_pattern_is_not_normalized() -> None:
    e = engine(rules=[{"pattern": "ção", "reply": "x"}])

    assert matches(e, "atenção")
    assert not matches(e, "atencao")  # unlike keywords, the regex sees the accents as written


def test_anchored_pattern() -> None:
    e = engine(rules=[{"pattern": r"^\s*\d{11}\s*$", "reply": "CPF recebido"}])

    assert matches(e, " 12345678901 ")
    assert not matches(e, "meu cpf é 12345678901")


# --- rules in order --------------------------------------------------------------------------


RULES = [
    {"keywords": ["preço"], "reply": "Tabela de preços"},
    {"pattern": "(?i)hor[aá]rio", "reply": "Das 9h às 18h"},
    {"keywords": ["preço", "frete"], "reply": "Frete grátis"},
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("qual o preço?", Decision("Tabela de preços", "rule", 0)),
        ("qual o horário e o preço?", Decision("Tabela de preços", "rule", 0)),
        ("o horário do frete", Decision("Das 9h às 18h", "rule", 1)),
        ("e o frete?", Decision("Frete grátis", "rule", 2)),
    ],
)
def test_first_matching_rule_wins(text: str, expected: Decision) -> None:
    e = engine(rules=RULES)

    assert e.decide(text, now=OPEN_NOW, first_message=False) == expected


@pytest.mark.parametrize("text", [None, "", "obrigado!"])
def test_no_rule_matches_no_text_or_unrelated_text(text: str | None) -> None:
    e = engine(rules=RULES)

    assert e.decide(text, now=OPEN_NOW, first_message=False) is None


# --- business hours --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-03-02T11:59:59", False),  # Monday 08:59:59 in São Paulo
        ("2026-03-02T12:00:00", True),  # 09:00
        ("2026-03-02T20:59:59", True),  # 17:59:59
        ("2026-03-02T21:00:00", False),  # 18:00: the end is excluded
        ("2026-01-12T12:00:00", True),  # January: São Paulo no longer has summer time, still UTC-3
        ("2026-03-07T15:00:00", True),  # Saturday 12:00
        ("2026-03-07T16:00:00", False),  # Saturday 13:00
        ("2026-03-08T15:00:00", False),  # Sunday: not listed, closed
        ("2026-03-03T01:00:00", False),  # Monday 22:00 local although Tuesday in UTC
    ],
)
def test_is_open_in_the_configured_timezone(now: str, expected: bool) -> None:
    e = away_engine({"mon-fri": "09:00-18:00", "sat": "09:00-13:00"})

    assert e.is_open(utc(now)) is expected


def test_is_open_accepts_any_aware_datetime() -> None:
    e = away_engine({"mon-fri": "09:00-18:00"})
    sao_paulo = dt.timezone(dt.timedelta(hours=-3))

    assert e.is_open(dt.datetime(2026, 3, 2, 9, 0, tzinfo=sao_paulo))
    assert not e.is_open(dt.datetime(2026, 3, 2, 8, 59, tzinfo=sao_paulo))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-01-15T13:59:00", False),  # 08:59 EST (UTC-5)
        ("2026-01-15T14:00:00", True),  # 09:00 EST
        ("2026-07-15T12:59:00", False),  # 08:59 EDT (UTC-4)
        ("2026-07-15T13:00:00", True),  # 09:00 EDT
        ("2026-07-15T21:59:00", True),  # 17:59 EDT
        ("2026-07-15T22:00:00", False),  # 18:00 EDT
    ],
)
def test_zone_with_daylight_saving_follows_the_local_clock(now: str, expected: bool) -> None:
    e = away_engine({"mon-fri": "09:00-18:00"}, timezone="America/New_York")

    assert e.is_open(utc(now)) is expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-03-08T06:59:00", True),  # 01:59 EST, just before clocks jump to 03:00
        ("2026-03-08T07:00:00", False),  # 03:00 EDT: 02:00-02:59 never happened
    ],
)
def test_day_of_the_daylight_saving_jump(now: str, expected: bool) -> None:
    e = away_engine({"sun": "01:00-03:00"}, timezone="America/New_York")

    assert e.is_open(utc(now)) is expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-03-02T03:29:00", False),  # 08:59 IST (UTC+5:30)
        ("2026-03-02T03:30:00", True),  # 09:00 IST
    ],
)
def test_half_hour_offset_zone(now: str, expected: bool) -> None:
    e = away_engine({"mon-fri": "09:00-18:00"}, timezone="Asia/Kolkata")

    assert e.is_open(utc(now)) is expected


@pytest.mark.parametrize(
    ("local_time", "expected"),
    [
        ("08:59", False),
        ("09:00", True),
        ("11:59", True),
        ("12:00", False),  # lunch
        ("12:59", False),
        ("13:00", True),
        ("17:59", True),
        ("18:00", False),
    ],
)
@pytest.mark.parametrize(
    "hours", ["09:00-12:00, 13:00-18:00", ["09:00-12:00", "13:00-18:00"]], ids=["comma-string", "list"]
)
def test_several_intervals_a_day(hours: str | list[str], local_time: str, expected: bool) -> None:
    e = away_engine({"mon-fri": hours}, timezone="UTC")

    assert e.is_open(utc(f"2026-03-04T{local_time}")) is expected  # a Wednesday


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-03-06T12:00:00", True),  # Friday
        ("2026-03-07T12:00:00", True),  # Saturday
        ("2026-03-08T12:00:00", True),  # Sunday
        ("2026-03-02T12:00:00", True),  # Monday
        ("2026-03-03T12:00:00", False),  # Tuesday
        ("2026-03-05T12:00:00", False),  # Thursday
    ],
)
def test_day_range_wrapping_the_week_end(now: str, expected: bool) -> None:
    e = away_engine({"fri-mon": "10:00-14:00"}, timezone="UTC")

    assert e.is_open(utc(now)) is expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-03-06T21:59:00", False),
        ("2026-03-06T22:00:00", True),
        ("2026-03-06T23:59:59", True),  # open until midnight with 24:00
        ("2026-03-07T00:00:00", True),  # Saturday continues the night
        ("2026-03-07T01:59:00", True),
        ("2026-03-07T02:00:00", False),
    ],
)
def test_interval_ending_at_midnight_and_overnight_split(now: str, expected: bool) -> None:
    e = away_engine({"fri": "22:00-24:00", "sat": "00:00-02:00"}, timezone="UTC")

    assert e.is_open(utc(now)) is expected


def test_holidays_are_closed_all_day_in_local_time() -> None:
    e = away_engine({"mon-sun": "00:00-24:00"}, holidays=["2026-12-25"])

    assert e.is_open(utc("2026-12-25T02:59:00"))  # still 24 Dec 23:59 in São Paulo
    assert not e.is_open(utc("2026-12-25T03:00:00"))  # 25 Dec 00:00
    assert not e.is_open(utc("2026-12-25T20:00:00"))  # 25 Dec 17:00, a Friday
    assert not e.is_open(utc("2026-12-26T02:59:00"))  # 25 Dec 23:59
    assert e.is_open(utc("2026-12-26T03:00:00"))  # 26 Dec 00:00


def test_always_open_without_away() -> None:
    assert engine().is_open(utc("2026-03-08T03:00:00"))


@pytest.mark.parametrize("with_away", [True, False])
def test_naive_now_is_refused(with_away: bool) -> None:
    e = away_engine({"mon-fri": "09:00-18:00"}) if with_away else engine(greeting="Olá")

    with pytest.raises(ValueError, match="timezone-aware"):
        e.is_open(dt.datetime(2026, 3, 2, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        e.decide("oi", now=dt.datetime(2026, 3, 2, 12, 0), first_message=True)


# --- the decision order ----------------------------------------------------------------------


FULL = {
    "rules": [{"keywords": ["preço"], "reply": "Tabela"}],
    "away": {"timezone": "America/Sao_Paulo", "hours": {"mon-fri": "09:00-18:00"}, "reply": "Fechado."},
    "greeting": "Olá!",
}
OPEN = utc("2026-03-02T12:00:00")  # Monday 09:00 in São Paulo
CLOSED = utc("2026-03-02T11:59:00")  # Monday 08:59


@pytest.mark.parametrize(
    ("text", "now", "first_message", "expected"),
    [
        pytest.param("preço?", OPEN, False, Decision("Tabela", "rule", 0), id="rule-open"),
        pytest.param(
            "preço?", CLOSED, True, Decision("Tabela", "rule", 0), id="rule-beats-away-and-greeting"
        ),
        pytest.param("oi", CLOSED, False, Decision("Fechado.", "away"), id="away-when-closed"),
        pytest.param("oi", CLOSED, True, Decision("Fechado.", "away"), id="away-beats-greeting"),
        pytest.param(None, CLOSED, False, Decision("Fechado.", "away"), id="away-for-media-without-caption"),
        pytest.param("oi", OPEN, True, Decision("Olá!", "greeting"), id="greeting-first-message-open"),
        pytest.param(None, OPEN, True, Decision("Olá!", "greeting"), id="greeting-without-text"),
        pytest.param("oi", OPEN, False, None, id="nothing-later-in-the-conversation"),
    ],
)
def test_decision_order_rules_then_away_then_greeting(
    text: str | None, now: dt.datetime, first_message: bool, expected: Decision | None
) -> None:
    assert engine(**FULL).decide(text, now=now, first_message=first_message) == expected


def test_greeting_only_for_the_first_message() -> None:
    e = engine(greeting="Olá! Recebemos sua mensagem.")

    assert e.decide("oi", now=OPEN, first_message=True) == Decision(
        "Olá! Recebemos sua mensagem.", "greeting"
    )
    assert e.decide("oi", now=OPEN, first_message=False) is None


def test_no_greeting_configured() -> None:
    assert engine().decide("oi", now=OPEN, first_message=True) is None


def test_disabled_decides_nothing() -> None:
    e = engine(enabled=False, **FULL)

    assert e.decide("preço", now=CLOSED, first_message=True) is None
