"""What ``zaphub check`` and ``zaphub run`` verify before anything is served: one path for both.

Beyond the schemas, a config can be valid and still unsafe: a published development secret, an
empty access token, a short JWT secret. Plugins report those through the ``check_settings`` hook
(see :class:`~core.config.ConfigFinding`); secret keys whose value came from a
``${VAR:-default}`` fallback are reported here for every plugin. Unsafe findings are errors unless
a plugin runs a sandbox (a development setup), where they are warnings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pluggy

from core.config import Config, ConfigFinding
from core.errors import ConfigError
from core.plugins import HookRunner, build_plugin_manager, validate_plugin_settings
from core.storage import database_url

__all__ = ["Preflight", "findings", "preflight"]


class Preflight(msgspec.Struct, frozen=True, kw_only=True):
    """A config that passed: its plugin manager, settings and what to announce."""

    pm: pluggy.PluginManager
    settings: dict[str, Any]
    development: list[ConfigFinding]
    """Plugins running a sandbox (announced, never silent)."""
    warnings: list[ConfigFinding]
    """Unsafe findings tolerated because a sandbox runs."""


def findings(config: Config, runner: HookRunner) -> list[ConfigFinding]:
    """Every finding of the plugins' ``check_settings``, plus secrets left at a ``${VAR:-default}``.

    One finding per key: a plugin's own message wins over the generic one.
    """
    found: dict[tuple[str, str], ConfigFinding] = {}
    for _, finding in runner.collect("check_settings", config=config):
        if not isinstance(finding, ConfigFinding):
            raise ConfigError(
                f"check_settings must return ConfigFinding objects, got {type(finding).__name__}"
            )
        found.setdefault((finding.kind, finding.path), finding)
    for path in config.dev_defaults:
        var = config.env_vars.get(path, "its variable")
        message = f"is the development default written in {config.source}: set {var} to your own secret"
        found.setdefault(("unsafe", path), ConfigFinding(path=path, message=message))
    return list(found.values())


def preflight(config: Config, *, extra_plugins: Mapping[str, object] | None = None) -> Preflight:
    """Validate everything ``zaphub run`` needs before it serves, for ``check`` and ``run`` alike.

    Raises:
        ConfigError: an invalid section (the first one), or every unsafe setting and storage
            problem at once, one per line, each with its path and fix.
        PluginError: a plugin failed to load.
    """
    pm = build_plugin_manager(config, extra_plugins=extra_plugins)
    settings = validate_plugin_settings(pm, config)
    problems: list[str] = []
    try:
        database_url(config.storage.url)
    except ConfigError as exc:
        problems.append(str(exc))
    found = findings(config, HookRunner(pm, settings))
    development = [f for f in found if f.kind == "development"]
    unsafe = [f for f in found if f.kind == "unsafe"]
    if not development:
        problems.extend(f"{f.path}: {f.message}" for f in unsafe)
    if problems:
        head = f"{config.source} has {len(problems)} problem{'s' if len(problems) > 1 else ''}"
        if unsafe and not development:
            head += " (no plugin runs a sandbox, so this is production: development secrets are refused)"
        raise ConfigError("\n  ".join([head + ":", *problems]))
    return Preflight(
        pm=pm, settings=settings, development=development, warnings=unsafe if development else []
    )
