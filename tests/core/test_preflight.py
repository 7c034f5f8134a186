"""One validation path for ``zaphub check`` and ``zaphub run``: the ``check_settings`` hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from core import hookimpl
from core.app import create_app
from core.config import ConfigFinding, parse_config
from core.errors import ConfigError
from core.preflight import preflight


class BotSettings(msgspec.Struct, forbid_unknown_fields=True):
    api_key: str = ""
    playground: bool = False


class Bot:
    """A third-party plugin: an empty key is unsafe; its playground mode is a sandbox."""

    @hookimpl
    def config_schema(self) -> type[msgspec.Struct]:
        return BotSettings

    @hookimpl
    def check_settings(self, settings: BotSettings) -> list[ConfigFinding]:
        found = []
        if settings.playground:
            found.append(ConfigFinding(path="plugins.bot.playground", message="on", kind="development"))
        if not settings.api_key:
            found.append(ConfigFinding(path="plugins.bot.api_key", message="is empty: set BOT_API_KEY"))
        return found


def config(tmp_path: Path, bot: dict[str, Any], **top: Any) -> Any:
    data = {"storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"}, **top, "plugins": {"bot": bot}}
    return parse_config(data, source="config.yaml", env={})


def test_without_a_sandbox_every_unsafe_finding_and_the_storage_url_are_refused_at_once(
    tmp_path: Path,
) -> None:
    raw = {
        "storage": {"url": "mysql://u:p@h/db"},
        "plugins": {"bot": {"api_key": "${BOT_API_KEY:-changeme}"}},
    }
    with pytest.raises(ConfigError) as err:
        preflight(parse_config(raw, source="config.yaml", env={}), extra_plugins={"bot": Bot()})
    message = str(err.value)
    assert message.startswith("config.yaml has 2 problems (no plugin runs a sandbox")
    assert "\n  storage.url: unsupported database 'mysql': use sqlite:/// or postgresql://" in message
    # A secret left at its ${VAR:-default} names the variable to set, for any plugin.
    assert (
        "\n  plugins.bot.api_key: is the development default written in config.yaml: set BOT_API_KEY"
        in message
    )
    with pytest.raises(ConfigError) as one:
        preflight(config(tmp_path, {}), extra_plugins={"bot": Bot()})
    assert str(one.value).endswith(
        "has 1 problem (no plugin runs a sandbox, so this is production: "
        "development secrets are refused):\n  plugins.bot.api_key: is empty: set BOT_API_KEY"
    )


def test_a_sandbox_turns_unsafe_findings_into_warnings(tmp_path: Path) -> None:
    checked = preflight(config(tmp_path, {"playground": True}), extra_plugins={"bot": Bot()})
    assert [f.path for f in checked.development] == ["plugins.bot.playground"]
    assert [f.path for f in checked.warnings] == ["plugins.bot.api_key"]
    assert preflight(config(tmp_path, {"api_key": "k"}), extra_plugins={"bot": Bot()}).warnings == []


def test_a_wrong_return_type_names_the_hook(tmp_path: Path) -> None:
    class Broken:
        @hookimpl
        def check_settings(self) -> list[str]:
            return ["not a finding"]

    cfg = parse_config({"plugins": {"broken": {}}}, env={})
    with pytest.raises(ConfigError, match="check_settings must return ConfigFinding objects, got str"):
        preflight(cfg, extra_plugins={"broken": Broken()})


async def test_ready_lists_the_sandbox_and_the_tolerated_findings(tmp_path: Path) -> None:
    app = create_app(config(tmp_path, {"playground": True}), extra_plugins={"bot": Bot()})
    async with AsyncTestClient(app) as client:
        ready = (await client.get("/ready")).json()
    assert ready["status"] == "ready"
    assert ready["warnings"] == [
        "plugins.bot.playground: on",
        "plugins.bot.api_key: is empty: set BOT_API_KEY",
    ]
