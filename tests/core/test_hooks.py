"""Each hook as a plugin author meets it, fired by a real host: when, with what, and what comes of it.

One ``test_hook_<name>`` per hook of core/hookspecs.py (test_hooks_meta.py requires it; the
``register_commands`` one is in test_cli.py, where the ``zaphub`` console script runs). The host is
real: the ``whatsapp`` plugin with its sandbox (Meta over real HTTP) and ``crm_realtime``'s REST API,
on a free port, with the probe plugins of each test enabled after them (so they run first).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.testing import AsyncTestClient

from core import hookimpl
from core.app import create_app
from core.config import Config, ConfigFinding, parse_config
from core.errors import ConfigError, ConflictError, PluginError, StorageError
from core.host import Host, MediaStream, ReadinessCheck
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
from core.preflight import preflight
from core.server import DirectRoute
from plugins.whatsapp import webhook_builders as wb
from plugins.whatsapp.sandbox import media_content
from tests.helpers import read_body, send_answer, serve, wait_for
from tests.plugins.crm_realtime.harness import Zaphub, zaphub


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'z.db'}"


async def conversation_of(z: Zaphub, wa_id: str) -> int:
    listed = (await z.http.get("/api/conversations", headers=z.auth())).json()["conversations"]
    return int(next(c["id"] for c in listed if c["contact"]["phone_number"] == wa_id))


async def graph_text_sends(z: Zaphub) -> list[tuple[str, str]]:
    """``(to as digits, text body)`` of every text message the sandbox's Graph API accepted so far."""
    requests = (await z.http.get("/_sandbox/graph/_sandbox/requests")).json()
    return [
        (r["json"]["to"].lstrip("+"), r["json"]["text"]["body"])
        for r in requests
        if r["method"] == "POST"
        and r["path"].endswith("/messages")
        and (r["json"] or {}).get("type") == "text"
    ]


# -- lifecycle ------------------------------------------------------------------------------------


