"""The models hooks receive are a contract: docs/plugins.md promises their fields, this test holds them.

``PROMISED`` is the contract as released: removing, renaming or retyping one of these fields fails
here (change it only on purpose, with docs/plugins.md and a changelog entry). Every field a model
has must also be documented in docs/plugins.md's "Models (contract)" section, so a new field
cannot slip in unpromised. A second part checks that each plugin's ``settings`` reach its hooks as
the Struct it declared.
"""

from __future__ import annotations

import re
import typing
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import msgspec
import pytest

from core import hookimpl
from core.auth import Agent
from core.host import Host, MediaStream
from core.models import (
    Contact,
    Conversation,
    Message,
    MessageChange,
    OutgoingMessage,
    Reply,
    StatusChange,
    Veto,
)
from core.testing import RunningHost
from plugins.whatsapp import webhook_builders as wb
from plugins.whatsapp.config import WhatsAppSettings
from tests.helpers import REPO

DOC = REPO / "docs" / "plugins.md"

PROMISED: dict[type[msgspec.Struct], dict[str, Any]] = {
    Message: {
        "id": int,
        "conversation_id": int,
        "phone_number_id": str,
        "direction": Literal["inbound", "outbound"],
        "type": str,
        "body": str | None,
        "status": str,
        "wamid": str | None,
        "sender_type": Literal["contact", "user"],
        "delivered_at": datetime | None,
        "received_at": datetime | None,
        "automated": bool,
        "media_id": str | None,
        "media_mime_type": str | None,
        "context_wamid": str | None,
        "content": dict[str, Any] | None,
        "raw": dict[str, Any] | None,
        "error_code": int | None,
        "error_title": str | None,
        "edited_at": datetime | None,
        "deleted_at": datetime | None,
    },
    Conversation: {
        "id": int,
        "phone_number_id": str,
        "contact_id": int,
        "created_at": datetime,
        "last_message_at": datetime | None,
        "last_inbound_at": datetime | None,
        "last_agent_at": datetime | None,
        "last_message_id": int | None,
    },
    Contact: {"id": int, "wa_id": str, "name": str | None, "phone_number": str},
    StatusChange: {
        "message_id": int,
        "status": str,
        "timestamp": str,
        "error_code": int | None,
        "error_title": str | None,
    },
    MessageChange: {
        "message_id": int,
        "kind": Literal["edited", "deleted", "reaction"],
        "at": datetime,
        "body": str | None,
        "emoji": str | None,
        "reactor": str | None,
    },
    OutgoingMessage: {
        "conversation_id": int,
        "type": str,
        "content": dict[str, Any],
        "body": str | None,
        "automated": bool,
        "source": str,
        "context_wamid": str | None,
    },
    Reply: {"text": str | None, "type": str | None, "content": dict[str, Any] | None, "source": str},
    Veto: {"reason": str},
    MediaStream: {
        "mime_type": str,
        "chunks": AsyncIterator[bytes],
        "size": int | None,
        "filename": str | None,
    },
    Agent: {"sub": str, "scope": frozenset[str] | None, "expires_at": float},
}


def documented_fields(text: str) -> dict[str, set[str]]:
    """Field names per model in the "Models (contract)" section of docs/plugins.md."""
    section = text.split("## Models (contract)", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    current: list[str] = []
    for line in section.splitlines():
        heading = re.match(r"^#### (.+)$", line)
        if heading:
            current = re.findall(r"`(\w+)`", heading.group(1))
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not cells or not cells[0].startswith("`"):
            continue
        if len(current) == 1 and len(cells) == 3:
            out.setdefault(current[0], set()).add(cells[0].strip("`"))
        elif len(cells) == 4:
            out.setdefault(cells[0].strip("`"), set()).add(cells[1].strip("`"))
    return out


@pytest.mark.parametrize("model", list(PROMISED), ids=lambda m: m.__name__)
def test_promised_fields_keep_their_names_and_types(model: type[msgspec.Struct]) -> None:
    hints = typing.get_type_hints(model, include_extras=False)
    for name, promised in PROMISED[model].items():
        assert name in hints, (
            f"{model.__name__}.{name} is promised in docs/plugins.md and was removed or renamed"
        )
        assert hints[name] == promised, f"{model.__name__}.{name} is promised as {promised}, is {hints[name]}"


@pytest.mark.parametrize("model", list(PROMISED), ids=lambda m: m.__name__)
def test_every_field_is_documented_and_every_documented_field_exists(model: type[msgspec.Struct]) -> None:
    documented = documented_fields(DOC.read_text(encoding="utf-8")).get(model.__name__, set())
    fields = {f.name for f in msgspec.structs.fields(model)}
    assert fields - documented == set(), f"{model.__name__}: add these fields to docs/plugins.md's contract"
    assert documented - fields == set(), f"{model.__name__}: docs/plugins.md documents fields it has not"


def test_new_fields_have_defaults_so_adding_one_breaks_no_plugin() -> None:
    for model, promised in PROMISED.items():
        for field in msgspec.structs.fields(model):
            if field.name not in promised:
                assert (
                    field.default is not msgspec.NODEFAULT or field.default_factory is not msgspec.NODEFAULT
                ), f"{model.__name__}.{field.name} was added without a default"


def test_the_section_parser_sees_every_model() -> None:
    assert set(documented_fields(DOC.read_text(encoding="utf-8"))) == {m.__name__ for m in PROMISED}


# --- settings reach hooks typed ----------------------------------------------------------------------


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    greeting: str = "oi"
    retries: int = 3


class Typed:
    """A plugin recording the ``settings`` each of its hooks receives."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    @hookimpl
    def config_schema(self) -> type[msgspec.Struct]:
        return Settings

    @hookimpl
    def register_routes(self, settings: Settings) -> list[Any]:
        self.seen["register_routes"] = settings
        return []

    @hookimpl
    def on_startup(self, settings: Settings, host: Host) -> None:
        self.seen["on_startup"] = settings
        self.seen["whatsapp"] = host.settings("whatsapp", WhatsAppSettings)

    @hookimpl
    async def on_message_received(self, settings: Settings, message: Message) -> None:
        self.seen["on_message_received"] = settings


TYPED = Typed()


@pytest.fixture
def zaphub_config() -> dict[str, Any]:
    return {"plugins": {"whatsapp": {}, "typed": {"retries": "5"}}}


@pytest.fixture
def zaphub_plugins() -> dict[str, object]:
    return {"typed": TYPED}


async def test_each_hook_gets_the_struct_its_plugin_declared(
    zaphub: RunningHost, zaphub_whatsapp: Any
) -> None:
    await zaphub_whatsapp.receive(wb.text("oi"))
    await zaphub.settle()
    assert set(TYPED.seen) == {"register_routes", "on_startup", "whatsapp", "on_message_received"}
    for hook in ("register_routes", "on_startup", "on_message_received"):
        assert TYPED.seen[hook] == Settings(greeting="oi", retries=5), hook
        assert type(TYPED.seen[hook]) is Settings
    assert isinstance(TYPED.seen["whatsapp"], WhatsAppSettings)
    assert zaphub.host.settings("typed", Settings).retries == 5
    with pytest.raises(TypeError, match=r"plugins\.typed settings are Settings, not WhatsAppSettings"):
        zaphub.host.settings("typed", WhatsAppSettings)
    with pytest.raises(TypeError, match="plugin 'nope' is not enabled"):
        zaphub.host.settings("nope", Settings)
