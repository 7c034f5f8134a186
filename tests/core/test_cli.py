"""The ``zaphub`` command as a user runs it: a subprocess of the installed console script."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.helpers import REPO, console_script, write_config

ZAPHUB = console_script()
# In CI a missing console script is a broken install: the tests fail (zaphub() says why).
pytestmark = pytest.mark.skipif(
    ZAPHUB is None and not IN_CI, reason="the zaphub console script is not installed (pip install -e .)"
)


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any zaphub/Meta/CRM variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZAPHUB_", "WHATSAPP_", "CRM_"))}
    return {**env, **extra}


def zaphub(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ZAPHUB is not None, "the zaphub console script is not installed (pip install -e .)"
    return subprocess.run(
        [ZAPHUB, *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config_file(tmp_path: Path, plugins: dict[str, Any], **sections: Any) -> Path:
    data = {"storage": {"url": f"sqlite:///{tmp_path / 'zaphub.db'}"}, **sections, "plugins": plugins}
    return write_config(tmp_path / "config.yaml", data)


def test_help_tells_a_newcomer_where_to_start(tmp_path: Path) -> None:
    result = zaphub("--help", cwd=tmp_path)
    assert result.returncode == 0
    for text in ("WhatsApp Cloud API", "run", "check", "plugins", "zaphub run", "config.yaml"):
        assert text in result.stdout
    run = zaphub("run", "--help", cwd=tmp_path)
    assert run.returncode == 0
    for text in ("--config PATH", "ZAPHUB_CONFIG", "--port", "--host", "0 = any free"):
        assert text in run.stdout
    check = zaphub("check", "--help", cwd=tmp_path)
    assert "exit 2" in check.stdout


def test_check_accepts_the_bundled_config(tmp_path: Path) -> None:
    result = zaphub("check", cwd=REPO, env=clean_env(ZAPHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'z.db'}"))
    assert result.returncode == 0, result.stderr
    assert "config OK: config.yaml" in result.stdout
    for name in ("whatsapp", "crm_realtime", "autoreply"):
        assert f"  {name}: " in result.stdout
    assert "redis: off (single process)" in result.stdout
    assert "development mode (not for production):\n  plugins.whatsapp.sandbox: on:" in result.stdout
    assert "warning: plugins.whatsapp.app_secret: is the published development default" in result.stdout
    assert not (tmp_path / "z.db").exists()  # check validates; it does not create a database


PRODUCTION = {
    "WHATSAPP_SANDBOX": "false",
    "WHATSAPP_ACCESS_TOKEN": "EAAG-system-user-token",
    "WHATSAPP_APP_SECRET": "a" * 32,
    "WHATSAPP_VERIFY_TOKEN": "verify-token-from-the-dashboard",
    "CRM_JWT_SECRET": "b" * 48,
}


def test_check_and_run_refuse_development_secrets_with_the_sandbox_off(tmp_path: Path) -> None:
    env = clean_env(WHATSAPP_SANDBOX="false", ZAPHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'z.db'}")
    for command in (["check"], ["run", "--port", "0"]):
        result = zaphub(*command, cwd=REPO, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.splitlines()
        assert lines[0] == (
            "error: config.yaml has 4 problems (no plugin runs a sandbox, so this is production: "
            "development secrets are refused):"
        )
        expected = {
            "plugins.whatsapp.app_secret": "set WHATSAPP_APP_SECRET",
            "plugins.whatsapp.verify_token": "set WHATSAPP_VERIFY_TOKEN",
            "plugins.whatsapp.access_token": "set WHATSAPP_ACCESS_TOKEN",
            "plugins.crm_realtime.jwt_secret": "set CRM_JWT_SECRET",
        }
        for path, fix in expected.items():
            assert any(line.startswith(f"  {path}: ") and fix in line for line in lines), result.stderr
        assert "listening" not in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "z.db").exists()


def test_a_short_jwt_secret_and_an_empty_access_token_are_refused_in_production(tmp_path: Path) -> None:
    env = clean_env(**{**PRODUCTION, "CRM_JWT_SECRET": "only-20-bytes-long!!", "WHATSAPP_ACCESS_TOKEN": ""})
    result = zaphub("check", cwd=REPO, env=env)
    assert result.returncode == 2
    assert "config.yaml has 2 problems" in result.stderr
    assert "plugins.crm_realtime.jwt_secret: is shorter than 32 bytes" in result.stderr
    assert "plugins.whatsapp.access_token: is empty" in result.stderr
    production = zaphub("check", cwd=REPO, env=clean_env(**PRODUCTION))
    assert production.returncode == 0, production.stderr
    assert "warning" not in production.stdout
    assert "development mode" not in production.stdout


def test_check_refuses_a_storage_url_run_would_refuse(tmp_path: Path) -> None:
    path = config_file(tmp_path, {})
    write_config(path, {"storage": {"url": "mysql://zaphub:hunter2@db/zaphub"}})
    for command in (["check"], ["run", "--port", "0"]):
        result = zaphub(*command, "--config", str(path), cwd=tmp_path)
        assert result.returncode == 2, result.stdout
        assert "storage.url: unsupported database 'mysql': use sqlite:/// or postgresql://" in result.stderr
        assert "hunter2" not in result.stderr


def test_check_names_a_misspelled_key(tmp_path: Path) -> None:
    path = config_file(tmp_path, {"whatsapp": {"verify_tokn": "x", "app_secret": "s3cret"}})
    result = zaphub("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "plugins.whatsapp.verify_tokn: unknown key (did you mean 'verify_token'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_lists_the_installed_plugins_when_one_is_not_installed(tmp_path: Path) -> None:
    path = config_file(tmp_path, {"whatsap": {}})
    result = zaphub("check", cwd=tmp_path, env=clean_env(ZAPHUB_CONFIG=str(path)))
    assert result.returncode == 2
    assert "plugins.whatsap: no installed plugin is named 'whatsap'" in result.stderr
    assert "installed plugins: " in result.stderr
    for name in ("autoreply", "crm_realtime", "whatsapp"):
        assert name in result.stderr


def test_check_says_which_variable_to_set_for_an_empty_app_secret(tmp_path: Path) -> None:
    path = config_file(
        tmp_path, {"whatsapp": {"verify_token": "v", "app_secret": "${WHATSAPP_APP_SECRET:-}"}}
    )
    result = zaphub("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "plugins.whatsapp" in result.stderr
    assert "set WHATSAPP_APP_SECRET" in result.stderr
    assert "insecure_skip_signature: true" in result.stderr


def test_check_reports_yaml_errors_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  port: 3000\n plugins: {}\n", encoding="utf-8")
    result = zaphub("check", cwd=tmp_path)  # ./config.yaml is the default
    assert result.returncode == 2
    assert "not valid YAML at line 3" in result.stderr


def test_check_never_prints_a_database_password(tmp_path: Path) -> None:
    path = config_file(tmp_path, {})
    write_config(path, {"storage": {"url": "postgresql://zaphub:hunter2@db.internal/zaphub"}})
    result = zaphub("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "storage: postgresql://zaphub:***@db.internal/zaphub" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    assert "none (add a section under plugins: to enable one)" in result.stdout


def test_check_never_prints_passwords_holding_a_slash_a_space_or_a_query_parameter(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config.yaml",
        {
            "storage": {"url": "postgresql://zaphub:pa/ss w0rd@db.internal:5432/zaphub"},
            "redis": {"url": "redis://:r3/dis pw@cache:6379/0?password=q-s3cret"},
        },
    )
    result = zaphub("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "storage: postgresql://zaphub:***@db.internal:5432/zaphub" in result.stdout
    assert "redis: redis://:***@cache:6379/0?password=***" in result.stdout
    for secret in ("pa/ss", "w0rd", "r3/dis", "q-s3cret"):
        assert secret not in result.stdout + result.stderr


def test_token_outside_the_project_directory_says_no_config_file_was_found(tmp_path: Path) -> None:
    result = zaphub("token", "--sub", "ana", cwd=tmp_path)  # an empty directory, nothing set
    assert result.returncode == 2
    assert result.stderr.startswith("error: no config file found (no --config, $ZAPHUB_CONFIG is not set")
    assert f"no config.yaml in {tmp_path}" in result.stderr
    assert "pass --config PATH" in result.stderr
    assert "CRM_JWT_SECRET" not in result.stderr  # not the setting: the file is what is missing
    config = write_config(
        tmp_path / "elsewhere.yaml", {"plugins": {"crm_realtime": {"jwt_secret": "j" * 40}}}
    )
    token = zaphub("token", "--sub", "ana", "--config", str(config), cwd=tmp_path)
    assert token.returncode == 0, token.stderr
    assert token.stdout.count(".") == 2  # a JWT


def test_plugins_lists_the_installed_plugins_and_their_hooks(tmp_path: Path) -> None:
    path = config_file(tmp_path, {"whatsapp": {"verify_token": "v", "app_secret": "s"}})
    result = zaphub("plugins", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("whatsapp", "crm_realtime", "autoreply"):
        assert any(line.startswith(f"{name} (zaphub ") for line in lines), result.stdout
    assert any(line.startswith("whatsapp (") and line.endswith("[enabled]") for line in lines)
    assert any(line.startswith("autoreply (") and line.endswith("[installed]") for line in lines)
    whatsapp_hooks = lines[lines.index(next(line for line in lines if line.startswith("whatsapp ("))) + 1]
    assert "register_routes" in whatsapp_hooks
    assert "config_schema" in whatsapp_hooks


def test_run_on_a_busy_port_says_so_and_how_to_fix_it(tmp_path: Path) -> None:
    path = config_file(tmp_path, {})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = zaphub("run", "--config", str(path), "--port", str(port), cwd=tmp_path)
    assert result.returncode == 2
    assert f"server.port: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "stop what uses it, or pick another port with --port or ZAPHUB_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_shows_the_help(tmp_path: Path) -> None:
    result = zaphub(cwd=tmp_path)
    assert result.returncode == 1
    assert "usage: zaphub" in result.stdout


def install_fake_plugin(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    """A plugin module and its dist-info with a ``zaphub.plugins`` entry point; the env that finds it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{name}.py").write_text(source, encoding="utf-8")
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[zaphub.plugins]\n{name} = {name}\n", encoding="utf-8")
    return clean_env(PYTHONPATH=str(site))


