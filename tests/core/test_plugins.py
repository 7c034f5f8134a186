"""The plugin manager and HookRunner: per-app managers, discovery errors, async calls, isolation."""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pluggy
import pytest

import core.app
import core.plugins
from core import hookimpl
from core.app import create_app
from core.config import parse_config
from core.errors import ApiError, ConfigError, PluginError, SendVetoed, ValidationFailed
from core.host import MediaStream
from core.metrics import Metrics
from core.models import Conversation, Event, InboundMessage, Message, OutgoingMessage, Reply, Veto
from core.plugins import HookRunner, build_plugin_manager, installed_plugins, validate_plugin_settings
from tests.helpers import serve, wait_for

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
CONVERSATION = Conversation(id=7, phone_number_id="100", contact_id=3, created_at=NOW, last_inbound_at=NOW)
MESSAGE = Message(
    id=11,
    conversation_id=7,
    phone_number_id="100",
    direction="inbound",
    type="text",
    body="Oi",
    status="received",
)

# Every argument of on_message_received / reply_for_message but `settings` (the runner adds it).
RECEIVED: dict[str, Any] = {
    "host": None,
    "message": MESSAGE,
    "conversation": CONVERSATION,
    "contact": None,
    "event": None,
}


class Named(msgspec.Struct, forbid_unknown_fields=True):
    name: str = "default"


def runner(plugins: dict[str, object], sections: dict[str, Any] | None = None) -> tuple[HookRunner, Metrics]:
    """A HookRunner over exactly these plugin objects, settings validated as the host does."""
    config = parse_config({"plugins": sections or {name: {} for name in plugins}})
    pm = build_plugin_manager(config, extra_plugins=plugins)
    metrics = Metrics()
    return HookRunner(pm, validate_plugin_settings(pm, config), metrics.hook_errors), metrics


def hook_errors(metrics: Metrics, plugin: str, hook: str) -> float | None:
    return metrics.registry.get_sample_value("zaphub_hook_errors_total", {"plugin": plugin, "hook": hook})


# -- the manager ---------------------------------------------------------------------------------


