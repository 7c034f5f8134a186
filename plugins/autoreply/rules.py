"""The auto-reply decision: which text, if any, answers an inbound message. Pure: no I/O, no clock.

Order: the first matching rule, else the away reply when outside business hours, else the greeting
for the first message of a new conversation, else nothing. Away beats the greeting because it tells
a new customer when to expect an answer. Cooldown, handoff, message age and which messages qualify
at all are decided by the caller (the plugin's hooks), not here.

Example::

    engine = RuleEngine(settings)  # once, at startup
    decision = engine.decide("Qual o preço?", now=utcnow(), first_message=True)
    if decision is not None:
        send(decision.reply)
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from datetime import datetime

    from plugins.autoreply.config import AutoreplySettings, Away, Rule

__all__ = ["Decision", "RuleEngine", "normalize"]


class Decision(msgspec.Struct, frozen=True):
    """What to answer, and why (for logs and metrics).

    Attributes:
        reply: the text to send.
        reason: ``rule``, ``away`` or ``greeting``.
        rule_index: position of the matching rule in ``rules`` (``reason == "rule"`` only).
    """

    reply: str
    reason: Literal["rule", "away", "greeting"]
    rule_index: int | None = None


def normalize(text: str) -> str:
    """Fold case and strip accents, so ``"PREÇO"`` and ``"preco"`` compare equal.

    Casefold, then NFKD (which also turns compatibility forms such as ``ª`` or full-width letters
    into plain ones) and drop the combining marks the decomposition split off.
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _keyword_regex(keywords: list[str]) -> re.Pattern[str]:
    """One regex for all keywords of a rule, matching whole words/phrases in normalized text.

    Lookarounds instead of word boundaries so keywords that start or end with punctuation (``c++``) still
    work; the words of a phrase may be separated by any run of whitespace.
    """
    phrases = [r"\s+".join(re.escape(word) for word in normalize(keyword).split()) for keyword in keywords]
    return re.compile(rf"(?<!\w)(?:{'|'.join(phrases)})(?!\w)")


class _CompiledRule(msgspec.Struct, frozen=True):
    regex: re.Pattern[str]
    on_normalized: bool  # keyword rules search the normalized text, patterns the text as received
    reply: str


def _compile(rule: Rule) -> _CompiledRule:
    if rule.regex is not None:
        return _CompiledRule(rule.regex, False, rule.reply)
    assert rule.keywords is not None  # Rule validation guarantees exactly one of the two
    return _CompiledRule(_keyword_regex(rule.keywords), True, rule.reply)


def _require_aware(now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (use core.models.utcnow())")


class RuleEngine:
    """Decides the auto-reply for a message from validated :class:`AutoreplySettings`.

    Build it once (it compiles every rule); :meth:`decide` is then cheap and thread-safe.
    """

    def __init__(self, settings: AutoreplySettings) -> None:
        self._settings = settings
        self._rules = [_compile(rule) for rule in settings.rules]
        self._needs_normalized = any(rule.on_normalized for rule in self._rules)
        self._away: Away | None = settings.away
        self._holidays = frozenset(settings.away.holidays) if settings.away else frozenset()

    def decide(self, text: str | None, *, now: datetime, first_message: bool) -> Decision | None:
        """The reply for one inbound message, or ``None`` to stay silent.

        Args:
            text: the message text (body or caption); ``None`` matches no rule.
            now: the current time, timezone-aware.
            first_message: whether this message opened a new conversation.

        Returns:
            The first matching rule's reply; else the away reply when ``now`` is outside business
            hours; else the greeting when ``first_message``; else ``None`` (also when ``enabled`` is
            false).

        Raises:
            ValueError: ``now`` is naive.
        """
        _require_aware(now)
        settings = self._settings
        if not settings.enabled:
            return None
        if text is not None and self._rules:
            normalized = normalize(text) if self._needs_normalized else text
            for index, rule in enumerate(self._rules):
                if rule.regex.search(normalized if rule.on_normalized else text):
                    return Decision(rule.reply, "rule", index)
        if self._away is not None and not self.is_open(now):
            return Decision(self._away.reply, "away")
        if first_message and settings.greeting is not None:
            return Decision(settings.greeting, "greeting")
        return None

    def is_open(self, now: datetime) -> bool:
        """Whether ``now`` falls within business hours (always ``True`` without ``away``).

        Args:
            now: a timezone-aware datetime, in any zone; it is converted to ``away.timezone``.

        Raises:
            ValueError: ``now`` is naive (its zone would be a guess).
        """
        _require_aware(now)
        away = self._away
        if away is None:
            return True
        local = now.astimezone(away.zone)
        if local.date() in self._holidays:
            return False
        minute = local.hour * 60 + local.minute
        return any(minute in interval for interval in away.schedule[local.weekday()])
