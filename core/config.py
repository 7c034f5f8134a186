"""Loading and validating ``config.yaml``.

The file is YAML; ``${VAR}`` and ``${VAR:-default}`` in string values are replaced from the
environment. The host's own sections (``server``, ``storage``, ``redis``, ``logging``) are
validated here; each plugin's section under ``plugins:`` is validated against the Struct the
plugin returns from its ``config_schema`` hook (see :func:`core.plugins.validate_plugin_settings`).
Every error names the dotted path of the offending key and, where it can, the fix.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import msgspec.inspect as mi
import yaml

from core.errors import ConfigError

__all__ = [
    "Config",
    "ConfigFinding",
    "HandoffConfig",
    "LoggingConfig",
    "RedisConfig",
    "ServerConfig",
    "StorageConfig",
    "convert_section",
    "find_config_path",
    "load_config",
    "parse_config",
    "redact",
    "redact_url",
]

T = TypeVar("T")

DEFAULT_CONFIG_NAME = "config.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_SECRET_KEY = re.compile(r"secret|token|password|passwd|private_key|api_key", re.IGNORECASE)
_MASK = "***"


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where the HTTP server listens."""

    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` to accept connections from other machines."""
    port: int = 3000
    """TCP port; ``0`` picks a free one (printed at startup)."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted (webhook POSTs from Meta are at most 3 MB)."""
    graceful_shutdown_seconds: float = 10.0
    """How long in-flight requests may take to finish after SIGTERM."""
    public_url: str | None = None
    """The URL clients reach this host at (for media links); default ``http://host:port``."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Open connections (HTTP and Socket.IO) served at once; requests beyond it are answered 503.
    Default: the process's file-descriptor limit minus 128 kept for the database, Redis and files."""
    header_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """A request's headers must arrive within this time of the connection (on a kept-alive
    connection, of the request's first byte), else the connection is closed: slow-header
    (slowloris) clients hold nothing."""
    body_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """A request's whole body must arrive within this time of its headers, else ``408``."""
    keep_alive_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """An idle keep-alive connection is closed after this time."""


class EventLogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How long the event log keeps events (the Socket.IO resume window and the REST feed's reach)."""

    max_age_hours: Annotated[float, msgspec.Meta(gt=0)] | None = 168.0
    """Events older than this are pruned (default a week); ``null`` keeps them regardless of age."""
    max_events: Annotated[int, msgspec.Meta(gt=0)] | None = 10_000_000
    """At most this many of the newest events are kept; ``null`` for no limit."""
    prune_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """How often the background pruning runs."""


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The database: a SQLite file (embedded default) or PostgreSQL."""

    url: str = "sqlite:///zaphub.db"
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``postgresql://user:pass@host/db``."""
    pool_size: int = 10
    """Connections kept open to PostgreSQL (ignored for SQLite)."""
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """SQLite durability: ``FULL`` survives power loss; ``NORMAL`` survives process crashes only."""
    ready_probe_after_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    """SQLite: ``GET /ready`` trusts a write committed this recently (none failing since) and
    writes its own probe only after this long without one; 0 probes on every call."""
    event_log: EventLogConfig = msgspec.field(default_factory=EventLogConfig)
    """Retention of the event log (``storage.event_log.max_age_hours``, ``max_events``)."""


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Redis relays Socket.IO emits between processes; leave ``url`` empty for one process."""

    url: str | None = None
    """``redis://127.0.0.1:6379/0``; ``None`` (or empty) keeps fan-out in-process."""
    channel: str = "zaphub"
    """Pub/sub channel shared by every process of one deployment."""


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Log output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Minimum level."""
    format: Literal["text", "json"] = "text"
    """``json`` writes one JSON object per line (for log shippers)."""
    access_log: bool = False
    """One line per HTTP request (client, method, path, status). Secret query parameters
    (``?token=``, ``?password=`` …) are masked."""


class HandoffConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``handoff``: when a conversation passes between the bot (``bot``) and an agent (``human``)."""

    agent_reply_takes_over: bool = True
    """An agent's manual reply (any send not ``automated``) switches the conversation to ``human``."""
    return_to_bot_seconds: Annotated[float, msgspec.Meta(ge=0)] = 1800.0
    """A ``human`` conversation returns to ``bot`` after this long without agent activity; 0: never."""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole ``config.yaml``. Plugin sections stay raw here until plugins validate them."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    handoff: HandoffConfig = msgspec.field(default_factory=HandoffConfig)
    plugins: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """Enabled plugins: each key is a plugin name, its value that plugin's raw section."""
    source: str = "<defaults>"
    """Where this config came from (a path), for messages."""
    dev_defaults: list[str] = msgspec.field(default_factory=list)
    """Secret keys (``*secret*``, ``*token*``, …) whose value came from a ``${VAR:-default}`` fallback."""
    env_vars: dict[str, str] = msgspec.field(default_factory=dict)
    """The environment variable each ``${VAR}`` value came from, by dotted path (for messages)."""


class ConfigFinding(msgspec.Struct, frozen=True, kw_only=True):
    """Something valid but notable about the config, found by a plugin's ``check_settings`` hook.

    Example::

        ConfigFinding(path="plugins.mybot.api_key", message="is empty: set MYBOT_API_KEY")
    """

    path: str
    """Dotted path of the key (``plugins.whatsapp.app_secret``)."""
    message: str
    """What is wrong and the fix, read after the path."""
    kind: Literal["unsafe", "development"] = "unsafe"
    """``unsafe``: an error for ``check`` and ``run`` unless the deployment runs a sandbox, then a
    warning. ``development``: this plugin runs a sandbox (a development setup), which relaxes the
    ``unsafe`` findings and is announced by ``check``, the startup log and ``/ready``."""


def find_config_path(explicit: str | None) -> Path | None:
    """The config file to read: ``--config``, else ``$ZAPHUB_CONFIG``, else ``./config.yaml`` if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("ZAPHUB_CONFIG")
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.exists() else None


def load_config(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file (plugin sections are validated later).

    Args:
        path: the file; ``None`` resolves as :func:`find_config_path` does, and with no file at
            all the built-in defaults are used.
        env: variables for ``${VAR}``; defaults to ``os.environ``.

    Raises:
        ConfigError: the file is missing, not YAML, or a host section is invalid.
    """
    resolved = find_config_path(str(path) if path is not None else None)
    if resolved is None:
        return parse_config({}, source="<defaults>", env=env)
    try:
        text = resolved.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(resolved)!r} not found: pass --config PATH or set ZAPHUB_CONFIG"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(resolved)!r}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{resolved}: not valid YAML{where}: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{resolved}: the top level must be a mapping (server:, storage:, plugins: …)")
    return parse_config(data, source=str(resolved), env=env)


def parse_config(
    data: dict[str, Any], *, source: str = "<memory>", env: dict[str, str] | None = None
) -> Config:
    """Validate an already-parsed config mapping (interpolating ``${VAR}`` first)."""
    environ = os.environ if env is None else env
    dev_defaults: list[str] = []
    env_vars: dict[str, str] = {}
    interpolated = _interpolate(data, environ, "", dev_defaults, env_vars)
    plugins = interpolated.get("plugins")
    if plugins is None:
        interpolated["plugins"] = {}
    elif not isinstance(plugins, dict):
        raise ConfigError("must be a mapping of plugin name to its settings", "plugins")
    else:
        for name, section in list(plugins.items()):
            if section is None:  # `whatsapp:` with nothing under it enables the plugin with defaults
                plugins[name] = {}
            elif not isinstance(section, dict):
                raise ConfigError(
                    "must be a mapping of settings (or empty to use the defaults)", f"plugins.{name}"
                )
    for reserved in _DERIVED:
        if reserved in interpolated:
            raise ConfigError(_unknown_key_message(reserved, Config), reserved)
    config = convert_section(interpolated, Config, "", env_vars=env_vars)
    return msgspec.structs.replace(config, source=source, dev_defaults=dev_defaults, env_vars=env_vars)


def convert_section(data: Any, schema: type[T], path: str, *, env_vars: Mapping[str, str] | None = None) -> T:
    """Validate ``data`` against a msgspec type, turning errors into :class:`ConfigError` with a path.

    Strings are converted leniently (``"3000"`` → ``3000``, ``"true"`` → ``True``) because values
    from ``${VAR}`` are always strings; everything else is strict, except that a choice among
    fixed words ignores case (``INFO`` is ``info``).

    Args:
        data: the raw section.
        schema: the Struct (or any msgspec type) it must fit.
        path: the section's dotted path, prefixed to every error (``plugins.whatsapp``).
        env_vars: which environment variable each dotted path came from
            (:attr:`Config.env_vars`), so an error can name the variable to fix.
    """
    # Each retry fixes the case of one value; a config has only so many choices.
    for _ in range(64):
        try:
            return msgspec.convert(data, schema, strict=False)
        except msgspec.ValidationError as exc:
            fixed = _fold_choice_case(data, schema, str(exc))
            if fixed is None:
                raise _config_error(str(exc), schema, path, data, env_vars or {}) from None
            data = fixed
    raise ConfigError("too many invalid values", path)  # pragma: no cover  # 64 enums in one section


_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`(?: - at `\$(?P<at>[^`]*)`)?")
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)
_BAD_CHOICE = re.compile(r"Invalid enum value (?P<value>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)
_DERIVED = ("source", "dev_defaults", "env_vars")


def _steps(at: str) -> list[str | int]:
    """``.rules[0].reply`` → ``["rules", 0, "reply"]`` (a msgspec error location)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]", at) if p]


def _unwrap(info: mi.Type | None) -> list[mi.Type]:
    """The concrete types an annotation may hold (``X | None`` → ``X``; ``Annotated`` stripped)."""
    if info is None:
        return []
    if isinstance(info, mi.Metadata):
        return _unwrap(info.type)
    if isinstance(info, mi.UnionType):
        return [t for member in info.types for t in _unwrap(member) if not isinstance(t, mi.NoneType)]
    return [info]


def _info_at(schema: type[Any], at: str) -> list[mi.Type]:
    """Best effort: the types found at a msgspec error location, inside Structs, lists and dicts."""
    current = _unwrap(mi.type_info(schema))
    for step in _steps(at):
        found: list[mi.Type] = []
        for info in current:
            if isinstance(step, int) and isinstance(info, mi.ListType | mi.SetType | mi.VarTupleType):
                found.extend(_unwrap(info.item_type))
            elif isinstance(step, str) and isinstance(info, mi.StructType):
                found.extend(t for f in info.fields if f.encode_name == step for t in _unwrap(f.type))
            elif isinstance(step, str) and isinstance(info, mi.DictType):
                found.extend(_unwrap(info.value_type))
        current = found
    return current


def _choices(schema: type[Any], at: str) -> list[str]:
    return [str(v) for info in _info_at(schema, at) if isinstance(info, mi.LiteralType) for v in info.values]


def _fold_choice_case(data: Any, schema: type[Any], message: str) -> Any | None:
    """A copy of ``data`` with the refused choice written in the schema's case, if that is all."""
    bad = _BAD_CHOICE.match(message)
    if bad is None:
        return None
    steps = _steps(bad.group("at") or "")
    value = _value_at(data, bad.group("at") or "")
    if not isinstance(value, str):
        return None
    match = [c for c in _choices(schema, bad.group("at") or "") if c.casefold() == value.casefold()]
    if not match or match[0] == value or not steps:
        return None
    copy = _copy(data)
    target = copy
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = match[0]
    return copy


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _config_error(
    message: str, schema: type[Any], base: str, data: Any, env_vars: Mapping[str, str]
) -> ConfigError:
    def join(*parts: str) -> str:
        return ".".join(p.strip(".") for p in parts if p and p.strip("."))

    unknown = _UNKNOWN.match(message)
    if unknown:
        at = unknown.group("at") or ""
        field = unknown.group("field")
        owners = [i.cls for i in _info_at(schema, at) if isinstance(i, mi.StructType)]
        return ConfigError(_unknown_key_message(field, owners[0] if owners else None), join(base, at, field))
    match = _AT.match(message)
    assert match is not None  # the pattern matches any string
    msg, at = match.group("msg"), match.group("at") or ""
    msg = msg.replace("Object missing required field", "missing required key")
    if re.fullmatch(r"Expected `str`, got `(int|float|bool)`", msg):
        # YAML reads 123456789 or yes as a number or a boolean; ids and tokens need quotes.
        msg += ": write the value in quotes"
    bad = _BAD_CHOICE.match(message)
    if bad is not None:
        msg = f"{bad.group('value')} is not one of: {', '.join(_choices(schema, at))}"
    where = join(base, at)
    var = env_vars.get(where)
    if var is not None:
        value = _value_at(data, at)
        msg += f" (from {var}={value!r}: fix that variable)" if isinstance(value, str) else f" (from {var})"
    return ConfigError(msg[0].lower() + msg[1:] if msg else "invalid value", where)


def _value_at(data: Any, at: str) -> Any:
    try:
        for step in _steps(at):
            data = data[step]
    except (KeyError, IndexError, TypeError):
        return None
    return data


def _unknown_key_message(field: str, owner: type[Any] | None) -> str:
    known: list[str] = []
    if isinstance(owner, type) and issubclass(owner, msgspec.Struct):
        known = [f.name for f in msgspec.structs.fields(owner) if f.name not in _DERIVED]
    hint = difflib.get_close_matches(field, known, n=1)
    if hint:
        return f"unknown key (did you mean {hint[0]!r}?)"
    if known:
        return f"unknown key (known keys: {', '.join(known)})"
    return "unknown key"


def _interpolate(
    value: Any, environ: Any, path: str, dev_defaults: list[str], env_vars: dict[str, str]
) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"keys must be strings, got {key!r}", path)
            out[key] = _interpolate(item, environ, f"{path}.{key}" if path else key, dev_defaults, env_vars)
        return out
    if isinstance(value, list):
        return [
            _interpolate(item, environ, f"{path}[{i}]", dev_defaults, env_vars)
            for i, item in enumerate(value)
        ]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        env_vars.setdefault(path, name)
        found = environ.get(name)
        if found is not None:
            return str(found)
        if default is None:
            raise ConfigError(
                f"environment variable {name} is not set (write ${{{name}:-default}} for a fallback)", path
            )
        # Only a fallback *secret* is a development default worth a warning: a default port or
        # database URL is fine in production, and a warning that always fires gets ignored.
        if default and _SECRET_KEY.search(path.rsplit(".", 1)[-1]):
            dev_defaults.append(path)
        return str(default)

    whole = _VAR.fullmatch(value)
    result = _VAR.sub(substitute, value)
    if whole and result == "":
        return ""
    return result


def redact(value: Any, key: str = "") -> Any:
    """A copy of a config mapping (or Struct) safe to print: secrets and URL passwords masked."""
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_KEY.search(key) and value:
            return "***"
        return redact_url(value) if "://" in value else value
    return value


def redact_url(url: str) -> str:
    """``url`` safe to show: its password and the values of secret query parameters masked.

    Every URL zaphub prints or logs goes through here (``zaphub check``, the startup log, access
    logs). It is parsed with SQLAlchemy's URL parser, the one ``storage.url`` goes through: it reads
    a password up to the ``@`` even when it holds a ``/``, ``?`` or a space (a generic URL splitter
    would end the host part there and print the rest). ``?password=…``, ``?token=…`` and other
    parameters named like secrets are masked too. A URL with nothing to hide is returned unchanged.
    """
    import sqlalchemy as sa  # the parser of storage.url; imported here, the config loads without it

    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return _redact_query(url)
    secret_query = any(_SECRET_KEY.search(key) for key in parsed.query)
    if parsed.password is None and not secret_query:
        return url
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    if parsed.query:
        pairs = [
            (key, _MASK if _SECRET_KEY.search(key) else value)
            for key, values in parsed.query.items()
            for value in (values if isinstance(values, tuple) else (values,))
        ]
        shown += "?" + urlencode(pairs, safe="*/:,")
    return shown


def _redact_query(target: str) -> str:
    """A path with a query string (``/socket.io/?token=…``): secret parameter values masked."""
    parts = urlsplit(target)
    if not parts.query:
        return target
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(_SECRET_KEY.search(key) for key, _ in pairs):
        return target
    masked = [(key, _MASK if _SECRET_KEY.search(key) else value) for key, value in pairs]
    return urlunsplit(parts._replace(query=urlencode(masked, safe="*/:,")))
