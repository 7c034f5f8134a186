"""Finding plugins, validating their settings, and calling their hooks.

A plugin is a module (or any object) with ``@hookimpl`` functions, published under the entry-point
group ``zaphub.plugins``; its entry-point name is its key under ``plugins:`` in ``config.yaml``.
The plugin manager is built per app by :func:`build_plugin_manager`, never at import.

Every call goes through pluggy's own call path, one plugin at a time: :class:`HookRunner` calls
each implementation through a pluggy caller restricted to its plugin
(``pm.subset_hook_caller``), so ``pm.enable_tracing()`` and ``pm.add_hookcall_monitoring()`` see
every call, with the plugin's own ``settings`` among the arguments. One plugin at a time is what
lets the runner inject each plugin's settings, await coroutine results before asking the next
plugin (``firstresult``), pipe ``on_before_send`` and isolate failures: a raising implementation
is logged with the plugin's name and counted, and the other plugins still run. The one exception
is :class:`~core.errors.ApiError` in the hooks that answer a request (``on_before_send``,
``media_for_message``): a hook raises it on purpose to answer the client (invalid content, media
not available), so it propagates there.

Hook wrappers (``@hookimpl(wrapper=True)`` / ``hookwrapper=True``) cannot wrap the other plugins
when each is called on its own, so :func:`check_plugin` refuses them when the plugin is loaded,
naming the plugin and the hook, instead of letting a generator reach the host as a result.
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
    "check_plugin",
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
        check_plugin(pm, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # Name the plugin as config.yaml does (not its module), and the hook it probably meant.
        culprit = pm.get_name(exc.plugin) or str(getattr(exc.plugin, "__name__", exc.plugin))
        raise PluginError(culprit, _unknown_hook_message(pm, exc.plugin)) from exc
    return pm


def check_plugin(pm: pluggy.PluginManager, name: str) -> None:
    """Refuse, at load time, what :class:`HookRunner` cannot call as the plugin author meant.

    Raises:
        PluginError: naming the plugin and the hook, when an implementation is a hook wrapper
            (``wrapper=True`` or ``hookwrapper=True``), when a plugin implements one hook twice
            (``specname``), or when the plugin object cannot be hashed (pluggy's per-plugin
            callers keep plugins in sets).
    """
    plugin = pm.get_plugin(name)
    try:
        hash(plugin)
    except TypeError:
        raise PluginError(
            name,
            f"the plugin object ({type(plugin).__name__}) is unhashable, and the host calls each plugin "
            "through a pluggy caller that keeps plugins in a set: register a module, or an instance of "
            "a class with the default __hash__ (for a dataclass, @dataclass(eq=False))",
        ) from None
    for caller in pm.get_hookcallers(plugin) or []:
        own = [impl for impl in caller.get_hookimpls() if impl.plugin is plugin]
        for impl in own:
            if impl.wrapper or impl.hookwrapper:
                kind = "wrapper=True" if impl.wrapper else "hookwrapper=True"
                raise PluginError(
                    name,
                    f"hook {caller.name}: @hookimpl({kind}) is not supported: the host calls each plugin "
                    "on its own (to pass it its settings, await it and isolate its failures), so a "
                    "wrapper would wrap only itself. Use @hookimpl(tryfirst=True) to run before the "
                    "other plugins, or on_before_send to change or veto an outgoing message",
                )
        if len(own) > 1:
            functions = ", ".join(sorted(impl.function.__name__ for impl in own))
            raise PluginError(
                name,
                f"hook {caller.name} is implemented {len(own)} times ({functions}): implement each hook "
                "once per plugin",
            )


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
    for plugin_name, schema in HookRunner(pm, {}).each("config_schema"):
        schemas[plugin_name] = cast("type[msgspec.Struct] | None", schema)
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


class _Plan:
    """How to call one hook: a pluggy caller per plugin, in pluggy's order."""

    __slots__ = ("arguments", "callers", "impls")

    def __init__(
        self, pm: pluggy.PluginManager, hook: pluggy.HookCaller, impls: list[pluggy.HookImpl]
    ) -> None:
        self.impls = impls
        spec = hook.spec
        # What the host must pass; `settings` is the runner's to add, per plugin.
        self.arguments = [arg for arg in (spec.argnames if spec else ()) if arg != "settings"]
        plugins = [impl.plugin for impl in impls]
        # pluggy's call order: last registered first, tryfirst/trylast respected.
        self.callers = [
            (
                impl.plugin_name,
                pm.subset_hook_caller(hook.name, [p for p in plugins if p is not impl.plugin]),
            )
            for impl in reversed(impls)
        ]


