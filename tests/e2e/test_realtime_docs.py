"""The complete clients of docs/events.md, run as written against a real zaphub.

A reader copies them into a file and runs them; so does this test. The JavaScript one needs Node
and ``npm ci`` in tests/e2e/js (skipped otherwise, failed in CI).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugins.crm_realtime import REALTIME
from tests.helpers import REPO, wait_for
from tests.plugins.crm_realtime.harness import JS_DIR, Zaphub, require_node, zaphub

DOC = REPO / "docs" / "events.md"


def code_block(heading: str, language: str, doc: Path = DOC) -> str:
    text = doc.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no {language} block after {heading!r} in {doc}"
    return match.group(1)


LOOPS = [(DOC, "## Try it in two minutes"), (REPO / "README.md", "## Try the whole loop in two minutes")]


def loop_client_file(doc: Path, heading: str) -> str:
    """The file the two-minute loop runs with ``node`` (the complete JavaScript client)."""
    commands = [line.split("#")[0].strip() for line in code_block(heading, "sh", doc).splitlines()]
    [node] = [c for c in commands if c.startswith("node ")]
    return Path(node.split()[1]).name


@pytest.mark.parametrize(("doc", "heading"), LOOPS, ids=["events.md", "README.md"])
def test_the_two_minute_loop_starts_the_client_before_the_customer_writes(doc: Path, heading: str) -> None:
    # A client started later than the first message never joins that conversation (its join
    # comes before the conversation exists, or not at all) and shows no status.
    commands = [line.split("#")[0].strip() for line in code_block(heading, "sh", doc).splitlines()]
    client = next((i for i, c in enumerate(commands) if c.startswith("node ")), None)
    customer = next(i for i, c in enumerate(commands) if c.startswith("zaphub simulate message"))
    assert client is not None, f"the loop of {doc.name} starts no client"
    assert client < customer, f"the loop of {doc.name} starts the client after the customer wrote"
    assert "ZAPHUB_TOKEN=$(zaphub token" in "\n".join(commands)  # the variable the client reads


def test_the_python_install_line_installs_aiohttp() -> None:
    from importlib.metadata import metadata, requires

    from packaging.requirements import Requirement

    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## A complete client in Python") :]
    match = re.search(r"`pip install ([^`]+)`", section)
    assert match is not None
    [socketio] = [Requirement(r.strip('"')) for r in match.group(1).split() if "socketio" in r]
    # pip matches an extra by the name the package publishes; an unknown one is only a warning.
    published = metadata(socketio.name).get_all("Provides-Extra") or []
    assert socketio.extras <= set(published), f"{socketio.extras} not among {published}"
    brought = [r for r in requires(socketio.name) or [] for e in socketio.extras if f'extra == "{e}"' in r]
    assert any(r.startswith("aiohttp") for r in brought), brought


class Lines:
    """A subprocess whose stdout lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip())
            self._changed.set()
        self._changed.set()

    async def wait(self, pattern: str, within: float = 15.0) -> str:
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(within):
                while True:
                    for line in self.lines:
                        if regex.search(line):
                            return line
                    if self._reader.done():
                        raise AssertionError(f"exited before {pattern!r}: {self.lines}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no line matching {pattern!r} within {within}s: {self.lines}") from None

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.wait_for(self._reader, 5)


@pytest.fixture
async def z(tmp_path: Path) -> AsyncIterator[Zaphub]:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}") as running:
        yield running


async def exercise(z: Zaphub, client: Lines) -> None:
    """A customer writes, an agent answers over REST: the client shows all of it."""
    await client.wait(r"^connected$")
    await z.inbound("Olá, vim pela documentação", name="Maria Souza")
    await client.wait(r"^Maria Souza wrote:$")
    line = await client.wait(r"^\[\d+\] contact: Olá, vim pela documentação$")
    conversation_id = int(line[1 : line.index("]")])
    # The client joins the conversation by itself; answer once it is in the room.
    rooms = z.host.stash[REALTIME].sio.manager.rooms
    await wait_for(lambda: rooms.get("/crm", {}).get(f"conversation:{conversation_id}"), what="the join")
    accepted = await z.send(conversation_id, {"type": "text", "body": "Bem-vinda!"})
    await client.wait(rf"^\[{conversation_id}\] user: Bem-vinda!$")
    await client.wait(rf"^message {accepted['messageId']}: read$")