class Recorder:
    """Records the hook calls it receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def on_message_received(self, message: Message, settings: Any) -> None:
        self.calls.append(("on_message_received", {"message": message, "settings": settings}))


def test_importing_core_builds_no_global_plugin_manager() -> None:
    for module in (core.plugins, core.app):
        assert not [v for v in vars(module).values() if isinstance(v, pluggy.PluginManager)]


def test_each_app_gets_its_own_manager_with_only_its_plugins(tmp_path: Path) -> None:
    first, second = Recorder(), Recorder()
    app_a = create_app(
        parse_config({"storage": {"url": f"sqlite:///{tmp_path / 'a.db'}"}, "plugins": {"rec": {}}}),
        extra_plugins={"rec": first},
    )
    app_b = create_app(
        parse_config({"storage": {"url": f"sqlite:///{tmp_path / 'b.db'}"}, "plugins": {}}),
        extra_plugins={"rec": second},  # offered but not enabled: config decides
    )
    pm_a, pm_b = app_a.state.host.pm, app_b.state.host.pm
    assert pm_a is not pm_b
    assert [name for name, _ in pm_a.list_name_plugin()] == ["rec"]
    assert pm_a.get_plugin("rec") is first
    assert pm_b.list_name_plugin() == []


def test_installed_plugins_are_found_through_the_entry_point_group() -> None:
    assert {"whatsapp", "crm_realtime", "autoreply"} <= set(installed_plugins())
    assert installed_plugins()["whatsapp"].group == "zaphub.plugins"


def test_an_uninstalled_plugin_is_a_config_error_listing_the_installed_ones() -> None:
    config = parse_config({"plugins": {"whatsap": {}}})
    with pytest.raises(ConfigError) as err:
        build_plugin_manager(config)
    assert err.value.path == "plugins.whatsap"
    message = str(err.value)
    assert "no installed plugin is named 'whatsap'" in message
    for name in ("autoreply", "crm_realtime", "whatsapp"):
        assert name in message
    assert "pip install" in message


def test_a_misspelled_hook_is_caught_at_startup_naming_the_plugin_and_the_likely_hook() -> None:
    class Typo:
        @hookimpl
        def on_mesage_received(self, message: Message) -> None:  # the typo under test
            raise AssertionError("never called")

    with pytest.raises(PluginError) as err:
        build_plugin_manager(parse_config({"plugins": {"typo": {}}}), extra_plugins={"typo": Typo()})
    assert err.value.plugin == "typo"
    assert "unknown hook 'on_mesage_received' (did you mean 'on_message_received'?)" in str(err.value)


def test_a_misspelled_hook_in_a_module_plugin_uses_its_config_name() -> None:
    module = types.ModuleType("zaphub_typo_module")

    @hookimpl
    def register_route() -> list[Any]:
        return []

    module.register_route = register_route  # type: ignore[attr-defined]
    with pytest.raises(PluginError) as err:
        build_plugin_manager(parse_config({"plugins": {"typo": {}}}), extra_plugins={"typo": module})
    assert err.value.plugin == "typo"
    assert "did you mean 'register_routes'?" in str(err.value)


def test_an_argument_the_hook_does_not_offer_is_refused_naming_the_plugin() -> None:
    class WrongArg:
        @hookimpl
        def on_message_received(self, msg: Message) -> None:
            raise AssertionError("never called")

    with pytest.raises(PluginError) as err:
        build_plugin_manager(parse_config({"plugins": {"wrong": {}}}), extra_plugins={"wrong": WrongArg()})
    assert err.value.plugin == "wrong"
    assert "msg" in str(err.value)


def test_a_failing_config_schema_stops_startup_with_the_plugin_name() -> None:
    class Broken:
        @hookimpl
        def config_schema(self) -> type[msgspec.Struct]:
            raise RuntimeError("schema module missing")

    expected = r"plugin 'broken': config_schema failed: RuntimeError: schema module missing"
    with pytest.raises(PluginError, match=expected):
        runner({"broken": Broken()})


# -- HookRunner.call -----------------------------------------------------------------------------


class SyncPlugin:
    def __init__(self) -> None:
        self.seen: list[tuple[Message, Any]] = []

    @hookimpl
    def config_schema(self) -> type[msgspec.Struct]:
        return Named

    @hookimpl
    def on_message_received(self, message: Message, settings: Named) -> str:
        self.seen.append((message, settings))
        return f"sync:{settings.name}"


class AsyncPlugin:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @hookimpl
    def config_schema(self) -> type[msgspec.Struct]:
        return Named

    @hookimpl
    async def on_message_received(self, settings: Named, **_: Any) -> str:
        self.seen.append({"settings": settings})
        return f"async:{settings.name}"


class QuietPlugin:
    """Takes only one of the offered arguments and returns nothing."""

    def __init__(self) -> None:
        self.bodies: list[str | None] = []

    @hookimpl
    def on_message_received(self, message: Message) -> None:
        self.bodies.append(message.body)


class BrokenPlugin:
    @hookimpl
    async def on_message_received(self, message: Message) -> None:
        raise RuntimeError(f"boom on {message.id}")


async def test_sync_and_async_implementations_are_awaited_and_get_their_own_settings() -> None:
    sync, asynchronous, quiet = SyncPlugin(), AsyncPlugin(), QuietPlugin()
    hooks, _ = runner(
        {"sync": sync, "async": asynchronous, "quiet": quiet},
        {"sync": {"name": "S"}, "async": {"name": "A"}, "quiet": {}},
    )
    results = await hooks.call(
        "on_message_received", host=None, message=MESSAGE, conversation=CONVERSATION, contact=None, event=None
    )
    assert sorted(results) == ["async:A", "sync:S"]  # awaited values, Nones dropped
    assert sync.seen == [(MESSAGE, Named(name="S"))]
    assert asynchronous.seen == [{"settings": Named(name="A")}]
    assert quiet.bodies == ["Oi"]
    assert hooks.settings == {"sync": Named(name="S"), "async": Named(name="A"), "quiet": None}


async def test_a_failing_implementation_is_isolated_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet, sync = QuietPlugin(), SyncPlugin()
    hooks, metrics = runner({"quiet": quiet, "broken": BrokenPlugin(), "sync": sync})
    with caplog.at_level(logging.ERROR, logger="zaphub.plugins"):
        results = await hooks.call("on_message_received", **RECEIVED)
        await hooks.call("on_message_received", **RECEIVED)
    assert results == ["sync:default"]
    assert quiet.bodies == ["Oi", "Oi"]
    assert len(sync.seen) == 2
    assert hook_errors(metrics, "broken", "on_message_received") == 2
    assert hook_errors(metrics, "quiet", "on_message_received") is None
    failures = [r for r in caplog.records if r.name == "zaphub.plugins"]
    assert len(failures) == 1  # the same failure again is counted, not logged again within a minute
    assert "plugin 'broken' failed in hook on_message_received" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert "boom on 11" in str(failures[0].exc_info[1])
    assert b'zaphub_hook_errors_total{hook="on_message_received",plugin="broken"} 2.0' in metrics.render()


async def test_an_api_error_in_an_event_hook_is_isolated_too() -> None:
    class Refuses:
        @hookimpl
        def on_message_received(self) -> None:
            raise ValidationFailed("nobody is there to read this")

    quiet = QuietPlugin()
    hooks, metrics = runner({"quiet": quiet, "refuses": Refuses()})
    await hooks.call("on_message_received", **RECEIVED)
    assert quiet.bodies == ["Oi"]
    assert hook_errors(metrics, "refuses", "on_message_received") == 1


async def test_call_strict_stops_with_the_plugin_name() -> None:
    class FailsToStart:
        @hookimpl
        async def on_startup(self) -> None:
            raise OSError("port 9 in use")

    hooks, _ = runner({"starter": FailsToStart()})
    with pytest.raises(PluginError, match=r"plugin 'starter': on_startup failed: OSError: port 9 in use"):
        await hooks.call_strict("on_startup", host=None)


def test_collect_flattens_lists_with_the_plugin_name_and_refuses_bad_returns() -> None:
    class Routes:
        @hookimpl
        def register_routes(self) -> list[str]:
            return ["a", "b"]

    class NotAList:
        @hookimpl
        def register_routes(self) -> str:
            return "a"

    class Async:
        @hookimpl
        async def register_routes(self) -> list[str]:
            return []

    hooks, _ = runner({"routes": Routes()})
    assert hooks.collect("register_routes", host=None) == [("routes", "a"), ("routes", "b")]
    hooks, _ = runner({"bad": NotAList()})
    with pytest.raises(PluginError, match="plugin 'bad': register_routes must return a list, got str"):
        hooks.collect("register_routes", host=None)
    hooks, _ = runner({"async": Async()})
    with pytest.raises(PluginError, match="must be a plain function, not async"):
        hooks.collect("register_routes", host=None)


def test_plugin_hooks_and_hook_names_describe_the_manager() -> None:
    hooks, _ = runner({"sync": SyncPlugin(), "quiet": QuietPlugin()})
    assert hooks.plugin_hooks() == {
        "sync": ["config_schema", "on_message_received"],
        "quiet": ["on_message_received"],
    }
    assert "reply_for_message" in hooks.hook_names()


# -- HookRunner.first ----------------------------------------------------------------------------


class Bot:
    def __init__(self, answer: Reply | None) -> None:
        self.answer = answer
        self.asked = 0

    @hookimpl
    async def reply_for_message(self, message: Message) -> Reply | None:
        self.asked += 1
        return self.answer


class FirstBot(Bot):
    """Asked before the others, whatever the registration order."""

    @hookimpl(tryfirst=True)
    async def reply_for_message(self, message: Message) -> Reply | None:
        self.asked += 1
        return self.answer


class CrashingBot:
    @hookimpl(tryfirst=True)
    def reply_for_message(self) -> Reply:
        raise ValueError("LLM quota exceeded")


async def test_first_awaits_async_implementations_and_skips_none() -> None:
    undecided, answering, never = FirstBot(None), Bot(Reply(text="Seu pedido está a caminho!")), Bot(None)
    hooks, _ = runner({"never": never, "answering": answering, "undecided": undecided})
    reply = await hooks.first("reply_for_message", **RECEIVED)
    assert reply == Reply(text="Seu pedido está a caminho!")
    assert undecided.asked == 1  # its coroutine resolved to None, so the next plugin was asked
    assert answering.asked == 1
    assert never.asked == 0  # registered first, called last: not reached


async def test_first_isolates_a_failing_implementation_and_returns_none_when_nobody_answers() -> None:
    hooks, metrics = runner({"crashing": CrashingBot(), "silent": Bot(None)})
    assert await hooks.first("reply_for_message", **RECEIVED) is None
    assert hook_errors(metrics, "crashing", "reply_for_message") == 1
    hooks, _ = runner({"crashing": CrashingBot(), "bot": Bot(Reply(text="ok"))})
    assert await hooks.first("reply_for_message", **RECEIVED) == Reply(text="ok")


async def test_media_for_message_is_answered_by_the_plugin_that_knows_the_media() -> None:
    class Transport:
        @hookimpl
        async def media_for_message(self, message: Message) -> MediaStream | None:
            if message.media_id is None:
                return None

            async def chunks() -> AsyncIterator[bytes]:
                yield b"\xff\xd8"
                yield b"jpeg"

            return MediaStream(mime_type="image/jpeg", chunks=chunks(), size=6)

    class Other:
        @hookimpl(tryfirst=True)
        def media_for_message(self) -> None:
            return None

    hooks, _ = runner({"transport": Transport(), "other": Other()})
    image = msgspec.structs.replace(MESSAGE, type="image", media_id="img-1", media_mime_type="image/jpeg")
    stream = await hooks.first("media_for_message", host=None, message=image)
    assert isinstance(stream, MediaStream)
    assert stream.mime_type == "image/jpeg"
    assert b"".join([chunk async for chunk in stream.chunks]) == b"\xff\xd8jpeg"
    assert await hooks.first("media_for_message", host=None, message=MESSAGE) is None


# -- HookRunner.before_send ----------------------------------------------------------------------

OUTGOING = OutgoingMessage(conversation_id=7, type="text", content={"body": "Olá"}, body="Olá")


class Appender:
    """Appends its tag to the body it is given: proves each plugin sees the previous one's result."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    @hookimpl
    async def on_before_send(self, outgoing: OutgoingMessage) -> OutgoingMessage:
        body = f"{outgoing.content['body']} {self.tag}"
        return msgspec.structs.replace(outgoing, content={"body": body}, body=body)