class Greeting(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    greeting: str
    retries: int = 3


def test_hook_config_schema(tmp_path: Path) -> None:
    """The section is validated against the declared Struct and reaches the plugin's hooks typed."""

    class Configured:
        def __init__(self) -> None:
            self.routes_settings: list[Any] = []

        @hookimpl
        def config_schema(self) -> type[msgspec.Struct]:
            return Greeting

        @hookimpl
        def register_routes(self, settings: Greeting) -> list[Any]:
            self.routes_settings.append(settings)
            return []

    def build(section: dict[str, Any]) -> tuple[Configured, Host]:
        plugin = Configured()
        config = parse_config({"storage": {"url": sqlite(tmp_path)}, "plugins": {"configured": section}})
        app = create_app(config, extra_plugins={"configured": plugin})
        return plugin, app.state.host

    plugin, host = build({"greeting": "Olá", "retries": "5"})  # numbers are converted leniently
    assert plugin.routes_settings == [Greeting(greeting="Olá", retries=5)]
    assert host.settings("configured") == Greeting(greeting="Olá", retries=5)
    with pytest.raises(ConfigError) as err:
        build({"greeting": "Olá", "retires": 5})
    assert err.value.path == "plugins.configured.retires"
    assert "unknown key" in str(err.value)
    with pytest.raises(ConfigError, match="greeting"):
        build({})


class Keys(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    api_key: str = ""


async def test_hook_check_settings(tmp_path: Path) -> None:
    """Findings on the plugin's own settings: unsafe ones stop ``check``/``run``; all show on ``/ready``."""

    class Keyed:
        def __init__(self) -> None:
            self.seen: list[tuple[Any, str]] = []

        @hookimpl
        def config_schema(self) -> type[msgspec.Struct]:
            return Keys

        @hookimpl
        def check_settings(self, settings: Keys, config: Config) -> list[ConfigFinding]:
            self.seen.append((settings, config.source))
            if settings.api_key:
                return []
            return [ConfigFinding(path="plugins.keyed.api_key", message="is empty: set KEYED_API_KEY")]

    def config(section: dict[str, Any]) -> Config:
        data = {"storage": {"url": sqlite(tmp_path)}, "plugins": {"keyed": section}}
        return parse_config(data, source="config.yaml", env={})

    plugin = Keyed()
    with pytest.raises(ConfigError) as err:
        preflight(config({}), extra_plugins={"keyed": plugin})
    assert str(err.value).endswith("\n  plugins.keyed.api_key: is empty: set KEYED_API_KEY")
    assert plugin.seen == [(Keys(), "config.yaml")]
    assert preflight(config({"api_key": "k"}), extra_plugins={"keyed": plugin}).warnings == []
    app = create_app(config({}), extra_plugins={"keyed": Keyed()})
    async with AsyncTestClient(app) as client:
        warnings = (await client.get("/ready")).json()["warnings"]
    assert warnings == ["plugins.keyed.api_key: is empty: set KEYED_API_KEY"]


class Items(Controller):
    path = "/probe/items"

    @get("/{item_id:int}")
    async def get_item(self, host: NamedDependency[Host], item_id: FromPath[int]) -> dict[str, Any]:
        return {"id": item_id, "plugins": sorted(host.config.plugins)}


@get("/probe/hello")
async def hello(host: NamedDependency[Host]) -> dict[str, Any]:
    return {"hello": host.settings("routes")}


async def test_hook_register_routes(tmp_path: Path) -> None:
    """Handlers and controllers a plugin returns are served on the app's port and documented."""

    class Routes:
        @hookimpl
        def register_routes(self, host: Host) -> list[Any]:
            assert not host.started  # called while the app is built
            return [hello, Items]

    config = parse_config({"storage": {"url": sqlite(tmp_path)}, "plugins": {"routes": {}}})
    async with AsyncTestClient(create_app(config, extra_plugins={"routes": Routes()})) as client:
        assert (await client.get("/probe/hello")).json() == {"hello": None}
        assert (await client.get("/probe/items/7")).json() == {"id": 7, "plugins": ["routes"]}
        paths = (await client.get("/schema/openapi.json")).json()["paths"]
        assert {"/probe/hello", "/probe/items/{item_id}"} <= set(paths)


class Direct:
    """A plugin with direct routes (echo, failures) and a Litestar route on the same path."""

    @staticmethod
    async def echo(scope: Any, receive: Any, send: Any) -> None:
        await send_answer(send, await read_body(receive))

    @staticmethod
    async def fail(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        kind = scope["query_string"]
        if kind == b"api":
            raise ConflictError("that thing is taken")
        if kind == b"storage":
            raise StorageError("database is locked")
        raise RuntimeError("a bug")

    @hookimpl
    def register_direct_routes(self, host: Host) -> list[DirectRoute]:
        assert not host.started  # called while the app is built
        return [
            DirectRoute("POST", "/probe/direct", self.echo),
            DirectRoute("PUT", "/probe/direct", self.fail),
        ]

    @hookimpl
    def register_routes(self) -> list[Any]:
        @get("/probe/direct", sync_to_thread=False)
        def litestar_side() -> dict[str, str]:
            return {"served_by": "litestar"}

        return [litestar_side]


async def test_hook_register_direct_routes(tmp_path: Path) -> None:
    """A direct route answers its method and path over real HTTP, under the host's body timeout and errors."""
    config = parse_config(
        {
            "storage": {"url": sqlite(tmp_path)},
            "server": {"body_timeout_seconds": 0.5},
            "plugins": {"direct": {}},
        }
    )
    app = create_app(config, extra_plugins={"direct": Direct()})
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        echoed = await client.post("/probe/direct", content=b"x" * 100_000)
        assert (echoed.status_code, echoed.content) == (200, b"x" * 100_000)
        # Other methods on the path are Litestar's.
        assert (await client.get("/probe/direct")).json() == {"served_by": "litestar"}
        # An exception before the answer gets the host's error envelope.
        conflict = await client.put("/probe/direct?api")
        assert conflict.status_code == 409
        assert conflict.json() == {"error": {"code": "conflict", "message": "that thing is taken"}}
        down = await client.put("/probe/direct?storage")
        assert (down.status_code, down.headers["retry-after"]) == (503, "5")
        assert down.json()["error"]["code"] == "storage_unavailable"
        bug = await client.put("/probe/direct")
        assert bug.status_code == 500
        assert bug.json()["error"]["code"] == "internal_error"
        # A body that stops halfway is answered 408, and the connection closed.
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(b"POST /probe/direct HTTP/1.1\r\nHost: zaphub\r\nContent-Length: 10\r\n\r\nhalf")
            async with asyncio.timeout(10):
                answer = await reader.read()
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in answer.lower()
        assert b'"code":"request_timeout"' in answer


def test_direct_routes_are_refused_when_two_plugins_claim_one_or_one_is_not_a_route(tmp_path: Path) -> None:
    class Another:
        @hookimpl
        def register_direct_routes(self) -> list[Any]:
            return [DirectRoute("POST", "/probe/direct", Direct.echo)]

    class Wrong:
        @hookimpl
        def register_direct_routes(self) -> list[Any]:
            return [("POST", "/probe/direct", Direct.echo)]

    def build(**plugins: object) -> Any:
        config = parse_config(
            {"storage": {"url": sqlite(tmp_path)}, "plugins": {name: {} for name in plugins}}
        )
        return create_app(config, extra_plugins=plugins)

    # Named: the plugin refused and the one that has the route (pluggy calls the later one first).
    claimed = r"plugin '(another|direct)': direct route POST /probe/direct is already registered by '\w+'"
    with pytest.raises(PluginError, match=claimed):
        build(direct=Direct(), another=Another())
    with pytest.raises(PluginError, match=r"must return core\.server\.DirectRoute objects"):
        build(wrong=Wrong())
    with pytest.raises(ValueError, match="method 'post' is not one of"):
        DirectRoute("post", "/x", Direct.echo)
    with pytest.raises(ValueError, match="must be an exact path"):
        DirectRoute("POST", "/items/{item_id:int}", Direct.echo)


async def test_hook_register_readiness_checks(tmp_path: Path) -> None:
    """``/ready`` runs the plugin's check: 200 while it answers ``None``, 503 naming it otherwise."""

    class Checked:
        problem: str | None = None

        @hookimpl
        def register_readiness_checks(self) -> list[ReadinessCheck]:
            async def upstream() -> str | None:
                return self.problem

            return [("upstream", upstream)]

    plugin = Checked()
    config = parse_config({"storage": {"url": sqlite(tmp_path)}, "plugins": {"checked": {}}})
    async with AsyncTestClient(create_app(config, extra_plugins={"checked": plugin})) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["upstream"] == "ok"
        plugin.problem = "access token expired (code 190)"
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["upstream"] == "access token expired (code 190)"


async def test_hook_on_startup(tmp_path: Path) -> None:
    """Runs once before anything is served, with storage open; its spawned task is cancelled at stop.

    A plugin that fails to start stops the host with its name.
    """

    class Starter:
        def __init__(self) -> None:
            self.calls: list[tuple[bool, Any]] = []
            self.worker_ran = asyncio.Event()
            self.worker_cancelled = False

        @hookimpl
        async def on_startup(self, host: Host, settings: Any) -> None:
            assert await host.storage.get_conversation(1) is None  # storage is open and migrated
            self.calls.append((host.started, settings))
            host.spawn(self.worker(), name="starter-worker")

        async def worker(self) -> None:
            self.worker_ran.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.worker_cancelled = True
                raise

    plugin = Starter()
    async with zaphub(sqlite(tmp_path), extra_plugins={"starter": plugin}) as z:
        assert plugin.calls == [(False, None)]  # before the host counted as started
        assert (await z.http.get("/ready")).status_code == 200
        await asyncio.wait_for(plugin.worker_ran.wait(), 10)
    assert plugin.worker_cancelled
    assert len(plugin.calls) == 1

    class FailsToStart:
        @hookimpl
        def on_startup(self) -> None:
            raise OSError("port 9 in use")

    config = parse_config({"storage": {"url": sqlite(tmp_path)}, "plugins": {"starter": {}}})
    failed = pytest.RaisesExc(
        PluginError, match=r"plugin 'starter': on_startup failed: OSError: port 9 in use"
    )
    with pytest.RaisesGroup(failed, flatten_subgroups=True):  # the lifespan's task group wraps it
        async with AsyncTestClient(create_app(config, extra_plugins={"starter": FailsToStart()})):
            pass


async def test_hook_on_shutdown(tmp_path: Path) -> None:
    """Runs once at stop, after the events already accepted were dispatched, with storage still open."""

    class Closer:
        def __init__(self) -> None:
            self.log: list[str] = []

        @hookimpl
        def on_message_received(self, message: Message) -> None:
            self.log.append(f"received {message.body}")

        @hookimpl
        async def on_shutdown(self, host: Host) -> None:
            await asyncio.sleep(0)  # awaited: the host waits for it
            stored = await host.storage.get_conversation(1)
            self.log.append(f"shutdown, conversation 1 {'stored' if stored else 'missing'}")

    plugin = Closer()
    async with zaphub(sqlite(tmp_path), extra_plugins={"closer": plugin}) as z:
        await z.inbound("até logo")  # acknowledged, then the host stops right away
    assert plugin.log == ["received até logo", "shutdown, conversation 1 stored"]


# -- inbound --------------------------------------------------------------------------------------


async def test_hook_on_message_received(tmp_path: Path) -> None:
    """Fires once per stored inbound message, also when Meta delivers the webhook again."""

    class Inbox:
        def __init__(self) -> None:
            self.received: list[tuple[Message, Conversation, Contact]] = []

        @hookimpl
        async def on_message_received(
            self, message: Message, conversation: Conversation, contact: Contact
        ) -> None:
            self.received.append((message, conversation, contact))

    plugin = Inbox()
    async with zaphub(sqlite(tmp_path), extra_plugins={"inbox": plugin}) as z:
        msg = wb.text("Quero saber do meu pedido", from_="5511988887777")
        for _ in range(2):  # Meta retries: the same wamid twice
            await z.webhook([msg], contacts=[wb.contact("5511988887777", "Maria Oliveira")])
        await z.settle()
        assert len(plugin.received) == 1
        message, conversation, contact = plugin.received[0]
        assert (message.wamid, message.body, message.direction) == (msg["id"], msg["text"]["body"], "inbound")
        assert message.conversation_id == conversation.id == await conversation_of(z, "5511988887777")
        assert conversation.contact_id == contact.id
        assert (contact.wa_id, contact.name) == ("5511988887777", "Maria Oliveira")


async def test_hook_on_status_changed(tmp_path: Path) -> None:
    """Fires for each status that moves a message forward, in order; a stale status fires nothing."""

    class Tracker:
        def __init__(self) -> None:
            self.changes: list[tuple[int, str, str]] = []

        @hookimpl
        def on_status_changed(self, message: Message, change: StatusChange) -> None:
            self.changes.append((change.message_id, change.status, message.status))

    plugin = Tracker()
    async with zaphub(sqlite(tmp_path), extra_plugins={"tracker": plugin}) as z:
        await z.inbound("oi")
        await z.settle()
        sent = await z.send(await conversation_of(z, wb.DEFAULT_FROM), {"type": "text", "body": "Olá!"})
        message_id = sent["messageId"]
        # The sandbox answers the send, then posts sent → delivered → read webhooks.
        await wait_for(lambda: len(plugin.changes) >= 3, what="sent, delivered and read")
        assert plugin.changes == [
            (message_id, "sent", "sent"),
            (message_id, "delivered", "delivered"),
            (message_id, "read", "read"),
        ]
        wamid = (await z.http.get(f"/api/messages/{message_id}", headers=z.auth())).json()["wamid"]
        await z.webhook(statuses=[wb.status(wamid, "delivered")])  # late, after read
        await z.settle()
        assert len(plugin.changes) == 3


async def test_hook_on_message_changed(tmp_path: Path) -> None:
    """Fires for an edit, a reaction and a deletion of a stored message; an early edit fires once
    its message arrives (after ``on_message_received``); a redelivery fires nothing."""

    class Tracker:
        def __init__(self) -> None:
            self.seen: list[tuple[Any, ...]] = []

        @hookimpl
        def on_message_received(self, message: Message) -> None:
            self.seen.append(("received", message.body))

        @hookimpl
        def on_message_changed(
            self, message: Message, conversation: Conversation, change: MessageChange
        ) -> None:
            assert conversation.id == message.conversation_id and change.message_id == message.id
            self.seen.append((change.kind, message.body, change.body, change.emoji, change.reactor))

    plugin = Tracker()
    async with zaphub(sqlite(tmp_path), extra_plugins={"tracker": plugin}) as z:
        original = wb.text("Quero 2 caixas")
        fix = wb.message(
            "edit",
            {"original_message_id": original["id"], "message": {"type": "text", "text": {"body": "Quero 3"}}},
        )
        await z.webhook([fix])  # before its message: kept
        await z.settle()
        assert plugin.seen == []
        await z.webhook([original])
        await z.webhook([fix])  # Meta redelivers it
        like = wb.reaction(original["id"], "👍")
        await z.webhook([like, wb.message("revoke", {"original_message_id": original["id"]})])
        await z.settle()
        assert plugin.seen == [
            ("received", "Quero 2 caixas"),
            ("edited", "Quero 3", "Quero 3", None, None),
            ("reaction", "Quero 3", None, "👍", wb.DEFAULT_FROM),
            ("deleted", None, None, None, None),
        ]


# -- outbound -------------------------------------------------------------------------------------


async def test_hook_on_before_send(tmp_path: Path) -> None:
    """Every send passes through it: a changed message is what Meta gets; a veto is the sender's 422."""

    class Signer:
        @hookimpl
        def on_before_send(self, outgoing: OutgoingMessage, conversation: Conversation) -> Any:
            body = outgoing.content.get("body", "")
            if "proibido" in body:
                return Veto(f"conversation {conversation.id}: that word is not sent")
            signed = f"{body} — Equipe"
            return msgspec.structs.replace(
                outgoing, content={**outgoing.content, "body": signed}, body=signed
            )

    async with zaphub(sqlite(tmp_path), extra_plugins={"signer": Signer()}) as z:
        await z.inbound("oi")
        await z.settle()
        conversation_id = await conversation_of(z, wb.DEFAULT_FROM)
        sent = await z.send(conversation_id, {"type": "text", "body": "Olá"})
        await wait_for(
            lambda: _has(graph_text_sends(z), (wb.DEFAULT_FROM, "Olá — Equipe")), what="the signed send"
        )
        stored = (await z.http.get(f"/api/messages/{sent['messageId']}", headers=z.auth())).json()
        assert stored["body"] == "Olá — Equipe"
        refused = await z.http.post(
            f"/api/conversations/{conversation_id}/messages",
            json={"type": "text", "body": "um texto proibido"},
            headers=z.auth(),
        )
        assert refused.status_code == 422
        assert refused.json()["error"] == {
            "code": "send_vetoed",
            "message": f"refused by plugin 'signer': conversation {conversation_id}: that word is not sent",
        }
        assert all("proibido" not in body for _, body in await graph_text_sends(z))


async def _has(fetch: Any, item: Any) -> bool:
    return item in await fetch


async def test_hook_on_message_sent(tmp_path: Path) -> None:
    """Fires once Graph accepted a send, with the wamid Meta gave it."""

    class Outbox:
        def __init__(self) -> None:
            self.sent: list[tuple[Message, Conversation]] = []

        @hookimpl
        def on_message_sent(self, message: Message, conversation: Conversation) -> None:
            self.sent.append((message, conversation))

    plugin = Outbox()
    async with zaphub(sqlite(tmp_path), extra_plugins={"outbox": plugin}) as z:
        await z.inbound("oi")
        await z.settle()
        conversation_id = await conversation_of(z, wb.DEFAULT_FROM)
        accepted = await z.send(conversation_id, {"type": "text", "body": "Pedido enviado"})
        await wait_for(lambda: plugin.sent, what="on_message_sent")
        await z.settle()
        assert len(plugin.sent) == 1
        message, conversation = plugin.sent[0]
        assert (message.id, message.body, message.direction) == (
            accepted["messageId"],
            "Pedido enviado",
            "outbound",
        )
        assert conversation.id == conversation_id
        assert message.wamid is not None and message.wamid.startswith("wamid.")
        detail = (await z.http.get(f"/api/messages/{message.id}", headers=z.auth())).json()
        assert detail["wamid"] == message.wamid


async def test_hook_media_for_message(tmp_path: Path) -> None:
    """``firstresult``: the first plugin that answers streams the bytes; ``None`` defers to the next."""

    class Vault:
        def __init__(self) -> None:
            self.asked: list[str | None] = []

        @hookimpl
        async def media_for_message(self, message: Message) -> MediaStream | None:
            self.asked.append(message.media_id)
            if not (message.media_id or "").startswith("vault-"):
                return None  # not ours: the whatsapp plugin fetches it from Graph

            async def chunks() -> AsyncIterator[bytes]:
                yield b"%PDF-"
                yield b"cofre"

            return MediaStream(mime_type="application/pdf", chunks=chunks(), size=10, filename="cofre.pdf")

    plugin = Vault()
    async with zaphub(sqlite(tmp_path), extra_plugins={"vault": plugin}) as z:
        await z.webhook(
            [wb.document(media_id="vault-1", filename="x.pdf"), wb.image(media_id="img-recibo-1")]
        )
        await z.settle()
        messages = (
            await z.http.get(
                f"/api/conversations/{await conversation_of(z, wb.DEFAULT_FROM)}/messages", headers=z.auth()
            )
        ).json()["messages"]
        ids = {m["type"]: m["id"] for m in messages}
        ours = await z.http.get(f"/api/messages/{ids['document']}/media", headers=z.auth())
        assert ours.status_code == 200
        assert (ours.content, ours.headers["content-type"]) == (b"%PDF-cofre", "application/pdf")
        assert ours.headers["content-disposition"] == 'inline; filename="cofre.pdf"'
        graphs = await z.http.get(f"/api/messages/{ids['image']}/media", headers=z.auth())
        expected = media_content("img-recibo-1")
        assert expected is not None
        assert graphs.status_code == 200
        assert graphs.content == expected[0]
        assert plugin.asked == ["vault-1", "img-recibo-1"]


# -- autoreply ------------------------------------------------------------------------------------


async def test_hook_reply_for_message(tmp_path: Path) -> None:
    """A bot's ``Reply`` is sent instead of autoreply's rules; ``None`` lets the rules answer."""

    class OrdersBot:
        @hookimpl
        async def reply_for_message(self, message: Message, contact: Contact) -> Reply | None:
            await asyncio.sleep(0)  # an LLM call, say: awaited before deciding
            if message.body and "pedido" in message.body.lower():
                return Reply(text=f"{contact.name}, seu pedido está a caminho!", source="orders-bot")
            return None

    rules = {"rules": [{"keywords": ["preço", "pedido"], "reply": "Tabela de preços: …"}]}
    async with zaphub(
        sqlite(tmp_path), extra_plugins={"orders": OrdersBot()}, plugins={"autoreply": rules}
    ) as z:
        await z.inbound("Cadê meu pedido?", from_="5511911112222", name="Ana")
        await z.inbound("Qual o preço?", from_="5511933334444", name="Bia")
        await wait_for(lambda: _count_at_least(graph_text_sends(z), 2), what="two auto-replies")
        assert sorted(await graph_text_sends(z)) == [
            ("5511911112222", "Ana, seu pedido está a caminho!"),
            ("5511933334444", "Tabela de preços: …"),
        ]


async def _count_at_least(fetch: Any, n: int) -> bool:
    return len(await fetch) >= n