class Network:
    """A TCP proxy in front of zaphub that the test can cut, as a real network failure would.

    While down, open connections are reset and new ones are closed at once, so clients keep
    retrying; back up, they reconnect by themselves.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.url = ""
        self._pipes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._pipes -= {writer, up_writer}

    def cut(self) -> None:
        self.up = False
        for writer in list(self._pipes):
            writer.transport.abort()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def network(z: Zaphub) -> AsyncIterator[Network]:
    net = Network(int(z.url.rsplit(":", 1)[1]))
    await net.start()
    try:
        yield net
    finally:
        await net.stop()


async def resume_after_a_disconnect(z: Zaphub, client: Lines, network: Network) -> None:
    """The network fails while the customer writes: the client resumes with what it missed, once."""
    disconnects = sum(line.startswith("disconnected:") for line in client.lines)
    network.cut()
    await wait_for(
        lambda: sum(line.startswith("disconnected:") for line in client.lines) > disconnects,
        what="the client to notice",
    )
    await z.inbound("Enquanto você estava fora", name="Maria Souza")
    await z.inbound("Ainda aí?", name="Maria Souza")
    await z.settle()
    network.up = True
    await client.wait(r"^connected, resuming after event \d+$", within=30)
    await client.wait(r"^\[\d+\] contact: Ainda aí\?$")
    await z.inbound("De volta", name="Maria Souza")
    await client.wait(r"^\[\d+\] contact: De volta$")
    shown = [line for line in client.lines if "] contact: " in line]
    assert shown[-3:] == [
        "[1] contact: Enquanto você estava fora",
        "[1] contact: Ainda aí?",
        "[1] contact: De volta",
    ], client.lines
    assert len(shown) == len(set(shown)), f"a message shown twice: {client.lines}"
    metrics = (await z.http.get("/metrics")).text
    # The two missed ones came from the replay, not from a REST resync.
    assert 'zaphub_crm_events_replayed_total{event="whatsapp:message"} 2.0' in metrics
    assert not any(line.startswith("resync required") for line in client.lines)


async def run_the_client(
    z: Zaphub, network: Network, argv: list[str], *, sub: str, cwd: Path | None = None
) -> None:
    """Run a docs client as a reader does (URL and token from the environment) through the loop."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={**os.environ, "ZAPHUB_URL": network.url, "ZAPHUB_TOKEN": z.token(sub=sub)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    client = Lines(proc)
    try:
        await exercise(z, client)
        await resume_after_a_disconnect(z, client, network)
    finally:
        await client.stop()


async def test_the_python_client_of_the_docs(z: Zaphub, network: Network, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(code_block("## A complete client in Python", "python"), encoding="utf-8")
    await run_the_client(z, network, [sys.executable, "-u", str(script)], sub="docs-py")


@pytest.mark.js
async def test_the_javascript_client_of_the_docs(z: Zaphub, network: Network, tmp_path: Path) -> None:
    node = require_node()
    # As a reader does: `npm install socket.io-client@4` in a directory (no "type": "module"),
    # the client saved under the name the two-minute loops run.
    names = {loop_client_file(doc, heading) for doc, heading in LOOPS}
    assert len(names) == 1, f"the loops run different files: {names}"
    (tmp_path / "node_modules").symlink_to(JS_DIR / "node_modules", target_is_directory=True)
    script = tmp_path / names.pop()
    script.write_text(code_block("## A complete client in JavaScript", "javascript"), encoding="utf-8")
    # Node 20 before 20.19 runs a `.js` file without "type": "module" as CommonJS, where the
    # client's `import` is a SyntaxError; later releases guess, with a warning. Run it the strict way.
    strict = "--no-experimental-detect-module"
    probe = await asyncio.create_subprocess_exec(node, strict, "-e", "", stderr=asyncio.subprocess.DEVNULL)
    flags = [strict] if await probe.wait() == 0 else []
    await run_the_client(z, network, [node, *flags, str(script)], sub="docs-js", cwd=tmp_path)
