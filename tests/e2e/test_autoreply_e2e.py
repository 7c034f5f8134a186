"""autoreply end to end, as an integrator runs it: ``config.yaml`` → ``zaphub check`` → ``zaphub run``.

The server is the real ``zaphub run`` subprocess with the built-in Meta sandbox: webhooks go in
signed like Meta's, replies come out at the sandbox's Graph (its recorded requests), and CRM
clients see them on Socket.IO. Nothing is faked inside zaphub.

Waiting without sleeping: events reach plugins in commit order, so once the reply to a later
"barrier" message has reached Graph, every earlier message has been through autoreply's hook
(its inline checks: type, direction, handoff) and every reply queued by then has reached Graph.
It does not order work across conversations: a conversation's later messages wait for its
earlier ones in a task of their own, which may finish after the barrier's. A test about such a
message waits for the counter its handling moves (:meth:`Client.wait_metric`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib
import itertools
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from plugins.autoreply.config import DAY_NAMES
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import (
    REPO,
    SANDBOX_HEADERS,
    SANDBOX_TOKEN,
    ZaphubProcess,
    console_script,
    wait_for,
    write_config,
    zaphub_process,
)

SECRET = "e2e-autoreply-app-secret-0123456789abcdef"
JWT_SECRET = "e2e-autoreply-jwt-secret-0123456789abcdef"

PRICE = "Nossa tabela de preços: https://exemplo.com.br/precos"
BOLETO = "Envie seu CPF que mandamos a segunda via do boleto."
HOURS = "Atendemos de segunda a sexta, das 9h às 18h."
AWAY = "Estamos fora do horário de atendimento. Respondemos a partir das 9h."
GREETING = "Olá! Recebemos sua mensagem."


def _crm_problem() -> str | None:
    """Why the crm_realtime plugin cannot serve sockets yet (it is written in parallel), or None."""
    try:
        module = importlib.import_module("plugins.crm_realtime")
    except Exception as exc:
        return f"plugins.crm_realtime does not import: {exc!r}"
    if not hasattr(module, "config_schema"):
        return "plugins.crm_realtime has no hooks yet"
    return None


CRM_PROBLEM = _crm_problem()
needs_crm = pytest.mark.skipif(CRM_PROBLEM is not None, reason=f"crm_realtime not ready: {CRM_PROBLEM}")


def closed_now() -> dict[str, Any]:
    """Business hours that are closed today: open only on the day three days from now (UTC)."""
    open_day = DAY_NAMES[(dt.datetime.now(dt.UTC).weekday() + 3) % 7]
    return {"timezone": "UTC", "hours": {open_day: "09:00-18:00"}, "holidays": ["2030-12-25"], "reply": AWAY}


def integrator_config(tmp: Path, **extra_plugins: dict[str, Any]) -> dict[str, Any]:
    """What an integrator writes: three rules, business hours (closed right now), a greeting."""
    plugins: dict[str, Any] = {
        "whatsapp": {
            "sandbox": True,
            "sandbox_token": SANDBOX_TOKEN,
            "app_secret": SECRET,
            "verify_token": "e2e-verify-token",
        },
        "autoreply": {
            "cooldown_seconds": 600,
            "rules": [
                {"keywords": ["preço", "price", "quanto custa"], "reply": PRICE},
                {"keywords": ["segunda via", "boleto"], "reply": BOLETO},
                {"pattern": "(?i)hor[aá]rio", "reply": HOURS},
            ],
            "away": closed_now(),
            "greeting": GREETING,
        },
    }
    if CRM_PROBLEM is None:
        plugins["crm_realtime"] = {"jwt_secret": JWT_SECRET}
    plugins.update(extra_plugins)
    return {
        "storage": {"url": f"sqlite:///{tmp / 'zaphub.db'}"},
        "logging": {"level": "info"},
        "plugins": plugins,
    }


_BARRIERS = itertools.count(1)


def token() -> str:
    return jwt.encode({"sub": "e2e-agent", "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256")


class Client:
    """Talks to a running zaphub the way Meta, ops and a CRM do: over HTTP."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self.http = http

    async def webhook(self, payload: dict[str, Any]) -> None:
        body, headers = wb.signed(payload, SECRET)
        response = await self.http.post("/meta-whatsapp/webhook", content=body, headers=headers)
        assert response.status_code == 200, response.text

    async def message(self, message: dict[str, Any], *, name: str | None = None) -> None:
        contacts = [wb.contact(message["from"], name)] if name else None
        await self.webhook(wb.envelope(messages=[message], contacts=contacts))

    async def sends(self) -> list[dict[str, Any]]:
        requests = (await self.http.get("/_sandbox/graph/_sandbox/requests")).json()
        return [
            r["json"]
            for r in requests
            if r["method"] == "POST" and r["path"].endswith("/messages") and "to" in (r["json"] or {})
        ]

    async def replies_to(self, wa_id: str) -> list[str]:
        return [
            s.get("text", {}).get("body", s["type"])
            for s in await self.sends()
            if s["to"].lstrip("+") == wa_id
        ]

    async def wait_replies(self, wa_id: str, count: int) -> list[str]:
        async def enough() -> list[str] | None:
            found = await self.replies_to(wa_id)
            return found if len(found) >= count else None

        found: list[str] = await wait_for(enough, timeout=10, what=f"{count} repl(ies) to {wa_id}")
        return found

    async def barrier(self) -> None:
        """Return once everything posted before has been handled and sent (see the module docstring)."""
        wa_id = f"55119000{next(_BARRIERS):05d}"  # a new customer each time: never in a cooldown
        await self.message(wb.text("qual o horário?", from_=wa_id))
        assert await self.wait_replies(wa_id, 1) == [HOURS]
        # Replies queued before the barrier's may still be on their way to Graph: wait for the outbox.
        await wait_for(self._outbox_idle, timeout=10, what="every queued send to reach Graph")

    async def _outbox_idle(self) -> bool:
        metrics = await self.metrics()
        outcomes = {
            o: self.value(metrics, "zaphub_outbound_messages_total", outcome=o)
            for o in ("queued", "accepted", "failed")
        }
        return outcomes["queued"] == outcomes["accepted"] + outcomes["failed"]

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await self.http.get("/metrics")).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    @staticmethod
    def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    async def wait_metric(self, expected: float, name: str, **labels: str) -> None:
        """Wait until the sample ``name{labels}`` of ``/metrics`` reads ``expected``."""

        async def reached() -> bool:
            return self.value(await self.metrics(), name, **labels) >= expected

        await wait_for(reached, timeout=10, what=f"{name}{labels} to reach {expected}")
        assert self.value(await self.metrics(), name, **labels) == expected


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZaphubProcess]:
    """One ``zaphub run`` shared by the tests below; each test uses customers of its own."""
    tmp = tmp_path_factory.mktemp("autoreply-e2e")
    config = write_config(tmp / "config.yaml", integrator_config(tmp))
    with zaphub_process(config) as proc:
        yield proc