class Vetoer:
    @hookimpl(tryfirst=True)
    def on_before_send(self, outgoing: OutgoingMessage, conversation: Conversation) -> Veto | None:
        return Veto("contact opted out") if conversation.id == 7 else None


class Refuser:
    @hookimpl
    def on_before_send(self, outgoing: OutgoingMessage) -> None:
        raise ValidationFailed("text.body is longer than 4096 characters")


class Sloppy:
    @hookimpl
    def on_before_send(self) -> dict[str, str]:
        return {"body": "not an OutgoingMessage"}


class Crashing:
    @hookimpl
    def on_before_send(self) -> None:
        raise KeyError("oops")


async def test_before_send_is_a_pipeline() -> None:
    hooks, _ = runner({"a": Appender("[a]"), "b": Appender("[b]"), "pass": QuietPlugin()})
    result = await hooks.before_send(OUTGOING, host=None, conversation=CONVERSATION)
    assert result.body in ("Olá [a] [b]", "Olá [b] [a]")
    assert result.content == {"body": result.body}


async def test_before_send_veto_names_the_plugin_and_the_reason() -> None:
    appender = Appender("[a]")
    hooks, _ = runner({"a": appender, "optout": Vetoer()})
    with pytest.raises(SendVetoed) as err:
        await hooks.before_send(OUTGOING, host=None, conversation=CONVERSATION)
    assert err.value.status_code == 422
    assert err.value.code == "send_vetoed"
    assert err.value.message == "refused by plugin 'optout': contact opted out"
    other = msgspec.structs.replace(CONVERSATION, id=8)
    assert (await hooks.before_send(OUTGOING, host=None, conversation=other)).body == "Olá [a]"