class HookRunner:
    """Calls hooks the zaphub way: through pluggy, one plugin at a time, awaited, isolated.

    The host passes every argument of the hook's spec except ``settings``, which the runner adds
    per plugin; an implementation receives the subset it declares (pluggy's rule).

    Args:
        pm: the plugin manager, with every plugin registered (and checked by :func:`check_plugin`).
        settings: each plugin's validated settings, by plugin name.
        errors: the ``zaphub_hook_errors_total{plugin,hook}`` counter, if any.
    """

    def __init__(self, pm: pluggy.PluginManager, settings: Mapping[str, Any], errors: Counter | None = None):
        self.pm = pm
        self.settings = dict(settings)
        self._errors = errors
        self._throttle = Throttle(log)
        self._plans: dict[str, _Plan] = {}

    def _calls(self, name: str, kwargs: Mapping[str, Any]) -> list[tuple[str, pluggy.HookCaller]]:
        """``(plugin_name, caller)`` for each implementation of ``name``, in call order."""
        hook: pluggy.HookCaller = getattr(self.pm.hook, name)
        impls = hook.get_hookimpls()
        plan = self._plans.get(name)
        if plan is None or plan.impls != impls:  # built once; again if a plugin was (un)registered
            plan = self._plans[name] = _Plan(self.pm, hook, impls)
        missing = [arg for arg in plan.arguments if arg not in kwargs]
        if missing:
            # The host's mistake, not a plugin's: never isolated as a plugin failure.
            raise TypeError(f"hook {name} called without {', '.join(missing)}")
        return plan.callers

    def _call(self, plugin_name: str, caller: pluggy.HookCaller, kwargs: Mapping[str, Any]) -> Any:
        """Call one plugin's implementation through pluggy, with its settings; not awaited."""
        result = caller(**kwargs, settings=self.settings.get(plugin_name))
        if caller.spec is not None and caller.spec.opts.get("firstresult"):
            return result
        return result[0] if result else None

    async def _invoke(self, plugin_name: str, caller: pluggy.HookCaller, kwargs: Mapping[str, Any]) -> Any:
        """:meth:`_call`, then await the result if it is awaitable."""
        value = self._call(plugin_name, caller, kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value

    def _failed(self, name: str, plugin_name: str, exc: BaseException) -> None:
        if self._errors is not None:
            self._errors.labels(plugin=plugin_name, hook=name).inc()
        # A plugin failing on every event is logged once a minute (with a count), not per event.
        key = (plugin_name, name, type(exc).__qualname__)
        self._throttle.error("plugin %r failed in hook %s", plugin_name, name, exc_info=exc, key=key)

    async def call(self, name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation in turn; failures are isolated.

        An ``ApiError`` is isolated here too: these are event hooks, with no client to answer.

        Returns:
            The non-``None`` results, in call order.
        """
        results = []
        for plugin_name, caller in self._calls(name, kwargs):
            try:
                value = await self._invoke(plugin_name, caller, kwargs)
            except Exception as exc:
                self._failed(name, plugin_name, exc)
                continue
            if value is not None:
                results.append(value)
        return results

    async def first(self, name: str, **kwargs: Any) -> Any:
        """Call implementations until one returns non-``None`` (a ``firstresult`` hook).

        Unlike pluggy's own ``firstresult``, a coroutine is awaited before deciding, so an async
        implementation that resolves to ``None`` defers to the next plugin.
        """
        for plugin_name, caller in self._calls(name, kwargs):
            try:
                value = await self._invoke(plugin_name, caller, kwargs)
            except ApiError:
                raise
            except Exception as exc:
                self._failed(name, plugin_name, exc)
                continue
            if value is not None:
                return value
        return None

    async def call_strict(self, name: str, **kwargs: Any) -> list[Any]:
        """Like :meth:`call`, but a failure stops everything with a :class:`PluginError`.

        For startup: a plugin that could not start must not be half-running.
        """
        results = []
        for plugin_name, caller in self._calls(name, kwargs):
            try:
                value = await self._invoke(plugin_name, caller, kwargs)
            except Exception as exc:
                raise PluginError(plugin_name, f"{name} failed: {exc.__class__.__name__}: {exc}") from exc
            if value is not None:
                results.append(value)
        return results

    def each(self, name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a build-time hook synchronously: every plugin's result, ``None`` included.

        Returns:
            ``(plugin_name, result)`` pairs, in call order.

        Raises:
            PluginError: an implementation raised or is async (build-time hooks are sync only).
        """
        results = []
        for plugin_name, caller in self._calls(name, kwargs):
            try:
                value = self._call(plugin_name, caller, kwargs)
            except Exception as exc:
                raise PluginError(plugin_name, f"{name} failed: {exc.__class__.__name__}: {exc}") from exc
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()  # never awaited: close it so Python does not warn about it as well
                raise PluginError(plugin_name, f"{name} must be a plain function, not async")
            results.append((plugin_name, value))
        return results

    def collect(self, name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a build-time ``register_*`` hook synchronously and flatten the lists returned.

        Returns:
            ``(plugin_name, item)`` pairs.

        Raises:
            PluginError: an implementation raised, is async, or returned something that is not a list.
        """
        items: list[tuple[str, Any]] = []
        for plugin_name, value in self.each(name, **kwargs):
            if value is None:
                continue
            if not isinstance(value, list | tuple):
                raise PluginError(plugin_name, f"{name} must return a list, got {type(value).__name__}")
            items.extend((plugin_name, item) for item in value)
        return items

    async def before_send(self, outgoing: OutgoingMessage, **kwargs: Any) -> OutgoingMessage:
        """Run ``on_before_send`` as a pipeline: each plugin sees the previous one's result.

        Raises:
            SendVetoed: a plugin returned :class:`~core.models.Veto`.
            ApiError: a plugin refused the message with a client error (e.g. invalid content).
        """
        from core.errors import SendVetoed

        name = "on_before_send"
        for plugin_name, caller in self._calls(name, {**kwargs, "outgoing": outgoing}):
            try:
                value = await self._invoke(plugin_name, caller, {**kwargs, "outgoing": outgoing})
            except ApiError:
                raise  # a deliberate refusal with a message for the sender
            except Exception as exc:
                self._failed(name, plugin_name, exc)
                continue
            if isinstance(value, Veto):
                raise SendVetoed(f"refused by plugin {plugin_name!r}: {value.reason}")
            if isinstance(value, OutgoingMessage):
                outgoing = value
            elif value is not None:
                self._failed(
                    name,
                    plugin_name,
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
