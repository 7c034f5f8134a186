"""Dead letters: events a subscriber never accepted within its retry window.

Each is one key of the plugin's store, ``dead:<subscriber key>:<event id, zero-padded>``, so
listing a subscriber's dead letters is a prefix scan in event order. The signed body is kept
with it, so a replay sends exactly what was refused even after retention pruned the event.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from core.storage import PluginStore, StateEntry

__all__ = ["DeadLetter", "dead_letter_key", "list_dead_letters", "save_dead_letter"]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One event given up on."""

    subscriber: str
    """The subscriber's name (``name`` or the URL's host and path)."""
    url: str
    event_id: int
    type: str
    attempts: int
    last_error: str
    first_attempt_at: float
    """Unix time of the first attempt."""
    dead_at: float
    """Unix time it was given up on."""
    body: str
    """The body as sent (JSON text)."""


def dead_letter_key(subscriber_key: str, event_id: int) -> str:
    """The store key of one dead letter; zero-padded so key order is event order."""
    return f"dead:{subscriber_key}:{event_id:020d}"


async def save_dead_letter(store: PluginStore, subscriber_key: str, letter: DeadLetter) -> None:
    """Keep ``letter`` until it is replayed or deleted."""
    await store.set(dead_letter_key(subscriber_key, letter.event_id), msgspec.to_builtins(letter))


def _letter(entry: StateEntry) -> DeadLetter:
    value: Any = entry.value
    return msgspec.convert(value, DeadLetter)


async def list_dead_letters(
    store: PluginStore, subscriber_key: str | None = None
) -> list[tuple[str, DeadLetter]]:
    """Every dead letter (of one subscriber when given) and its store key, oldest first."""
    prefix = f"dead:{subscriber_key}:" if subscriber_key is not None else "dead:"
    found: list[tuple[str, DeadLetter]] = []
    after: str | None = None
    while True:
        page = await store.list(prefix, after=after, limit=1000)
        found.extend((e.key, _letter(e)) for e in page)
        if len(page) < 1000:
            return found
        after = page[-1].key


def now() -> float:
    """Unix time (a function so the worker and the CLI agree on the clock)."""
    return time.time()