async def test_before_send_lets_an_api_error_reach_the_sender() -> None:
    hooks, metrics = runner({"refuser": Refuser()})
    with pytest.raises(ValidationFailed, match="longer than 4096"):
        await hooks.before_send(OUTGOING, host=None, conversation=CONVERSATION)
    assert hook_errors(metrics, "refuser", "on_before_send") is None  # a refusal, not a failure


async def test_before_send_isolates_crashes_and_wrong_return_types() -> None:
    hooks, metrics = runner({"crashing": Crashing(), "sloppy": Sloppy(), "a": Appender("[a]")})
    result = await hooks.before_send(OUTGOING, host=None, conversation=CONVERSATION)
    assert result.body == "Olá [a]"
    assert hook_errors(metrics, "crashing", "on_before_send") == 1
    assert hook_errors(metrics, "sloppy", "on_before_send") == 1


# -- through pluggy: tracing sees every call; what the runner cannot honour is refused at load ----


def monitor(hooks: HookRunner) -> list[tuple[str, list[str], dict[str, Any]]]:
    """Record what pluggy's own monitoring sees: hook name, plugins called, arguments."""
    seen: list[tuple[str, list[str], dict[str, Any]]] = []

    def before(hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
        seen.append((hook_name, [impl.plugin_name for impl in impls], dict(kwargs)))

    def after(*_: Any) -> None:
        pass

    hooks.pm.add_hookcall_monitoring(before, after)
    return seen


async def test_pluggy_monitoring_sees_every_call_with_each_plugins_settings() -> None:
    sync, asynchronous = SyncPlugin(), AsyncPlugin()
    hooks, _ = runner({"sync": sync, "async": asynchronous}, {"sync": {"name": "S"}, "async": {"name": "A"}})
    seen = monitor(hooks)
    assert sorted(await hooks.call("on_message_received", **RECEIVED)) == ["async:A", "sync:S"]
    # One pluggy call per plugin, in pluggy's order (last registered first), each with its settings.
    assert [(name, plugins, kwargs["settings"]) for name, plugins, kwargs in seen] == [
        ("on_message_received", ["async"], Named(name="A")),
        ("on_message_received", ["sync"], Named(name="S")),
    ]
    assert all(kwargs["message"] is MESSAGE for _, _, kwargs in seen)

    seen.clear()
    hooks, _ = runner({"never": Bot(None), "answering": Bot(Reply(text="ok")), "first": FirstBot(None)})
    seen = monitor(hooks)
    assert await hooks.first("reply_for_message", **RECEIVED) == Reply(text="ok")
    assert [plugins for _, plugins, _ in seen] == [["first"], ["answering"]]  # tryfirst, then LIFO; stops

    hooks, _ = runner({"a": Appender("[a]"), "optout": Vetoer()})
    seen = monitor(hooks)
    with pytest.raises(SendVetoed):
        await hooks.before_send(OUTGOING, host=None, conversation=CONVERSATION)
    assert [(name, plugins) for name, plugins, _ in seen] == [("on_before_send", ["optout"])]


async def test_pluggy_tracing_writes_each_hook_call() -> None:
    quiet = QuietPlugin()
    hooks, _ = runner({"quiet": quiet})
    lines: list[str] = []
    hooks.pm.trace.root.setwriter(lines.append)
    undo = hooks.pm.enable_tracing()
    try:
        await hooks.call("on_message_received", **RECEIVED)
        await hooks.call_strict("on_startup", host=None)
        hooks.collect("register_routes", host=None)
    finally:
        undo()
    assert quiet.bodies == ["Oi"]
    text = "".join(lines)
    assert "on_message_received [hook]" in text
    assert "finish on_message_received -->" in text
    # Hooks nobody implements are not called at all: nothing to trace.
    assert "on_startup" not in text
    assert "register_routes" not in text


@pytest.mark.parametrize("kind", ["wrapper", "hookwrapper"])
def test_a_hook_wrapper_is_refused_at_load_naming_the_plugin_and_the_hook(kind: str) -> None:
    """Before: a wrapper's generator came back from reply_for_message as the bot's reply."""

    class WrappingBot:
        @hookimpl(**{kind: True})
        def reply_for_message(self) -> Any:
            result = yield
            return result

    config = parse_config({"plugins": {"wrapping": {}}})
    with pytest.raises(PluginError) as err:
        build_plugin_manager(config, extra_plugins={"wrapping": WrappingBot()})
    assert err.value.plugin == "wrapping"
    message = str(err.value)
    assert f"hook reply_for_message: @hookimpl({kind}=True) is not supported" in message
    assert "tryfirst=True" in message  # what to do instead
    with pytest.raises(PluginError, match="is not supported"):
        create_app(config, extra_plugins={"wrapping": WrappingBot()})


def test_a_hook_implemented_twice_by_one_plugin_is_refused_at_load() -> None:
    class Twice:
        @hookimpl
        def on_message_received(self) -> None:
            raise AssertionError("never called")

        @hookimpl(specname="on_message_received")
        def also_received(self) -> None:
            raise AssertionError("never called")

    with pytest.raises(PluginError) as err:
        build_plugin_manager(parse_config({"plugins": {"twice": {}}}), extra_plugins={"twice": Twice()})
    assert err.value.plugin == "twice"
    assert "hook on_message_received is implemented 2 times (also_received, on_message_received)" in str(
        err.value
    )


def test_an_unhashable_plugin_object_is_refused_at_load_with_the_fix() -> None:
    class Unhashable(QuietPlugin):
        __hash__ = None  # type: ignore[assignment]  # what @dataclass (eq=True) does

    with pytest.raises(PluginError) as err:
        build_plugin_manager(parse_config({"plugins": {"odd": {}}}), extra_plugins={"odd": Unhashable()})
    assert err.value.plugin == "odd"
    assert "unhashable" in str(err.value)
    assert "eq=False" in str(err.value)


async def test_a_call_missing_an_argument_is_the_hosts_error_not_a_plugin_failure() -> None:
    quiet = QuietPlugin()
    hooks, metrics = runner({"quiet": quiet})
    with pytest.raises(TypeError, match="hook on_message_received called without conversation, contact"):
        await hooks.call("on_message_received", host=None, message=MESSAGE)
    assert quiet.bodies == []
    assert hook_errors(metrics, "quiet", "on_message_received") is None


# -- through a running app -----------------------------------------------------------------------


async def test_a_failing_hook_leaves_other_plugins_and_the_host_running(tmp_path: Path) -> None:
    quiet = QuietPlugin()
    config = parse_config(
        {"storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"}, "plugins": {"broken": {}, "quiet": {}}}
    )
    app = create_app(config, extra_plugins={"broken": BrokenPlugin(), "quiet": quiet})
    host = app.state.host
    # A real server in this event loop: the host's queues and futures belong to the loop it runs in.
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        await host.ingest.submit(
            [
                InboundMessage(
                    phone_number_id="100",
                    wamid="wamid.HOOK1",
                    wa_id="5511999999999",
                    profile_name="João Silva",
                    type="text",
                    body="Olá!",
                    timestamp=NOW,
                    raw={"id": "wamid.HOOK1"},
                )
            ],
            [],
        )
        await wait_for(lambda: quiet.bodies == ["Olá!"], timeout=5, what="the healthy plugin to be called")
        metrics = (await client.get("/metrics")).text
        assert 'zaphub_hook_errors_total{hook="on_message_received",plugin="broken"} 1.0' in metrics
        assert (await client.get("/health")).status_code == 200


