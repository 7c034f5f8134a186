"""Finding plugins, validating their settings, and calling their hooks.

A plugin is a module (or any object) with ``@hookimpl`` functions, published under the entry-point
group ``zaphub.plugins``; its entry-point name is its key under ``plugins:`` in ``config.yaml``.
The plugin manager is built per app by :func:`build_plugin_manager`, never at import.

pluggy itself is synchronous and stops at the first exception, so every call goes through
:class:`HookRunner`, which awaits coroutine results, injects each plugin's own ``settings``, and
isolates failures: a raising implementation is logged with the plugin's name and counted, and the
other plugins still run. The one exception is :class:`~core.errors.ApiError` in the hooks that
answer a request (``on_before_send``, ``media_for_message``): a hook raises it on purpose to answer
the client (invalid content, media not available), so it propagates there.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, cast

import msgspec
import pluggy

from core import hookspecs
from core.config import Config, convert_section
from core.errors import ApiError, ConfigError, PluginError
from core.logs import Throttle
from core.models import OutgoingMessage, Veto

if TYPE_CHECKING:
    from prometheus_client import Counter

__all__ = [
    "ENTRY_POINT_GROUP",
    "HookRunner",
    "build_plugin_manager",
    "installed_plugins",
    "validate_plugin_settings",
]

ENTRY_POINT_GROUP = "zaphub.plugins"
log = logging.getLogger("zaphub.plugins")


def installed_plugins() -> dict[str, EntryPoint]:
    """Every installed plugin's entry point, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def build_plugin_manager(
    config: Config, *, extra_plugins: Mapping[str, object] | None = None
) -> pluggy.PluginManager:
    """A fresh plugin manager with exactly the plugins enabled in ``config``.

    Args:
        config: a plugin is enabled by having a section under ``plugins:``.
        extra_plugins: plugin objects by name that need no installation (tests, embedding);
            they are still enabled only when ``config.plugins`` names them.

    Raises:
        ConfigError: a name under ``plugins:`` matches no installed plugin.
        PluginError: a plugin failed to import or implements a hook that does not exist.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    extra = dict(extra_plugins or {})
    installed = installed_plugins()
    for name in config.plugins:
        if name in extra:
            plugin = extra[name]
        elif name in installed:
            try:
                plugin = installed[name].load()
            except Exception as exc:
                raise PluginError(name, f"cannot be imported: {exc.__class__.__name__}: {exc}") from exc
        else:
            known = sorted(set(installed) | set(extra))
            raise ConfigError(
                f"no installed plugin is named {name!r}; installed plugins: {', '.join(known) or 'none'}. "
                f"Install the package that provides it (pip install …) or remove the section",
                f"plugins.{name}",
            )
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(name, str(exc)) from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # Name the plugin as config.yaml does (not its module), and the hook it probably meant.
        culprit = pm.get_name(exc.plugin) or str(getattr(exc.plugin, "__name__", exc.plugin))
        raise PluginError(culprit, _unknown_hook_message(pm, exc.plugin)) from exc
    return pm


def _unknown_hook_message(pm: pluggy.PluginManager, plugin: object) -> str:
    unknown = sorted(c.name for c in pm.get_hookcallers(plugin) or [] if not c.has_spec())
    known = sorted(n for n in vars(pm.hook) if not n.startswith("_") and getattr(pm.hook, n).has_spec())
    parts = []
    for hook in unknown:
        hint = difflib.get_close_matches(hook, known, n=1)
        parts.append(f"{hook!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return f"implements unknown hook {', '.join(parts)}; the hooks are listed in core/hookspecs.py"


def validate_plugin_settings(pm: pluggy.PluginManager, config: Config) -> dict[str, Any]:
    """Validate each enabled plugin's section against the schema it declares.

    Returns:
        Settings instances by plugin name (``None`` for plugins without a schema).

    Raises:
        ConfigError: naming the path, e.g. ``plugins.whatsapp.verify_tokn: unknown key``.
    """
    schemas: dict[str, type[msgspec.Struct] | None] = {}
    for impl in pm.hook.config_schema.get_hookimpls():
        try:
            schemas[impl.plugin_name] = cast("type[msgspec.Struct] | None", impl.function())
        except Exception as exc:
            raise PluginError(impl.plugin_name, f"config_schema failed: {exc}") from exc
    settings: dict[str, Any] = {}
    for name, section in config.plugins.items():
        schema = schemas.get(name)
        if schema is None:
            if section:
                key = next(iter(section))
                raise ConfigError("unknown key (this plugin takes no settings)", f"plugins.{name}.{key}")
            settings[name] = None
        else:
            settings[name] = convert_section(section, schema, f"plugins.{name}", env_vars=config.env_vars)
    return settings


class HookRunner:
    """Calls hooks the zaphub way: async-aware, settings-injecting, failure-isolating."""

    def __init__(self, pm: pluggy.PluginManager, settings: Mapping[str, Any], errors: Counter | None = None):
        self.pm = pm
        self.settings = dict(settings)
        self._errors = errors
        self._throttle = Throttle(log)

    def _impls(self, name: str) -> list[pluggy.HookImpl]:
        # pluggy's own call order: last registered first, tryfirst/trylast respected.
        return list(reversed(getattr(self.pm.hook, name).get_hookimpls()))

    def _kwargs(self, impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
        if "settings" in impl.argnames or "settings" in impl.kwargnames:
            args["settings"] = self.settings.get(impl.plugin_name)
        for k in impl.kwargnames:
            if k in kwargs:
                args[k] = kwargs[k]
        return args

    async def _invoke(self, impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
        """Call one implementation with the arguments it takes; await it if it is async."""
        value = impl.function(**self._kwargs(impl, kwargs))
        if inspect.isawaitable(value):
            value = await value
        return value

    def _failed(self, name: str, impl: pluggy.HookImpl, exc: BaseException) -> None:
        if self._errors is not None:
            self._errors.labels(plugin=impl.plugin_name, hook=name).inc()
        # A plugin failing on every event is logged once a minute (with a count), not per event.
        key = (impl.plugin_name, name, type(exc).__qualname__)
        self._throttle.error("plugin %r failed in hook %s", impl.plugin_name, name, exc_info=exc, key=key)

    async def call(self, name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation in turn; failures are isolated.

        An ``ApiError`` is isolated here too: these are event hooks, with no client to answer.

        Returns:
            The non-``None`` results, in call order.
        """
        results = []
        for impl in self._impls(name):
            try:
                value = await self._invoke(impl, kwargs)
            except Exception as exc:
                self._failed(name, impl, exc)
                continue
            if value is not None:
                results.append(value)
        return results

    async def first(self, name: str, **kwargs: Any) -> Any:
        """Call implementations until one returns non-``None`` (a ``firstresult`` hook).

        Unlike pluggy's own ``firstresult``, a coroutine is awaited before deciding, so an async
        implementation that resolves to ``None`` defers to the next plugin.
        """
        for impl in self._impls(name):
            try:
                value = await self._invoke(impl, kwargs)
            except ApiError:
                raise
            except Exception as exc:
                self._failed(name, impl, exc)
                continue
            if value is not None:
                return value
        return None

    async def call_strict(self, name: str, **kwargs: Any) -> list[Any]:
        """Like :meth:`call`, but a failure stops everything with a :class:`PluginError`.

        For startup: a plugin that could not start must not be half-running.
        """
        results = []
        for impl in self._impls(name):
            try:
                value = await self._invoke(impl, kwargs)
            except Exception as exc:
                raise PluginError(
                    impl.plugin_name, f"{name} failed: {exc.__class__.__name__}: {exc}"
                ) from exc
            if value is not None:
                results.append(value)
        return results

    def collect(self, name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a build-time ``register_*`` hook synchronously and flatten the lists returned.

        Returns:
            ``(plugin_name, item)`` pairs.

        Raises:
            PluginError: an implementation raised or returned something that is not a list.
        """
        items: list[tuple[str, Any]] = []
        for impl in self._impls(name):
            try:
                value = impl.function(**self._kwargs(impl, kwargs))
            except Exception as exc:
                raise PluginError(
                    impl.plugin_name, f"{name} failed: {exc.__class__.__name__}: {exc}"
                ) from exc
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()  # never awaited: close it so Python does not warn about it as well
                raise PluginError(impl.plugin_name, f"{name} must be a plain function, not async")
            if value is None:
                continue
            if not isinstance(value, list | tuple):
                raise PluginError(impl.plugin_name, f"{name} must return a list, got {type(value).__name__}")
            items.extend((impl.plugin_name, item) for item in value)
        return items

    async def before_send(self, outgoing: OutgoingMessage, **kwargs: Any) -> OutgoingMessage:
        """Run ``on_before_send`` as a pipeline: each plugin sees the previous one's result.

        Raises:
            SendVetoed: a plugin returned :class:`~core.models.Veto`.
            ApiError: a plugin refused the message with a client error (e.g. invalid content).
        """
        from core.errors import SendVetoed

        for impl in self._impls("on_before_send"):
            try:
                value = await self._invoke(impl, {**kwargs, "outgoing": outgoing})
            except ApiError:
                raise  # a deliberate refusal with a message for the sender
            except Exception as exc:
                self._failed("on_before_send", impl, exc)
                continue
            if isinstance(value, Veto):
                raise SendVetoed(f"refused by plugin {impl.plugin_name!r}: {value.reason}")
            if isinstance(value, OutgoingMessage):
                outgoing = value
            elif value is not None:
                self._failed(
                    "on_before_send",
                    impl,
                    TypeError(f"must return OutgoingMessage, Veto or None, got {type(value).__name__}"),
                )
        return outgoing

    def hook_names(self) -> list[str]:
        """Every hook name in the spec, sorted."""
        return sorted(n for n in dir(self.pm.hook) if not n.startswith("_"))

    def plugin_hooks(self) -> dict[str, list[str]]:
        """Hooks each registered plugin implements."""
        out: dict[str, list[str]] = {}
        for name, plugin in self.pm.list_name_plugin():
            callers = self.pm.get_hookcallers(plugin) or []
            out[name] = sorted(c.name for c in callers)
        return out
