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


async def test_the_python_client_of_the_docs(z: Zaphub, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(code_block("## A complete client in Python", "python"), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        str(script),
        env={**os.environ, "ZAPHUB_URL": z.url, "ZAPHUB_TOKEN": z.token(sub="docs-py")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    client = Lines(proc)
    try:
        await exercise(z, client)
    finally:
        await client.stop()


@pytest.mark.js
async def test_the_javascript_client_of_the_docs(z: Zaphub, tmp_path: Path) -> None:
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
    proc = await asyncio.create_subprocess_exec(
        node,
        *flags,
        str(script),
        cwd=tmp_path,
        env={**os.environ, "ZAPHUB_URL": z.url, "ZAPHUB_TOKEN": z.token(sub="docs-js")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    client = Lines(proc)
    try:
        await exercise(z, client)
    finally:
        await client.stop()