class TemplatesOnly:
    """A send policy: nothing but templates, and a window that is never open."""

    def refuse(self, outgoing: OutgoingMessage, conversation: Conversation) -> ApiError | None:
        if outgoing.type == "template":
            return None
        return ApiError(
            f"conversation {conversation.id} takes templates only", code="closed", status_code=422
        )

    def window_open(self, conversation: Conversation) -> bool:
        return False


class PolicyPlugin:
    @hookimpl
    def register_send_policies(self) -> list[Any]:
        return [TemplatesOnly()]


async def _one_conversation(host: Any) -> int:
    inbound = InboundMessage(
        phone_number_id="100",
        wamid="wamid.POLICY1",
        wa_id="5511999999999",
        profile_name=None,
        type="text",
        body="Olá!",
        timestamp=datetime.now(UTC),
        raw={"id": "wamid.POLICY1"},
    )
    await host.ingest.submit([inbound], [])  # returns once committed
    conversations = await host.storage.list_conversations(limit=1)
    return int(conversations[0].id)


async def test_hook_register_send_policies(tmp_path: Path) -> None:
    config = parse_config({"storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"}, "plugins": {"policy": {}}})
    app = create_app(config, extra_plugins={"policy": PolicyPlugin()})
    host = app.state.host
    woken: list[str] = []
    host.sender.on_queued(lambda: woken.append("queued"))
    async with serve(app):
        conversation_id = await _one_conversation(host)
        conversation = await host.storage.get_conversation(conversation_id)

        with pytest.raises(ApiError, match="templates only") as refused:
            await host.sender.send(conversation_id, "text", {"body": "oi"})
        assert (refused.value.status_code, refused.value.code) == (422, "closed")
        assert woken == []  # nothing was queued
        assert host.sender.window_open(conversation) is False

        await host.sender.send(conversation_id, "template", {"name": "retomada"}, idempotency_key="k1")
        await host.sender.send(conversation_id, "template", {"name": "retomada"}, idempotency_key="k1")
        assert woken == ["queued"]  # once: the repeat was not queued again