@pytest.fixture
async def client(server: ZaphubProcess) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, headers=SANDBOX_HEADERS) as http:
        yield Client(server.url, http)


class CrmSocket:
    """A CRM client on Socket.IO ``/crm``, recording the events it receives."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, dict[str, Any]]] = []
        for event in ("whatsapp:message", "whatsapp:message_sent", "whatsapp:message_status"):
            self.sio.on(event, self._recorder(event), namespace="/crm")

    def _recorder(self, event: str) -> Any:
        async def record(data: dict[str, Any]) -> None:
            self.events.append((event, data))

        return record

    def of(self, event: str) -> list[dict[str, Any]]:
        return [data for name, data in self.events if name == event]


@pytest.fixture
async def crm(server: ZaphubProcess) -> AsyncIterator[CrmSocket]:
    socket = CrmSocket()
    await socket.sio.connect(
        server.url, namespaces=["/crm"], auth={"token": token()}, transports=["websocket"], wait_timeout=5
    )
    try:
        yield socket
    finally:
        await socket.sio.disconnect()


# --- (a) -------------------------------------------------------------------------------------------


async def test_one_reply_reaches_graph_and_statuses_or_repeats_never_trigger_another(client: Client) -> None:
    ana = "5511970000001"
    question = wb.text("Oi! Qual o preço da consulta?", from_=ana)
    before = await client.metrics()

    await client.message(question, name="Ana Souza")

    assert await client.wait_replies(ana, 1) == [PRICE]
    # The sandbox reports sent, delivered and read for the reply, like Meta.
    await wait_for(
        lambda: _applied_statuses(client, before, 3), timeout=10, what="sent/delivered/read of the reply"
    )
    # Meta repeats the message webhook.
    await client.message(question, name="Ana Souza")
    await client.barrier()

    after = await client.metrics()
    assert await client.replies_to(ana) == [PRICE]
    assert (
        Client.value(after, "zaphub_duplicates_absorbed_total", kind="message")
        == Client.value(before, "zaphub_duplicates_absorbed_total", kind="message") + 1
    )
    replies = Client.value(after, "zaphub_autoreply_replies_total", reason="rule")
    assert replies == Client.value(before, "zaphub_autoreply_replies_total", reason="rule") + 2  # + barrier


async def _applied_statuses(client: Client, before: dict[Any, float], count: int) -> bool:
    now = await client.metrics()
    applied = Client.value(now, "zaphub_statuses_total", outcome="applied")
    return applied >= Client.value(before, "zaphub_statuses_total", outcome="applied") + count


@needs_crm
async def test_crm_sockets_see_the_reply_once_marked_automated(client: Client, crm: CrmSocket) -> None:
    bia = "5511970000002"

    await client.message(wb.text("Preciso da segunda via do boleto", from_=bia), name="Bia Lima")
    assert await client.wait_replies(bia, 1) == [BOLETO]
    await client.barrier()

    async def sent_events() -> list[dict[str, Any]]:
        return [e for e in crm.of("whatsapp:message_sent") if e["message"]["body"] == BOLETO]

    [event] = await wait_for(sent_events, timeout=5, what="whatsapp:message_sent for the reply")
    assert event["automated"] is True
    assert event["type"] == "sent"
    assert event["platform"] == "whatsapp"
    assert event["message"]["sender_type"] == "user"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["message"]["delivered_at"])
    [inbound] = [e for e in crm.of("whatsapp:message") if e["contact"]["phone_number"].endswith(bia)]
    assert event["conversationId"] == inbound["conversationId"]


# --- (b) -------------------------------------------------------------------------------------------


async def test_two_messages_in_a_row_get_one_reply(client: Client) -> None:
    caio = "5511970000003"
    before = await client.metrics()

    await client.message(wb.text("quanto custa?", from_=caio))
    await client.message(wb.text("e tem boleto?", from_=caio))

    assert await client.wait_replies(caio, 1) == [PRICE]
    # The second message's task runs after the first's; the cooldown skip is its last step.
    cooldown = Client.value(before, "zaphub_autoreply_skipped_total", reason="cooldown")
    await client.wait_metric(cooldown + 1, "zaphub_autoreply_skipped_total", reason="cooldown")
    await client.barrier()
    assert await client.replies_to(caio) == [PRICE]


# --- (c) -------------------------------------------------------------------------------------------


@needs_crm
async def test_an_agent_reply_over_rest_silences_autoreply(client: Client, crm: CrmSocket) -> None:
    davi = "5511970000004"
    await client.message(wb.text("boa noite", from_=davi), name="Davi")
    assert await client.wait_replies(davi, 1) == [AWAY]  # closed now: away beats the greeting

    [inbound] = await wait_for(
        lambda: [e for e in crm.of("whatsapp:message") if e["contact"]["phone_number"].endswith(davi)],
        what="whatsapp:message",
    )
    answer = await client.http.post(
        f"/api/conversations/{inbound['conversationId']}/messages",
        json={"type": "text", "body": "Oi Davi, aqui é a Eva. Como posso ajudar?"},
        headers={"Authorization": f"Bearer {token()}"},
    )
    assert answer.status_code == 202, answer.text
    assert await client.wait_replies(davi, 2) == [AWAY, "Oi Davi, aqui é a Eva. Como posso ajudar?"]
    before = await client.metrics()

    await client.message(wb.text("qual o preço?", from_=davi))
    await client.barrier()

    assert await client.replies_to(davi) == [AWAY, "Oi Davi, aqui é a Eva. Como posso ajudar?"]
    after = await client.metrics()
    handoffs = Client.value(after, "zaphub_autoreply_skipped_total", reason="handoff")
    assert handoffs == Client.value(before, "zaphub_autoreply_skipped_total", reason="handoff") + 1
    agent_sent = [
        e for e in crm.of("whatsapp:message_sent") if e["conversationId"] == inbound["conversationId"]
    ]
    assert [e.get("automated", False) for e in agent_sent] == [True, False]


# --- (d) -------------------------------------------------------------------------------------------


async def test_statuses_reactions_system_and_unsupported_are_never_answered(client: Client) -> None:
    # Closed now: any message that qualified would get at least the away reply.
    senders = [f"55119710000{i:02d}" for i in range(5)]
    before = await client.metrics()

    await client.message(wb.reaction(wb.new_wamid(), "❤️", from_=senders[0]))
    await client.message(wb.system(from_=senders[1]))
    await client.message(wb.unsupported(from_=senders[2]))
    await client.message(wb.request_welcome(from_=senders[3]))
    await client.message(wb.message("poll", {"question": "Pizza?"}, from_=senders[4]))
    await client.webhook(wb.envelope(statuses=[wb.status(wb.new_wamid(), "read")]))
    await client.barrier()

    sent_to = {s["to"].lstrip("+") for s in await client.sends()}
    assert sent_to.isdisjoint(senders)
    after = await client.metrics()
    skipped = Client.value(after, "zaphub_autoreply_skipped_total", reason="type")
    # The reaction is no message of its own (it waits for the message it names): four skipped.
    assert skipped == Client.value(before, "zaphub_autoreply_skipped_total", reason="type") + 4


# --- (e) a bot from an installed package -----------------------------------------------------------

DOCS = REPO / "docs" / "plugins.md"
_EXAMPLE_FILE = re.compile(r"<!-- example: (?P<path>[^ ]+) -->\n```[a-z]*\n(?P<body>.*?)\n```", re.DOTALL)


def write_docs_example(root: Path) -> Path:
    """Write the example plugin of docs/plugins.md, file by file, exactly as documented."""
    found = _EXAMPLE_FILE.findall(DOCS.read_text(encoding="utf-8"))
    assert found, "docs/plugins.md has no <!-- example: … --> files"
    for path, body in found:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body + "\n", encoding="utf-8")
    return root / found[0][0].split("/")[0]


def build_wheel(project: Path, out: Path) -> Path:
    """A pure-Python wheel of ``project`` from its pyproject (name, version, entry points).

    Built by hand because this environment's setuptools cannot build wheels offline (no
    ``wheel`` package); pip then installs it like any other wheel.
    """
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    name, version = meta["name"], meta["version"]
    dist = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    files: dict[str, bytes] = {}
    for init in project.glob("*/__init__.py"):
        for source in init.parent.rglob("*.py"):
            files[source.relative_to(project).as_posix()] = source.read_bytes()
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in items.items()) + "\n"
        for group, items in meta.get("entry-points", {}).items()
    )
    files[f"{dist}.dist-info/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    )
    files[f"{dist}.dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: zaphub-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist}.dist-info/entry_points.txt"] = entry_points.encode()
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def zaphub_cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The ``zaphub`` console script, as a user types it (``pythonpath``: extra plugin directory)."""
    exe = console_script()
    command = [exe, *args] if exe else [sys.executable, "-m", "core.cli", *args]
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(pythonpath)])
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=REPO, check=False)


