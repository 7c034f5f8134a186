"""The real server: ``zaphub run`` with the bundled config.yaml, as a newcomer starts it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx

from tests.helpers import REPO, ZaphubProcess, write_config


def ready_then_stopped(server: ZaphubProcess) -> str:
    """Start ``server``, wait until it is ready, stop it; its log (it must have exited 0)."""
    server.start()
    try:
        server.wait_ready()
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    return log


def test_bundled_config_serves_ops_endpoints_and_stops_gracefully(tmp_path: Path) -> None:
    config = shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    server = ZaphubProcess(Path(config))
    # Nothing set, as on a fresh machine (the database lands next to the copied config).
    server.env = {k: v for k, v in os.environ.items() if not k.startswith(("ZAPHUB_", "WHATSAPP_", "CRM_"))}
    server.start()
    try:
        server.wait_ready()
        health = httpx.get(f"{server.url}/health", timeout=5)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = httpx.get(f"{server.url}/ready", timeout=5).json()
        assert ready["status"] == "ready"
        assert any(w.startswith("plugins.whatsapp.sandbox: on: ") for w in ready["warnings"])
        assert ready["checks"]["storage"] == "ok"
        assert "redis" not in ready["checks"]  # not configured: fan-out stays in this process
        metrics = httpx.get(f"{server.url}/metrics", timeout=5)
        assert "zaphub_hook_errors_total" in metrics.text
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    assert f"listening on http://127.0.0.1:{server.port}" in log
    assert "USING DEVELOPMENT DEFAULTS for plugins.whatsapp.verify_token, plugins.whatsapp.app_secret" in log
    assert "SANDBOX MODE: sends go to the built-in Meta emulator" in log
    assert "its test controls are off (set WHATSAPP_SANDBOX_TOKEN to use them)" in log
    assert "Application shutdown complete" in log
    assert "Traceback" not in log
    assert (tmp_path / "zaphub.db").exists()


def test_production_secrets_silence_the_development_warning(tmp_path: Path) -> None:
    config = shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    secrets = {
        "WHATSAPP_VERIFY_TOKEN": "verify-token-from-the-dashboard",
        "WHATSAPP_APP_SECRET": "a" * 32,
        "CRM_JWT_SECRET": "b" * 48,
        "ZAPHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
    }
    log = ready_then_stopped(ZaphubProcess(Path(config), env=secrets))
    assert "DEVELOPMENT DEFAULTS" not in log
    assert "a" * 32 not in log
    assert (tmp_path / "prod.db").exists()


def test_startup_and_access_logs_never_show_secrets_from_urls(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    # The local PostgreSQL trusts every connection, so a password given as ?password= is ignored
    # by the server but still travels through the config into the startup log.
    config = write_config(
        tmp_path / "config.yaml",
        {
            "storage": {"url": f"{fresh_postgres_url}?password=hunter2-in-query"},
            "logging": {"access_log": True},
            "plugins": {"crm_realtime": {"jwt_secret": "j" * 40}},
        },
    )
    server = ZaphubProcess(config)
    server.start()
    try:
        server.wait_ready()
        polling = httpx.get(
            f"{server.url}/socket.io/", params={"EIO": "4", "transport": "polling", "token": "tok-in-query"}
        )
        assert polling.status_code == 200
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    assert "password=***" in log  # the startup log names the database, without the password
    assert '?EIO=4&transport=polling&token=*** HTTP/1.1" 200' in log  # the access log line
    assert "hunter2" not in log
    assert "tok-in-query" not in log


def test_zaphub_run_keeps_full_garbage_collections_rare_and_small(tmp_path: Path) -> None:
    # gc.freeze() once the app serves: a full collection then skips what startup allocated
    # (docs/benchmarks.md, "Runtime"); the debug log says how much that was.
    config = write_config(
        tmp_path / "config.yaml",
        {"storage": {"url": f"sqlite:///{tmp_path / 'z.db'}"}, "logging": {"level": "debug"}, "plugins": {}},
    )
    log = ready_then_stopped(ZaphubProcess(config))
    frozen = re.search(r"garbage collector: (\d+) objects of the started app frozen; thresholds (.*)", log)
    assert frozen is not None, log
    assert int(frozen[1]) > 10_000  # the imported libraries and the app, not a handful
    # Full collections only every 100 generation-1 ones: with 1,000 sockets each walked their
    # sessions for 80-275 ms (docs/benchmarks.md, "Runtime"); the young thresholds as Python's.
    assert frozen[2].strip() == "(700, 10, 100)", log
