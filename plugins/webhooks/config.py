"""Settings of the ``webhooks`` plugin: the ``plugins.webhooks`` section of ``config.yaml``.

Validation runs in ``__post_init__`` (msgspec calls it from ``convert`` too and appends the path,
``- at `$.subscribers[0]```), so a typo in an event name or a URL without a scheme stops startup
with the key and the fix instead of a subscriber that silently receives nothing.
"""

from __future__ import annotations

import difflib
import hashlib
from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from core.config import ConfigFinding
from core.event_payloads import EVENT_TYPES

__all__ = ["DEV_SECRET", "Subscriber", "WebhooksSettings"]

DEV_SECRET = "dev-webhook-secret"
"""The secret of the bundled example config: published, so unsafe outside a sandbox."""

_MIN_SECRET_BYTES = 16
_DAY = 86_400

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


class Subscriber(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One receiver: every event (or the ``events`` named) is POSTed to ``url``, signed with ``secret``."""

    url: str
    secret: str
    events: list[str] | None = None
    """Event types to deliver (``whatsapp:message``…); ``None``: every type, including later ones."""
    name: str | None = None
    """How the CLI, logs and metrics name it; defaults to the URL's host and path. Its cursor and
    dead letters are kept under this name, so renaming it starts a new subscriber."""
    timeout_seconds: PositiveSeconds = 10.0
    """Longest wait for one delivery's answer (connect, write, read) before it counts as failed."""
    retry_window_seconds: PositiveSeconds = _DAY
    """How long one event is retried before it is dead-lettered and the subscriber moves on."""
    backoff_initial_seconds: PositiveSeconds = 1.0
    """The first retry delay; each retry doubles it (with jitter) up to ``backoff_max_seconds``."""
    backoff_max_seconds: PositiveSeconds = 600.0
    """The longest delay between two retries (``Retry-After`` is honoured up to this too)."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url {self.url!r} is not an http:// or https:// URL with a host")
        if not self.secret:
            raise ValueError(
                "secret is empty: set a random secret shared with the receiver (openssl rand -hex 32), "
                "it signs every delivery"
            )
        if self.events is not None:
            if not self.events:
                raise ValueError("events is empty: list event types, or leave it out for every event")
            for event in self.events:
                if event not in EVENT_TYPES:
                    hint = difflib.get_close_matches(event, EVENT_TYPES, n=1)
                    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                    raise ValueError(
                        f"events: unknown event type {event!r}{did_you_mean}; known: {', '.join(EVENT_TYPES)}"
                    )
        if self.name is not None and not self.name.strip():
            raise ValueError("name is empty: leave it out to name the subscriber after its URL")
        if self.backoff_initial_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_initial_seconds is above backoff_max_seconds")

    @property
    def label(self) -> str:
        """The subscriber's name: ``name`` or the URL's host and path."""
        if self.name is not None:
            return self.name.strip()
        parts = urlsplit(self.url)
        return f"{parts.netloc}{parts.path}".rstrip("/") or parts.netloc

    @property
    def key(self) -> str:
        """A short stable key for storage (cursor, lease, dead letters), derived from :attr:`label`."""
        return hashlib.sha256(self.label.encode()).hexdigest()[:16]


class WebhooksSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``plugins.webhooks``: outgoing webhooks fed from the event log (docs/webhooks.md)."""

    subscribers: list[Subscriber] = msgspec.field(default_factory=list)
    poll_interval_seconds: PositiveSeconds = 1.0
    """How often an idle subscriber looks for events written by another process (events of this
    process wake it at once)."""

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, sub in enumerate(self.subscribers):
            if sub.label in seen:
                raise ValueError(
                    f"subscribers[{i}] and subscribers[{seen[sub.label]}] are both named {sub.label!r}: "
                    "give one a distinct name"
                )
            seen[sub.label] = i

    def findings(self) -> list[ConfigFinding]:
        """Valid but unsafe: a published or short secret, a plain-http URL to another host."""
        found = []
        for i, sub in enumerate(self.subscribers):
            path = f"plugins.webhooks.subscribers[{i}].secret"
            fix = "use 32 random bytes or more (openssl rand -hex 32) shared with the receiver"
            if sub.secret == DEV_SECRET:
                found.append(
                    ConfigFinding(path=path, message=f"is the published example {DEV_SECRET!r}: {fix}")
                )
            elif len(sub.secret.encode()) < _MIN_SECRET_BYTES:
                found.append(
                    ConfigFinding(
                        path=path,
                        message=f"is shorter than {_MIN_SECRET_BYTES} bytes, so it can be guessed; {fix}",
                    )
                )
        return found
