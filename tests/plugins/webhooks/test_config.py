"""``plugins.webhooks`` validation: mistakes stop startup naming the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from plugins.webhooks.config import DEV_SECRET, WebhooksSettings
from tests.helpers import REPO

GOOD = {"url": "https://crm.example.com/hook", "secret": "s" * 32}


def settings(*subs: dict[str, Any]) -> WebhooksSettings:
    return msgspec.convert({"subscribers": list(subs)}, WebhooksSettings)


def refused(*subs: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        settings(*subs)
    return str(info.value)


def test_defaults() -> None:
    sub = settings(GOOD).subscribers[0]
    assert sub.events is None, "every event type by default"
    assert sub.retry_window_seconds >= 24 * 3600
    assert sub.label == "crm.example.com/hook"
    assert settings().subscribers == []


def test_unknown_event_type_suggests_the_name() -> None:
    message = refused({**GOOD, "events": ["whatsapp:mesage"]})
    assert "unknown event type 'whatsapp:mesage' (did you mean 'whatsapp:message'?)" in message
    assert "subscribers[0]" in message


@pytest.mark.parametrize("url", ["ftp://crm.example.com/x", "crm.example.com/hook", "https://"])
def test_url_must_be_http_or_https(url: str) -> None:
    assert "is not an http:// or https:// URL" in refused({**GOOD, "url": url})


def test_secret_required() -> None:
    assert "secret is empty" in refused({**GOOD, "secret": ""})
    assert "secret" in refused({"url": GOOD["url"]})


def test_same_name_twice_refused() -> None:
    assert "are both named 'crm'" in refused({**GOOD, "name": "crm"}, {**GOOD, "name": "crm"})


def test_unknown_key_refused() -> None:
    assert "retry_window" in refused({**GOOD, "retry_window": 10})


def test_unsafe_secrets_are_findings() -> None:
    assert settings(GOOD).findings() == []
    dev = settings({**GOOD, "secret": DEV_SECRET}).findings()
    assert [f.path for f in dev] == ["plugins.webhooks.subscribers[0].secret"]
    assert "published example" in dev[0].message
    short = settings({**GOOD, "secret": "short"}).findings()
    assert "shorter than 16 bytes" in short[0].message


def test_zaphub_check_reports_an_example_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "plugins:\n  webhooks:\n    subscribers:\n"
        f"      - {{url: 'https://crm.example.com/hook', secret: {DEV_SECRET}}}\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "check", "--config", str(cfg)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "plugins.webhooks.subscribers[0].secret: is the published example" in done.stderr