@pytest.fixture(scope="module")
def orders_bot_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs' example bot, installed with pip into a directory of its own (the system stays clean)."""
    tmp = tmp_path_factory.mktemp("orders-bot")
    project = write_docs_example(tmp / "src")
    wheel = build_wheel(project, tmp)
    site = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return site


async def test_an_installed_bot_plugin_answers_and_defers_to_the_rules(
    tmp_path: Path, orders_bot_site: Path
) -> None:
    bot = {"orders": {"1234": "saiu para entrega", "5678": "está sendo separado"}}
    config = write_config(tmp_path / "config.yaml", integrator_config(tmp_path, orders_bot=bot))
    listed = zaphub_cli("plugins", "--config", str(config), pythonpath=orders_bot_site)
    checked = zaphub_cli("check", "--config", str(config), pythonpath=orders_bot_site)

    assert "orders_bot (zaphub-orders-bot 0.1.0) [enabled]" in listed.stdout, listed.stdout + listed.stderr
    assert checked.returncode == 0, checked.stderr
    assert "orders_bot: config_schema, reply_for_message" in checked.stdout
    with zaphub_process(config, env={"PYTHONPATH": str(orders_bot_site)}) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=10, headers=SANDBOX_HEADERS) as http:
            client = Client(proc.url, http)
            joao, maria, lia = "5511972000001", "5511972000002", "5511972000003"
            await client.message(wb.text("Cadê o pedido 1234?", from_=joao), name="João Silva")
            await client.message(wb.text("pedido nº 9999 não chegou", from_=maria), name="Maria")
            await client.message(wb.text("qual o preço do frete?", from_=lia), name="Lia")

            assert await client.wait_replies(joao, 1) == ["João, o pedido 1234 saiu para entrega."]
            assert await client.wait_replies(maria, 1) == [
                "Não encontrei o pedido 9999. Pode conferir o número?"
            ]
            assert await client.wait_replies(lia, 1) == [PRICE]  # the bot deferred to the rules
            metrics = await client.metrics()
            assert Client.value(metrics, "zaphub_autoreply_replies_total", reason="bot") == 2