def test_a_plugin_with_a_hook_wrapper_is_refused_by_check_and_listed_as_broken(tmp_path: Path) -> None:
    env = install_fake_plugin(
        tmp_path,
        "wrapping_bot",
        "from core import hookimpl\n\n"
        "@hookimpl(wrapper=True)\n"
        "def reply_for_message():\n"
        "    return (yield)\n",
    )
    path = config_file(tmp_path, {"wrapping_bot": {}})
    checked = zaphub("check", "--config", str(path), cwd=tmp_path, env=env)
    assert checked.returncode != 0
    assert (
        "plugin 'wrapping_bot': hook reply_for_message: @hookimpl(wrapper=True) is not supported"
        in checked.stderr
    )
    listed = zaphub("plugins", "--config", str(path), cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "broken: wrapping_bot: plugin 'wrapping_bot': hook reply_for_message" in listed.stdout


def test_hook_register_commands(tmp_path: Path) -> None:
    """An installed plugin's command runs as ``zaphub NAME`` (enabled or not), listed in ``--help``."""
    env = install_fake_plugin(
        tmp_path,
        "greeter",
        "from core import hookimpl\n"
        "from core.cli_types import Command\n\n"
        "def configure(parser):\n"
        "    parser.add_argument('--name', required=True)\n\n"
        "def run(args):\n"
        "    print(f'Olá, {args.name}! (config: {args.config})')\n"
        "    return 3\n\n"
        "@hookimpl\n"
        "def register_commands():\n"
        "    return [Command(name='greet', help='say hello to someone', configure=configure, run=run)]\n",
    )
    helped = zaphub("--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "greet" in helped.stdout
    assert "say hello to someone" in helped.stdout
    greeted = zaphub("greet", "--name", "Ana", "--config", "x.yaml", cwd=tmp_path, env=env)
    assert greeted.returncode == 3  # the command's exit code
    assert greeted.stdout.strip() == "Olá, Ana! (config: x.yaml)"
    missing = zaphub("greet", cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert "--name" in missing.stderr
