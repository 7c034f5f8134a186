"""Settings of the ``autoreply`` plugin: the ``plugins.autoreply`` section of ``config.yaml``.

Everything a user can get wrong is checked while the section is validated, so a bad regex or a
malformed opening hour stops startup with the path and the fix instead of failing per message.
Validation runs in ``__post_init__``, which msgspec calls from ``msgspec.convert`` too; msgspec
appends the path of the Struct being built (``- at `$.rules[0]```), and each message starts with
the key inside it (``pattern …``), so together they name the exact key.

What validation parses (the compiled regex, the weekly schedule, the zone) is kept on the frozen
Struct through ``functools.cached_property`` (hence ``dict=True``): it is computed once, here, and
the engine in :mod:`plugins.autoreply.rules` reuses it for every message.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from functools import cached_property
from typing import Annotated

import msgspec

__all__ = ["DAY_NAMES", "AutoreplySettings", "Away", "Interval", "Rule", "WeeklySchedule"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day keys of ``away.hours``, in ``datetime.weekday()`` order (Monday is 0)."""

_DAY_INDEX = {name: i for i, name in enumerate(DAY_NAMES)}
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_MINUTES_PER_DAY = 24 * 60

# WhatsApp rejects text bodies over 4096 characters; catching it here beats a permanent send failure.
ReplyText = Annotated[str, msgspec.Meta(max_length=4096)]
Seconds = Annotated[int, msgspec.Meta(ge=0)]


class Interval(msgspec.Struct, frozen=True):
    """An opening interval within one day, in minutes after local midnight, end excluded."""

    start: int
    end: int

    def __contains__(self, minute: object) -> bool:
        return isinstance(minute, int) and self.start <= minute < self.end


WeeklySchedule = tuple[tuple[Interval, ...], ...]
"""Seven tuples of intervals, Monday first; an empty tuple is a closed day."""


def _require_text(value: str, key: str, alternative: str = "") -> None:
    if not value.strip():
        raise ValueError(f"{key} is empty: write the text to send{alternative}")


class Rule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, dict=True):
    """One rule: when the inbound text matches, send ``reply``. Exactly one of ``keywords``/``pattern``."""

    keywords: list[str] | None = None
    """Words or phrases, any of which triggers the rule. Matched as whole words, ignoring case and
    accents: ``preço`` matches "PRECO?" but not "preços"; ``segunda via`` matches the phrase."""
    pattern: str | None = None
    """A Python regular expression searched in the text as received (add ``(?i)`` to ignore case)."""
    reply: ReplyText
    """The text sent back."""

    def __post_init__(self) -> None:
        if self.keywords is not None and self.pattern is not None:
            raise ValueError("a rule has keywords or pattern, not both: split it into two rules")
        if self.keywords is None and self.pattern is None:
            raise ValueError(
                "a rule needs keywords (a list of words) or pattern (a regular expression), e.g. "
                "{keywords: ['preço'], reply: '…'}"
            )
        if self.keywords is not None:
            if not self.keywords:
                raise ValueError("keywords is empty: list at least one word, e.g. ['preço', 'price']")
            for i, keyword in enumerate(self.keywords):
                # A keyword without a word character can never match as a whole word.
                if not re.search(r"\w", keyword):
                    raise ValueError(f"keywords[{i}] {keyword!r} has no letters or digits: remove it")
        _require_text(self.reply, "reply")
        _ = self.regex  # compile now, so a bad pattern fails at startup

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        """``pattern`` compiled (once), or ``None`` for a keyword rule."""
        if self.pattern is None:
            return None
        try:
            return re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(
                f"pattern {self.pattern!r} is not a valid regular expression ({exc}): fix it "
                "(Python `re` syntax), or use keywords for plain words"
            ) from None


class Away(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, dict=True):
    """Business hours; outside them ``reply`` is sent when no rule matched."""

    timezone: str
    """IANA time zone the hours are in, e.g. ``America/Sao_Paulo`` (daylight saving is followed)."""
    hours: dict[str, str | list[str]]
    """Opening hours per day. Keys: a day (``mon`` … ``sun``) or a range (``mon-fri``; ranges may wrap
    the week end: ``fri-mon`` is fri, sat, sun, mon). Values: ``"09:00-18:00"``, several intervals as
    ``"09:00-12:00, 13:00-18:00"`` or as a list of strings; ``24:00`` may end an interval. Start is
    included, end excluded. Days not listed are closed; each day may be listed once."""
    holidays: list[dt.date] = []
    """Dates (``2026-12-25``) closed all day, in ``timezone``."""
    reply: ReplyText
    """The text sent outside business hours."""

    def __post_init__(self) -> None:
        _require_text(self.reply, "reply")
        _ = self.zone
        _ = self.schedule

    @cached_property
    def zone(self) -> zoneinfo.ZoneInfo:
        """``timezone`` loaded (once)."""
        try:
            return zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            hint = ""
            if not zoneinfo.available_timezones():
                hint = " (this system has no time zone database: pip install tzdata)"
            raise ValueError(
                f"timezone {self.timezone!r} is not a known IANA time zone{hint}: use a name such as "
                "'America/Sao_Paulo' or 'UTC'"
            ) from None

    @cached_property
    def schedule(self) -> WeeklySchedule:
        """``hours`` parsed (once) into the intervals of each weekday, Monday first, sorted."""
        if not self.hours:
            raise ValueError(
                "hours is empty: list the open days, e.g. {mon-fri: '09:00-18:00'}, or remove away"
            )
        week: list[list[Interval] | None] = [None] * 7
        listed_by: dict[int, str] = {}
        for key, value in self.hours.items():
            intervals = _parse_intervals(value, f"hours.{key}")
            for day in _parse_days(key):
                if day in listed_by:
                    raise ValueError(
                        f"hours: {DAY_NAMES[day]!r} is listed in both {listed_by[day]!r} and {key!r}: "
                        "list each day once"
                    )
                listed_by[day] = key
                week[day] = intervals
        return tuple(tuple(sorted(day or (), key=lambda i: i.start)) for day in week)