# --- (f) ``zaphub check`` names the broken key -----------------------------------------------------


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        pytest.param(
            {"rules": [{"keywords": ["oi"], "reply": "Olá"}, {"pattern": "(?i)hor[aá", "reply": "9h"}]},
            ["plugins.autoreply.rules[1]", "not a valid regular expression"],
            id="bad-regex",
        ),
        pytest.param(
            {
                "away": {
                    "timezone": "America/Sao_Pablo",
                    "hours": {"mon-fri": "09:00-18:00"},
                    "reply": "Fechado",
                }
            },
            ["plugins.autoreply.away", "'America/Sao_Pablo' is not a known IANA time zone"],
            id="unknown-timezone",
        ),
        pytest.param(
            {"away": {"timezone": "UTC", "hours": {"mon-fri": "9-18"}, "reply": "Fechado"}},
            ["plugins.autoreply.away", "hours.mon-fri: '9-18' is not an interval", "HH:MM-HH:MM"],
            id="malformed-hours",
        ),
    ],
)
def test_zaphub_check_names_the_broken_autoreply_key(
    tmp_path: Path, broken: dict[str, Any], expected: list[str]
) -> None:
    config = integrator_config(tmp_path)
    config["plugins"]["autoreply"] = broken
    path = write_config(tmp_path / "config.yaml", config)

    result = zaphub_cli("check", "--config", str(path))

    assert result.returncode != 0
    for part in expected:
        assert part in result.stderr, result.stderr


def test_zaphub_check_accepts_the_integrator_config(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", integrator_config(tmp_path))

    result = zaphub_cli("check", "--config", str(path))

    assert result.returncode == 0, result.stderr
    assert "autoreply: config_schema, on_message_received, on_shutdown, on_startup" in result.stdout