async def test_without_a_transport_policy_every_type_may_be_sent(tmp_path: Path) -> None:
    config = parse_config({"storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"}, "plugins": {"quiet": {}}})
    app = create_app(config, extra_plugins={"quiet": QuietPlugin()})
    host = app.state.host
    async with serve(app):
        conversation_id = await _one_conversation(host)
        conversation = await host.storage.get_conversation(conversation_id)
        assert host.sender.window_open(conversation) is True
        message, created = await host.sender.send(conversation_id, "text", {"body": "oi"})
        assert created and message.status == "queued"


class RecordingChannel:
    """A channel serving one number, recording the agent actions it is asked for."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, int, str | None]] = []

    def numbers(self) -> frozenset[str]:
        return frozenset({"100"})

    def recipient(self, to: str) -> str:
        if not to.lstrip("+").isdigit():
            raise ValidationFailed(f"to: {to!r} is not a number")
        return to.lstrip("+")

    async def mark_read(self, conversation: Conversation, message: Message) -> None:
        self.actions.append(("read", conversation.id, message.wamid))

    async def typing(self, conversation: Conversation, message: Message) -> None:
        self.actions.append(("typing", conversation.id, message.wamid))


class ChannelPlugin:
    def __init__(self) -> None:
        self.channel = RecordingChannel()

    @hookimpl
    def register_channels(self) -> list[Any]:
        return [self.channel]


async def test_hook_register_channels(tmp_path: Path) -> None:
    config = parse_config({"storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"}, "plugins": {"chan": {}}})
    plugin = ChannelPlugin()
    app = create_app(config, extra_plugins={"chan": plugin})
    host = app.state.host
    async with serve(app):
        assert host.sender.business_number(None, None) == "100"  # the only one served
        with pytest.raises(ApiError, match="not a business number"):
            host.sender.business_number("200", None)
        with pytest.raises(ApiError, match="scope"):
            host.sender.business_number("100", frozenset({"200"}))
        with pytest.raises(ApiError, match="not a number"):
            await host.sender.start("100", "+55abc", "text", {"body": "oi"})

        message, created = await host.sender.start("100", "+5511999999999", "text", {"body": "oi"})
        assert created
        conversation = await host.storage.get_conversation(message.conversation_id)
        contact = await host.storage.get_contact(conversation.contact_id)
        assert (conversation.phone_number_id, contact.wa_id) == ("100", "5511999999999")
        with pytest.raises(ApiError, match="no inbound message"):
            await host.sender.mark_read(conversation)

        conversation_id = await _one_conversation(host)  # the same contact writes on number 100
        assert conversation_id == conversation.id
        await host.sender.mark_read(conversation)
        await host.sender.typing(conversation)
        assert plugin.channel.actions == [
            ("read", conversation.id, "wamid.POLICY1"),
            ("typing", conversation.id, "wamid.POLICY1"),
        ]


class ModeRecorder:
    def __init__(self) -> None:
        self.modes: list[tuple[int, str]] = []
        self.events: list[Event] = []

    @hookimpl
    def on_conversation_updated(self, conversation: Conversation, event: Event) -> None:
        self.modes.append((conversation.id, conversation.mode))
        self.events.append(event)


async def test_hook_on_conversation_updated(tmp_path: Path) -> None:
    config = parse_config(
        {
            "storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"},
            "handoff": {"return_to_bot_seconds": 1},
            "plugins": {"modes": {}},
        }
    )
    recorder = ModeRecorder()
    app = create_app(config, extra_plugins={"modes": recorder})
    host = app.state.host
    async with serve(app):
        conversation_id = await _one_conversation(host)
        await host.handoff.set_mode(conversation_id, "human")
        await host.handoff.set_mode(conversation_id, "human")  # no change, no call
        await host.handoff.set_mode(conversation_id, "bot")
        await host.sender.send(conversation_id, "text", {"body": "oi"}, automated=True)  # a bot: no takeover
        await host.sender.send(conversation_id, "text", {"body": "sou a Ana"})  # an agent takes over
        await host.events.drain()
        assert recorder.modes == [
            (conversation_id, "human"),
            (conversation_id, "bot"),
            (conversation_id, "human"),
        ]
        # Idle for a second: back to the bot, reported once.
        await wait_for(lambda: len(recorder.modes) == 4, what="the idle conversation to return to the bot")
        assert recorder.modes[-1] == (conversation_id, "bot")
        assert (await host.storage.get_conversation(conversation_id)).mode == "bot"
        # Each change is its logged whatsapp:conversation_updated, in id order.
        assert [e.type for e in recorder.events] == ["whatsapp:conversation_updated"] * 4
        assert [
            (e.payload()["conversationId"], e.payload()["mode"]) for e in recorder.events
        ] == recorder.modes
        ids = [e.id for e in recorder.events]
        assert ids == sorted(set(ids))
        logged = await host.storage.read_events(0, 100, types=["whatsapp:conversation_updated"])
        assert [e.id for e in logged] == ids
        with pytest.raises(ApiError, match="does not exist"):
            await host.handoff.set_mode(999_999, "human")


class EveryEvent:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    @hookimpl
    async def on_event(self, event: Event) -> None:
        self.seen.append(event)


async def test_hook_on_event(tmp_path: Path) -> None:
    config = parse_config({"storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"}, "plugins": {"every": {}}})
    plugin = EveryEvent()
    app = create_app(config, extra_plugins={"every": plugin})
    host = app.state.host
    async with serve(app):
        conversation_id = await _one_conversation(host)
        await host.handoff.set_mode(conversation_id, "human")
        await host.events.drain()
        # Every logged event, whatever its type, once each and in id order.
        logged = await host.storage.read_events(0, 100)
        assert [e.type for e in logged] == ["whatsapp:message", "whatsapp:conversation_updated"]
        assert plugin.seen == logged
