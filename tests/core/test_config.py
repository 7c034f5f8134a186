"""config.yaml: interpolation, typed validation with paths, plugin sections, resolution, redaction."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
import yaml

from core import hookimpl
from core.app import create_app
from core.config import Config, convert_section, find_config_path, load_config, parse_config, redact
from core.errors import ConfigError
from core.plugins import build_plugin_manager, installed_plugins, validate_plugin_settings
from tests.helpers import REPO, write_config

# -- interpolation -------------------------------------------------------------------------------


def test_var_is_replaced_from_the_environment() -> None:
    config = parse_config({"storage": {"url": "${DB}"}}, env={"DB": "sqlite:///from-env.db"})
    assert config.storage.url == "sqlite:///from-env.db"
    assert config.dev_defaults == []


def test_default_is_used_when_the_variable_is_unset() -> None:
    config = parse_config({"server": {"host": "${HOST:-0.0.0.0}"}}, env={})
    assert config.server.host == "0.0.0.0"
    assert config.dev_defaults == []  # a default address is fine in production


def test_a_secret_from_a_default_is_recorded_as_a_development_default() -> None:
    section = {"app_secret": "${APP_SECRET:-dev-app-secret}", "access_token": "${TOKEN:-}", "name": "${N:-x}"}
    config = parse_config({"plugins": {"demo": section}}, env={})
    assert config.plugins["demo"]["app_secret"] == "dev-app-secret"
    assert config.dev_defaults == ["plugins.demo.app_secret"]  # an empty default is not a dev secret
    assert parse_config({"plugins": {"demo": section}}, env={"APP_SECRET": "real"}).dev_defaults == []


def test_set_variable_wins_over_the_default_even_when_empty() -> None:
    config = parse_config({"server": {"host": "${HOST:-0.0.0.0}"}}, env={"HOST": ""})
    assert config.server.host == ""
    assert config.dev_defaults == []


def test_empty_default_gives_an_empty_value_and_is_not_a_dev_default() -> None:
    config = parse_config({"redis": {"url": "${REDIS_URL:-}"}}, env={})
    assert config.redis.url == ""
    assert not config.redis.url  # empty means "no Redis": fan-out stays in-process
    assert config.dev_defaults == []


def test_several_variables_inside_one_string() -> None:
    config = parse_config(
        {"storage": {"url": "postgresql://${U}:${P:-pw}@${H:-localhost}/zaphub"}}, env={"U": "app", "H": "db"}
    )
    assert config.storage.url == "postgresql://app:pw@db/zaphub"


def test_variables_in_lists_and_plugin_sections_are_replaced() -> None:
    config = parse_config(
        {"plugins": {"demo": {"origins": ["${ORIGIN}", "https://static.example"]}}},
        env={"ORIGIN": "https://crm.example"},
    )
    assert config.plugins["demo"]["origins"] == ["https://crm.example", "https://static.example"]


def test_missing_variable_without_default_names_the_path_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"plugins": {"whatsapp": {"app_secret": "${WHATSAPP_APP_SECRET}"}}}, env={})
    assert err.value.path == "plugins.whatsapp.app_secret"
    message = str(err.value)
    assert "WHATSAPP_APP_SECRET is not set" in message
    assert "${WHATSAPP_APP_SECRET:-default}" in message


def test_strings_from_the_environment_convert_leniently() -> None:
    config = parse_config(
        {"server": {"port": "${PORT}", "graceful_shutdown_seconds": "${GRACE}"}},
        env={"PORT": "3001", "GRACE": "2.5"},
    )
    assert config.server.port == 3001
    assert config.server.graceful_shutdown_seconds == 2.5


def test_lenient_booleans_in_a_plugin_section() -> None:
    class Flags(msgspec.Struct, forbid_unknown_fields=True):
        sandbox: bool = False

    pm, config = _manager({"flags": {"sandbox": "${SANDBOX:-true}"}}, flags=_SchemaPlugin(Flags))
    assert validate_plugin_settings(pm, config)["flags"] == Flags(sandbox=True)


# -- validation errors name the path --------------------------------------------------------------


def test_unknown_key_names_the_path_and_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"prot": 3000}})
    assert err.value.path == "server.prot"
    assert str(err.value) == "server.prot: unknown key (did you mean 'port'?)"


def test_unknown_top_level_section_lists_the_known_ones_when_nothing_is_close() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"zzz": {}})
    assert err.value.path == "zzz"
    assert "unknown key (known keys: server, storage, redis, logging, handoff, plugins)" in str(err.value)


def test_internal_fields_cannot_be_set_from_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"dev_defaults": ["x"]})
    assert err.value.path == "dev_defaults"


def test_wrong_type_names_the_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"port": "not-a-port"}})
    assert err.value.path == "server.port"
    assert "expected `int`" in str(err.value)


def test_a_number_where_text_is_expected_says_to_quote_it() -> None:
    pm, config = _manager(
        {"whatsapp": {"phone_number_id": 123456789012345, "app_secret": "s", "verify_token": "v"}}
    )
    with pytest.raises(ConfigError) as err:
        validate_plugin_settings(pm, config)
    assert (
        str(err.value)
        == "plugins.whatsapp.phone_number_id: expected `str`, got `int`: write the value in quotes"
    )


def test_wrong_choice_names_the_path_and_lists_the_valid_values() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"logging": {"level": "verbose"}})
    assert err.value.path == "logging.level"
    assert str(err.value) == "logging.level: 'verbose' is not one of: debug, error, info, warning"


def test_choices_ignore_case() -> None:
    config = parse_config(
        {"logging": {"level": "INFO", "format": "Json"}, "storage": {"sqlite_synchronous": "normal"}}
    )
    assert (config.logging.level, config.logging.format) == ("info", "json")
    assert config.storage.sqlite_synchronous == "NORMAL"


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"port": "${ZAPHUB_PORT:-3000}"}}, env={"ZAPHUB_PORT": "abc"})
    assert (
        str(err.value) == "server.port: expected `int`, got `str` (from ZAPHUB_PORT='abc': fix that variable)"
    )


class Rule(msgspec.Struct, forbid_unknown_fields=True):
    reply: str
    keywords: list[str] = []


class RulesSection(msgspec.Struct, forbid_unknown_fields=True):
    rules: list[Rule] | None = None


def test_an_unknown_key_inside_a_list_item_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError) as err:
        convert_section(
            {"rules": [{"reply": "a"}, {"keywords": ["x"], "replly": "b"}]}, RulesSection, "plugins.bot"
        )
    assert str(err.value) == "plugins.bot.rules[1].replly: unknown key (did you mean 'reply'?)"


def test_plugins_must_be_a_mapping_and_each_section_a_mapping() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"plugins": ["whatsapp"]})
    assert err.value.path == "plugins"
    with pytest.raises(ConfigError) as err:
        parse_config({"plugins": {"whatsapp": "yes"}})
    assert err.value.path == "plugins.whatsapp"


def test_an_empty_plugin_section_enables_the_plugin_with_defaults() -> None:
    config = parse_config({"plugins": {"autoreply": None}})
    assert config.plugins == {"autoreply": {}}


def test_the_defaults_are_runnable_without_any_file() -> None:
    config = parse_config({})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 3000)
    assert config.storage.url == "sqlite:///zaphub.db"
    assert config.redis.url is None
    assert config.plugins == {}


# -- plugin sections ------------------------------------------------------------------------------


class Greeter(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    greeting: str
    repeat: int = 1


class _SchemaPlugin:
    """A plugin object that only declares a schema (and records the settings it is given)."""

    def __init__(self, schema: type[msgspec.Struct] | None) -> None:
        self.schema = schema

    @hookimpl
    def config_schema(self) -> type[msgspec.Struct] | None:
        return self.schema


def _manager(plugins: dict[str, Any], **extra: object) -> tuple[Any, Config]:
    config = parse_config({"plugins": plugins}, env={})
    return build_plugin_manager(config, extra_plugins=extra), config


def test_each_plugin_receives_its_own_validated_section() -> None:
    pm, config = _manager(
        {"greeter": {"greeting": "Olá", "repeat": "2"}, "bare": {}},
        greeter=_SchemaPlugin(Greeter),
        bare=_SchemaPlugin(None),
    )
    settings = validate_plugin_settings(pm, config)
    assert settings == {"greeter": Greeter(greeting="Olá", repeat=2), "bare": None}


def test_unknown_key_in_a_plugin_section_names_the_full_path() -> None:
    pm, config = _manager({"greeter": {"greeting": "Olá", "repeet": 2}}, greeter=_SchemaPlugin(Greeter))
    with pytest.raises(ConfigError) as err:
        validate_plugin_settings(pm, config)
    assert str(err.value) == "plugins.greeter.repeet: unknown key (did you mean 'repeat'?)"


def test_wrong_type_and_missing_key_in_a_plugin_section_name_the_path() -> None:
    pm, config = _manager({"greeter": {"greeting": "Olá", "repeat": [1]}}, greeter=_SchemaPlugin(Greeter))
    with pytest.raises(ConfigError) as err:
        validate_plugin_settings(pm, config)
    assert err.value.path == "plugins.greeter.repeat"
    pm, config = _manager({"greeter": {}}, greeter=_SchemaPlugin(Greeter))
    with pytest.raises(ConfigError) as err:
        validate_plugin_settings(pm, config)
    assert err.value.path == "plugins.greeter"
    assert "missing required key `greeting`" in str(err.value)


def test_a_plugin_without_schema_rejects_settings() -> None:
    pm, config = _manager({"bare": {"colour": "blue"}}, bare=_SchemaPlugin(None))
    with pytest.raises(ConfigError) as err:
        validate_plugin_settings(pm, config)
    assert err.value.path == "plugins.bare.colour"
    assert "takes no settings" in str(err.value)


def test_create_app_validates_the_whatsapp_section_and_names_the_misspelled_key(tmp_path: Path) -> None:
    config = parse_config(
        {
            "storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"},
            "plugins": {"whatsapp": {"app_secret": "s3cret", "verify_tokn": "x"}},
        }
    )
    with pytest.raises(ConfigError) as err:
        create_app(config)
    assert str(err.value) == "plugins.whatsapp.verify_tokn: unknown key (did you mean 'verify_token'?)"


def test_plugin_own_checks_report_the_path_and_the_variable_to_set(tmp_path: Path) -> None:
    config = parse_config(
        {
            "storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"},
            "plugins": {"whatsapp": {"verify_token": "v", "app_secret": "${WHATSAPP_APP_SECRET:-}"}},
        },
        env={},
    )
    with pytest.raises(ConfigError) as err:
        create_app(config)
    assert err.value.path == "plugins.whatsapp"
    assert "WHATSAPP_APP_SECRET" in str(err.value)
    assert "insecure_skip_signature" in str(err.value)


# -- which file ----------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory without config.yaml and no ZAPHUB_CONFIG."""
    monkeypatch.delenv("ZAPHUB_CONFIG", raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


def test_explicit_path_wins_over_zaphub_config_and_the_working_directory(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(clean_env / "config.yaml", {"server": {"port": 1001}})
    env_file = write_config(tmp_path / "env.yaml", {"server": {"port": 1002}})
    explicit = write_config(tmp_path / "explicit.yaml", {"server": {"port": 1003}})
    monkeypatch.setenv("ZAPHUB_CONFIG", str(env_file))
    assert load_config(explicit).server.port == 1003
    assert load_config().server.port == 1002
    assert load_config().source == str(env_file)
    monkeypatch.delenv("ZAPHUB_CONFIG")
    assert load_config().server.port == 1001
    assert find_config_path(None) == Path("config.yaml")


def test_without_any_file_the_builtin_defaults_are_used(clean_env: Path) -> None:
    assert find_config_path(None) is None
    config = load_config()
    assert config.source == "<defaults>"
    assert config.server.port == 3000


def test_a_missing_explicit_file_says_how_to_point_at_one(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match=r"'nope\.yaml' not found: pass --config PATH or set ZAPHUB_CONFIG"):
        load_config("nope.yaml")


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("server:\n  host: 127.0.0.1\n  port: [3000\nstorage: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "not valid YAML at line 4" in message


def test_the_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- server\n- storage\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert load_config(path).plugins == {}


def test_the_bundled_config_loads_with_nothing_set_and_flags_its_dev_defaults() -> None:
    config = load_config(REPO / "config.yaml", env={})
    assert set(config.plugins) == {"whatsapp", "crm_realtime", "autoreply"}
    assert config.server.port == 3000
    assert config.redis.url == ""
    assert config.dev_defaults == [
        "plugins.whatsapp.verify_token",
        "plugins.whatsapp.app_secret",
        "plugins.crm_realtime.jwt_secret",
    ]


def test_the_bundled_config_takes_its_values_from_the_environment() -> None:
    env = {
        "ZAPHUB_PORT": "8080",
        "ZAPHUB_DATABASE_URL": "postgresql://zaphub:pw@db/zaphub",
        "ZAPHUB_REDIS_URL": "redis://cache:6379/0",
        "WHATSAPP_APP_SECRET": "real-secret",
        "WHATSAPP_VERIFY_TOKEN": "real-verify-token",
        "WHATSAPP_SANDBOX": "false",
        "CRM_JWT_SECRET": "real-jwt-secret",
    }
    config = load_config(REPO / "config.yaml", env=env)
    assert config.server.port == 8080
    assert config.storage.url == "postgresql://zaphub:pw@db/zaphub"
    assert config.redis.url == "redis://cache:6379/0"
    assert config.plugins["whatsapp"]["app_secret"] == "real-secret"
    assert config.plugins["whatsapp"]["sandbox"] == "false"  # converted by the plugin's schema
    assert config.dev_defaults == []  # production secrets set: no development-defaults warning


# -- redaction -----------------------------------------------------------------------------------


def test_redact_masks_secrets_tokens_and_url_passwords() -> None:
    config = parse_config(
        {
            "storage": {"url": "postgresql://zaphub:hunter2@db:5432/zaphub"},
            "redis": {"url": "redis://:r3dis@cache:6379/0"},
            "plugins": {
                "whatsapp": {
                    "app_secret": "s3cret",
                    "access_token": "EAAG123",
                    "verify_token": "",
                    "sandbox": True,
                },
                "crm_realtime": {"jwt_secret": "jwt-s3cret", "namespace": "/crm"},
                "mybot": {"api_key": "k-123", "nested": [{"password": "pw-123"}]},
            },
        }
    )
    shown = redact(config)
    text = repr(shown)
    for secret in ("hunter2", "r3dis", "s3cret", "EAAG123", "jwt-s3cret", "k-123", "pw-123"):
        assert secret not in text
    assert shown["storage"]["url"] == "postgresql://zaphub:***@db:5432/zaphub"
    assert shown["redis"]["url"] == "redis://:***@cache:6379/0"
    whatsapp = shown["plugins"]["whatsapp"]
    assert whatsapp["app_secret"] == "***"
    assert whatsapp["verify_token"] == ""  # empty stays visibly empty: that is the thing to fix
    assert whatsapp["sandbox"] is True
    assert shown["plugins"]["crm_realtime"]["namespace"] == "/crm"


def test_redact_handles_plain_values() -> None:
    assert redact("sqlite:///zaphub.db") == "sqlite:///zaphub.db"
    assert redact("postgresql://u:p@h/db") == "postgresql://u:***@h/db"
    assert redact(None) is None


# -- docs/config.md keeps up -------------------------------------------------------------------

DOC = REPO / "docs" / "config.md"
_HEADING = re.compile(r"^#+ `(?P<path>[a-z_.\[\]]+)`\s*$", re.MULTILINE)


def _schema_keys(info: Any, path: str, out: dict[str, list[str]]) -> None:
    """Every Struct reachable from ``info``, by dotted path (``[]`` for list items), with its keys."""
    if isinstance(info, mi.StructType):
        names = [f.name for f in info.fields if f.name not in ("source", "dev_defaults", "env_vars")]
        if path:
            out[path] = names
        for field in info.fields:
            if field.name in names:
                _schema_keys(field.type, f"{path}.{field.name}" if path else field.name, out)
    elif isinstance(info, mi.ListType):
        _schema_keys(info.item_type, f"{path}[]", out)
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            _schema_keys(member, path, out)


def test_docs_config_md_documents_every_key() -> None:
    sections: dict[str, list[str]] = {}
    _schema_keys(mi.type_info(Config), "", sections)
    for name in ("whatsapp", "crm_realtime", "autoreply"):
        schema = installed_plugins()[name].load().config_schema()
        _schema_keys(mi.type_info(schema), f"plugins.{name}", sections)
    text = DOC.read_text(encoding="utf-8")
    headings = list(_HEADING.finditer(text))
    body = {
        m["path"]: text[m.end() : headings[i + 1].start() if i + 1 < len(headings) else len(text)]
        for i, m in enumerate(headings)
    }
    missing = {
        path: [k for k in keys if f"| `{k}` |" not in body.get(path, "")] for path, keys in sections.items()
    }
    missing = {path: keys for path, keys in missing.items() if keys}
    assert not missing, f"keys without a table row under their `section` heading in docs/config.md: {missing}"


def test_docs_config_md_names_every_variable_of_the_bundled_config() -> None:
    values = repr(yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8")))  # comments dropped
    variables = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", values))
    text = DOC.read_text(encoding="utf-8")
    assert variables
    assert sorted(v for v in variables if f"`{v}`" not in text) == []


def test_handoff_section_has_defaults_and_refuses_a_negative_idle_time() -> None:
    config = parse_config({})
    assert (config.handoff.agent_reply_takes_over, config.handoff.return_to_bot_seconds) == (True, 1800)
    with pytest.raises(ConfigError) as err:
        parse_config({"handoff": {"return_to_bot_seconds": -5}})
    assert "handoff.return_to_bot_seconds" in str(err.value)
