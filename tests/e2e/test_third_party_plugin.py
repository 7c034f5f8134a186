"""A third-party plugin, as someone outside this repo would ship it: its own package, installed.

The package is built in a temp dir, installed by pip into a ``--target`` dir of its own, and that
dir is put on ``PYTHONPATH`` of ``zaphub`` subprocesses, so nothing touches site-packages. It
shows the plugin discovered through the ``zaphub.plugins`` entry point, its section validated
against the schema it declares, its route served, and its CLI command registered.

Why the package carries a tiny PEP 517 backend instead of using setuptools: pip cannot build with
``--no-build-isolation`` here, because the setuptools installed (65.x, the one Python 3.11 venvs
ship) needs the separate ``wheel`` package for ``bdist_wheel``, and build isolation would download
setuptools from PyPI during the test. The in-tree backend (``backend-path``) reads the same
``[project]`` table, entry points included, and writes a standard wheel, which pip installs as
it would any other.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.plugins import installed_plugins
from tests.conftest import IN_CI
from tests.helpers import ZaphubProcess, console_script, write_config

ZAPHUB = console_script()
# In CI a missing console script is a broken install: the tests fail (zaphub() says why).
pytestmark = pytest.mark.skipif(
    ZAPHUB is None and not IN_CI, reason="the zaphub console script is not installed (pip install -e .)"
)

GREETING = "Olá do plugin de terceiros!"

PYPROJECT = """\
[build-system]
requires = []
build-backend = "hello_backend"
backend-path = ["."]

[project]
name = "zaphub-hello"
version = "0.1.0"
description = "A throwaway third-party zaphub plugin"

[project.entry-points."zaphub.plugins"]
hello = "zaphub_hello"
"""

PLUGIN = '''\
"""A third-party zaphub plugin: a greeting route, a slow route, and a CLI command."""

import asyncio
import logging

import msgspec
from litestar import get

from core import hookimpl
from core.cli_types import Command

log = logging.getLogger("zaphub_hello")


class HelloSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    greeting: str
    slow_seconds: float = 1.0


@hookimpl
def config_schema():
    return HelloSettings


@hookimpl
def register_routes(settings):
    @get("/hello", sync_to_thread=False)
    def hello() -> dict[str, str]:
        return {"greeting": settings.greeting}

    @get("/hello/slow")
    async def slow() -> dict[str, bool]:
        log.info("slow request started")
        await asyncio.sleep(settings.slow_seconds)  # a request still running when SIGTERM comes
        return {"done": True}

    return [hello, slow]


def _run(args):
    from core.cli import load_plugin_settings

    _, settings = load_plugin_settings(args.config, "hello")
    print(settings.greeting)
    return 0


@hookimpl
def register_commands():
    return [Command("hello", "print the configured greeting", lambda parser: None, _run)]
'''

BACKEND = '''\
"""The smallest PEP 517 backend: one module, metadata and entry points from pyproject.toml."""

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    dist = project["name"].replace("-", "_")
    info = f"{dist}-{project['version']}.dist-info"
    entry_points = "".join(
        f"[{group}]\\n" + "".join(f"{k} = {v}\\n" for k, v in eps.items())
        for group, eps in project.get("entry-points", {}).items()
    )
    metadata = f"Metadata-Version: 2.1\\nName: {project['name']}\\nVersion: {project['version']}\\n"
    wheel_info = "Wheel-Version: 1.0\\nGenerator: hello\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    files = {
        "zaphub_hello.py": Path("zaphub_hello.py").read_bytes(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": wheel_info.encode(),
        f"{info}/entry_points.txt": entry_points.encode(),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\\n".join([*record, f"{info}/RECORD,,"]) + "\\n").encode()
    wheel = f"{dist}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package, built and installed by pip into a directory of its own."""
    root = tmp_path_factory.mktemp("third_party")
    package = root / "zaphub-hello"
    package.mkdir()
    (package / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (package / "zaphub_hello.py").write_text(PLUGIN, encoding="utf-8")
    (package / "hello_backend.py").write_text(BACKEND, encoding="utf-8")
    target = root / "site"
    offline = [
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--no-cache-dir",
        "--disable-pip-version-check",
    ]
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *offline, "--target", str(target), str(package)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (target / "zaphub_hello-0.1.0.dist-info" / "entry_points.txt").exists()
    return target


def env_with(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZAPHUB_", "WHATSAPP_", "CRM_"))}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))}


def zaphub(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ZAPHUB is not None, "the zaphub console script is not installed (pip install -e .)"
    return subprocess.run(
        [ZAPHUB, *args], cwd=cwd, env=env_with(site), capture_output=True, text=True, timeout=60, check=False
    )


def hello_config(tmp_path: Path, section: dict[str, object]) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {"storage": {"url": f"sqlite:///{tmp_path / 'zaphub.db'}"}, "plugins": {"hello": section}},
    )


def test_the_install_left_no_trace_outside_its_directory(site: Path) -> None:
    assert importlib.util.find_spec("zaphub_hello") is None  # not importable by this interpreter
    assert "hello" not in installed_plugins()


def test_zaphub_plugins_discovers_it_through_its_entry_point(site: Path, tmp_path: Path) -> None:
    config = hello_config(tmp_path, {"greeting": GREETING})
    result = zaphub(site, "plugins", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    index = lines.index("hello (zaphub-hello 0.1.0) [enabled]")
    assert lines[index + 1] == "  hooks: config_schema, register_commands, register_routes"
    assert any(line.startswith("whatsapp (") for line in lines)  # the built-ins are still there


def test_zaphub_check_validates_its_section_against_its_schema(site: Path, tmp_path: Path) -> None:
    config = hello_config(tmp_path, {"greting": GREETING})
    result = zaphub(site, "check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "plugins.hello.greting: unknown key (did you mean 'greeting'?)" in result.stderr


def test_its_command_reads_its_validated_settings(site: Path, tmp_path: Path) -> None:
    config = hello_config(tmp_path, {"greeting": GREETING})
    result = zaphub(site, "hello", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == GREETING


def wait_for_log(server: ZaphubProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{server.log()}"
        time.sleep(0.02)


def test_it_serves_its_route_and_a_sigterm_lets_the_request_in_flight_finish(
    site: Path, tmp_path: Path
) -> None:
    config = hello_config(tmp_path, {"greeting": GREETING, "slow_seconds": 1.0})
    server = ZaphubProcess(config, env={"PYTHONPATH": str(site)}).start()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        try:
            server.wait_ready()
            hello = httpx.get(f"{server.url}/hello", timeout=5)
            assert (hello.status_code, hello.json()) == (200, {"greeting": GREETING})
            in_flight = pool.submit(httpx.get, f"{server.url}/hello/slow", timeout=30)
            wait_for_log(server, "slow request started")
        finally:
            code = server.stop()  # SIGTERM while /hello/slow is still sleeping
        slow = in_flight.result(timeout=30)
    assert (slow.status_code, slow.json()) == (200, {"done": True})
    assert code == 0, server.log()
    assert "Application shutdown complete" in server.log()