def _parse_days(key: str) -> list[int]:
    """``"mon"`` → ``[0]``; ``"mon-fri"`` → ``[0..4]``; ``"fri-mon"`` wraps → ``[4, 5, 6, 0]``."""
    names = [part.strip().lower() for part in key.split("-")]
    for name in names:
        if name not in _DAY_INDEX:
            raise ValueError(
                f"hours: unknown day {name!r} in {key!r}: use {', '.join(DAY_NAMES)} "
                "or a range such as 'mon-fri'"
            )
    if len(names) == 1:
        return [_DAY_INDEX[names[0]]]
    if len(names) != 2:
        raise ValueError(f"hours: {key!r} is not a day or a range: write 'mon' or 'mon-fri'")
    first, last = _DAY_INDEX[names[0]], _DAY_INDEX[names[1]]
    return [(first + i) % 7 for i in range((last - first) % 7 + 1)]


def _parse_intervals(value: str | list[str], key: str) -> list[Interval]:
    pieces = [piece for item in ([value] if isinstance(value, str) else value) for piece in item.split(",")]
    if not any(piece.strip() for piece in pieces):
        raise ValueError(
            f"{key} is empty: write intervals such as '09:00-18:00', "
            "or leave the day out (unlisted days are closed)"
        )
    return [_parse_interval(piece.strip(), key) for piece in pieces]


def _parse_interval(text: str, key: str) -> Interval:
    ends = [end.strip() for end in text.split("-")]
    if len(ends) != 2 or not all(_TIME.fullmatch(end) for end in ends):
        raise ValueError(
            f"{key}: {text!r} is not an interval: write 'HH:MM-HH:MM' such as '09:00-18:00', "
            "several as '09:00-12:00, 13:00-18:00'"
        )
    start, end = (_minutes(e, text, key) for e in ends)
    if start >= _MINUTES_PER_DAY:
        raise ValueError(f"{key}: {text!r} starts at 24:00: the day ends there; start at 23:59 at the latest")
    if end <= start:
        raise ValueError(
            f"{key}: {text!r} ends before it starts: hours run within one day, so split an overnight "
            "interval over two days, e.g. fri: '22:00-24:00' and sat: '00:00-02:00'"
        )
    return Interval(start, end)


def _minutes(hhmm: str, text: str, key: str) -> int:
    match = _TIME.fullmatch(hhmm)
    assert match is not None  # checked by the caller
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 24 or minute > 59 or (hour == 24 and minute != 0):
        raise ValueError(
            f"{key}: {text!r} has an invalid time {hhmm!r}: hours are 00-23, minutes 00-59, "
            "and 24:00 may end an interval"
        )
    return hour * 60 + minute


class AutoreplySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The ``plugins.autoreply`` section. Every key is optional."""

    enabled: bool = True
    """``false`` keeps the plugin loaded but sends no auto-replies (bots included)."""
    cooldown_seconds: Seconds = 600
    """At most one auto-reply per conversation within this many seconds."""
    max_message_age_seconds: Annotated[int, msgspec.Meta(ge=1)] = 3600
    """Never auto-reply to a message older than this (by Meta's timestamp): after an outage Meta
    replays up to 7 days of backlog, and answering week-old messages confuses customers."""
    bot_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """How long the ``reply_for_message`` bots together may take for one message; past it they are
    abandoned and the rules answer, so a hung bot never leaves a customer without a reply."""
    rules: list[Rule] = []
    """Checked in order; the first match wins."""
    away: Away | None = None
    """Business hours and the reply sent outside them; ``None`` means always open."""
    greeting: ReplyText | None = None
    """Sent for the first message of a new conversation when no rule matched and it is open."""

    def __post_init__(self) -> None:
        if self.greeting is not None:
            _require_text(self.greeting, "greeting", ", or remove greeting to send none")
