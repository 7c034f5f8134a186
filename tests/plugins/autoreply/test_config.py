"""The autoreply settings schema, validated the way the host does it: ``msgspec.convert``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
import yaml

from core.config import convert_section
from core.errors import ConfigError
from plugins.autoreply.config import AutoreplySettings, Interval

DESIGN_EXAMPLE = """
cooldown_seconds: 600
rules:
  - {keywords: ["preço", "price"], reply: "Nossa tabela de preços: …"}
  - {pattern: "(?i)hor[aá]rio", reply: "Atendemos de 9h às 18h."}
away:
  timezone: America/Sao_Paulo
  hours: {mon-fri: "09:00-18:00", sat: "09:00-13:00"}
  reply: "Estamos fora do horário de atendimento."
greeting: "Olá! Recebemos sua mensagem."
"""

AWAY = {"timezone": "America/Sao_Paulo", "reply": "Fechado."}


def convert(section: dict[str, Any]) -> AutoreplySettings:
    # The host converts leniently (values from ${VAR} are strings); strictness must not matter here.
    return msgspec.convert(section, AutoreplySettings, strict=False)


def test_design_example_is_valid() -> None:
    settings = convert(yaml.safe_load(DESIGN_EXAMPLE))

    assert settings.cooldown_seconds == 600
    assert settings.rules[0].keywords == ["preço", "price"]
    assert settings.rules[1].regex is not None
    assert settings.rules[1].regex.pattern == "(?i)hor[aá]rio"
    assert settings.away is not None
    assert str(settings.away.zone) == "America/Sao_Paulo"
    weekdays = settings.away.schedule
    assert weekdays[0] == weekdays[4] == (Interval(9 * 60, 18 * 60),)
    assert weekdays[5] == (Interval(9 * 60, 13 * 60),)
    assert weekdays[6] == ()
    assert settings.greeting == "Olá! Recebemos sua mensagem."


def test_empty_section_gives_documented_defaults() -> None:
    settings = convert({})

    assert settings.enabled is True
    assert settings.cooldown_seconds == 600
    assert settings.max_message_age_seconds == 3600
    assert settings.rules == []
    assert settings.away is None
    assert settings.greeting is None


def test_strings_from_environment_variables_are_accepted() -> None:
    settings = convert({"enabled": "false", "cooldown_seconds": "30"})

    assert settings.enabled is False
    assert settings.cooldown_seconds == 30


def test_parsed_forms_are_computed_once_and_not_serialized() -> None:
    settings = convert(yaml.safe_load(DESIGN_EXAMPLE))
    assert settings.away is not None

    assert settings.rules[1].regex is settings.rules[1].regex
    assert settings.away.schedule is settings.away.schedule
    assert "regex" not in msgspec.to_builtins(settings.rules[1])
    assert "schedule" not in msgspec.to_builtins(settings.away)


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        pytest.param({"mon": "09:00-18:00"}, {0: [(540, 1080)]}, id="single-day"),
        pytest.param(
            {"MON-Wed": "09:00-18:00"}, {0: [(540, 1080)], 1: [(540, 1080)], 2: [(540, 1080)]}, id="range"
        ),
        pytest.param(
            {"fri-mon": "10:00-11:00"},
            {4: [(600, 660)], 5: [(600, 660)], 6: [(600, 660)], 0: [(600, 660)]},
            id="range-wrapping-the-week-end",
        ),
        pytest.param(
            {"tue": "13:00-18:00, 09:00-12:00"}, {1: [(540, 720), (780, 1080)]}, id="comma-list-sorted"
        ),
        pytest.param({"tue": ["09:00-12:00", "13:00-18:00"]}, {1: [(540, 720), (780, 1080)]}, id="yaml-list"),
        pytest.param({"sat": "9:30 - 24:00"}, {5: [(570, 1440)]}, id="one-digit-hour-spaces-and-24"),
    ],
)
def test_hours_forms(hours: dict[str, Any], expected: dict[int, list[tuple[int, int]]]) -> None:
    settings = convert({"away": {**AWAY, "hours": hours}})
    assert settings.away is not None

    for day in range(7):
        assert [(i.start, i.end) for i in settings.away.schedule[day]] == expected.get(day, [])


def test_holidays_accept_yaml_dates_and_strings() -> None:
    section = yaml.safe_load(
        """
        away:
          timezone: UTC
          hours: {mon-fri: "09:00-18:00"}
          holidays: [2026-12-25, "2027-01-01"]
          reply: Fechado.
        """
    )
    settings = convert(section)

    assert settings.away is not None
    assert settings.away.holidays == [dt.date(2026, 12, 25), dt.date(2027, 1, 1)]


def rule(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"keywords": ["oi"], "reply": "Olá"}, {"reply": "Olá", **fields}]}


def away(**fields: Any) -> dict[str, Any]:
    return {"away": {**AWAY, "hours": {"mon-fri": "09:00-18:00"}, **fields}}


@pytest.mark.parametrize(
    ("section", "path", "fragments"),
    [
        pytest.param(
            rule(pattern="hor[aá"),
            "$.rules[1]",
            [
                "pattern 'hor[aá'",
                "not a valid regular expression",
                "unterminated character set at position 3",
            ],
            id="bad-regex",
        ),
        pytest.param(
            rule(keywords=["preço"], pattern="pre[cç]o"),
            "$.rules[1]",
            ["keywords or pattern, not both"],
            id="both",
        ),
        pytest.param(rule(), "$.rules[1]", ["needs keywords", "or pattern"], id="neither"),
        pytest.param(rule(keywords=[]), "$.rules[1]", ["keywords is empty"], id="no-keywords"),
        pytest.param(
            rule(keywords=["preço", " ?! "]),
            "$.rules[1]",
            ["keywords[1] ' ?! '", "no letters or digits"],
            id="blank",
        ),
        pytest.param(
            {"rules": [{"keywords": ["oi"], "reply": "  "}]},
            "$.rules[0]",
            ["reply is empty"],
            id="blank-reply",
        ),
        pytest.param(
            {"rules": [{"keywords": ["oi"], "reply": ""}]}, "$.rules[0]", ["reply is empty"], id="empty-reply"
        ),
        pytest.param(
            {"rules": [{"keywords": ["oi"], "reply": "x" * 4097}]},
            "$.rules[0].reply",
            ["length <= 4096"],
            id="reply-over-whatsapp-limit",
        ),
        pytest.param(
            {"rules": [{"keywords": ["oi"], "reply": "Olá", "regex": "x"}]},
            "$.rules[0]",
            ["unknown field `regex`"],
            id="unknown-key",
        ),
        pytest.param(
            away(timezone="America/Sao_Pablo"),
            "$.away",
            ["timezone 'America/Sao_Pablo' is not a known IANA time zone", "America/Sao_Paulo"],
            id="unknown-timezone",
        ),
        pytest.param(
            away(timezone="../etc/passwd"), "$.away", ["not a known IANA time zone"], id="timezone-path"
        ),
        pytest.param(
            away(hours={"mon-fri": "09:00-25:00"}),
            "$.away",
            ["hours.mon-fri: '09:00-25:00' has an invalid time '25:00'", "00-23"],
            id="hour-25",
        ),
        pytest.param(
            away(hours={"mon": "09:60-18:00"}),
            "$.away",
            ["hours.mon", "invalid time '09:60'"],
            id="minute-60",
        ),
        pytest.param(
            away(hours={"mon": "09:00-24:30"}),
            "$.away",
            ["invalid time '24:30'", "24:00 may end"],
            id="past-24",
        ),
        pytest.param(
            away(hours={"mon-fri": "9-18"}),
            "$.away",
            ["hours.mon-fri: '9-18' is not an interval", "HH:MM-HH:MM"],
            id="no-minutes",
        ),
        pytest.param(
            away(hours={"mon": "09:00"}), "$.away", ["hours.mon: '09:00' is not an interval"], id="no-end"
        ),
        pytest.param(
            away(hours={"mon": "18:00-09:00"}),
            "$.away",
            ["hours.mon: '18:00-09:00' ends before it starts", "split an overnight interval"],
            id="end-before-start",
        ),
        pytest.param(
            away(hours={"mon": "09:00-09:00"}),
            "$.away",
            ["'09:00-09:00' ends before it starts"],
            id="empty-interval",
        ),
        pytest.param(away(hours={"mon": "24:00-24:00"}), "$.away", ["starts at 24:00"], id="starts-at-24"),
        pytest.param(
            away(hours={"mon": "09:00-12:00,"}),
            "$.away",
            ["hours.mon: '' is not an interval"],
            id="trailing-comma",
        ),
        pytest.param(
            away(hours={"sat": ""}), "$.away", ["hours.sat is empty", "leave the day out"], id="empty-day"
        ),
        pytest.param(away(hours={"sat": []}), "$.away", ["hours.sat is empty"], id="empty-list"),
        pytest.param(
            away(hours={"mom-fri": "09:00-18:00"}),
            "$.away",
            ["unknown day 'mom' in 'mom-fri'", "mon, tue, wed, thu, fri, sat, sun"],
            id="unknown-day",
        ),
        pytest.param(
            away(hours={"monday": "09:00-18:00"}), "$.away", ["unknown day 'monday'"], id="full-day-name"
        ),
        pytest.param(
            away(hours={"mon-wed-fri": "09:00-18:00"}),
            "$.away",
            ["'mon-wed-fri' is not a day or a range"],
            id="3-days",
        ),
        pytest.param(
            away(hours={"mon-fri": "09:00-18:00", "fri": "09:00-12:00"}),
            "$.away",
            ["'fri' is listed in both 'mon-fri' and 'fri'", "list each day once"],
            id="day-twice",
        ),
        pytest.param(away(hours={}), "$.away", ["hours is empty"], id="no-hours"),
        pytest.param(away(reply=" "), "$.away", ["reply is empty"], id="blank-away-reply"),
        pytest.param(
            away(holidays=["2026-12-32"]),
            "$.away.holidays[0]",
            ["Invalid RFC3339 encoded date"],
            id="bad-holiday",
        ),
        pytest.param(
            {"away": {"hours": {"mon": "09:00-18:00"}, "reply": "x"}}, "$.away", ["`timezone`"], id="no-tz"
        ),
        pytest.param({"greeting": ""}, None, ["greeting is empty"], id="empty-greeting"),
        pytest.param({"cooldown_seconds": -1}, "$.cooldown_seconds", [">= 0"], id="negative-cooldown"),
        pytest.param({"max_message_age_seconds": 0}, "$.max_message_age_seconds", [">= 1"], id="zero-age"),
        pytest.param({"bot_timeout_seconds": 0}, "$.bot_timeout_seconds", ["> 0"], id="zero-bot-timeout"),
        pytest.param({"enabeld": True}, None, ["unknown field `enabeld`"], id="typo"),
    ],
)
def test_invalid_settings_name_the_path_and_the_problem(
    section: dict[str, Any], path: str | None, fragments: list[str]
) -> None:
    with pytest.raises(msgspec.ValidationError) as excinfo:
        convert(section)

    message = str(excinfo.value)
    if path is None:  # errors of the section itself carry no msgspec path; the host adds plugins.autoreply
        assert " - at `" not in message
    else:
        assert message.endswith(f" - at `{path}`")
    for fragment in fragments:
        assert fragment in message


def test_host_reports_the_dotted_config_path() -> None:
    with pytest.raises(ConfigError) as excinfo:
        convert_section(rule(pattern="(?i)hor[aá"), AutoreplySettings, "plugins.autoreply")

    assert excinfo.value.path == "plugins.autoreply.rules[1]"
    assert str(excinfo.value).startswith(
        "plugins.autoreply.rules[1]: pattern '(?i)hor[aá' is not a valid regular"
    )


def test_direct_construction_is_validated_too() -> None:
    from plugins.autoreply.config import Rule

    with pytest.raises(ValueError, match="not a valid regular expression"):
        Rule(pattern="(", reply="x")
