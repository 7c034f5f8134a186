"""The agent console as HTTP serves it: the page, its policy, its assets, the switch that turns it off.

What the page does in a browser is tested in ``tests/e2e/test_console_browser.py``.
"""

from __future__ import annotations

import glob
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from core.config import parse_config
from core.errors import ConfigError
from plugins.crm_realtime.console import ASSETS, CONTENT_SECURITY_POLICY, STATIC
from tests.conftest import IN_CI
from tests.helpers import REPO
from tests.plugins.crm_realtime.harness import JS_DIR, Zaphub, crm_config, zaphub

TEMPLATES = [
    {"name": "order_update", "language": "pt_BR", "label": "Pedido a caminho", "body": "Olá {{1}}!"},
    {"name": "tricky", "label": "</script><script>alert(1)</script> & <b>"},
]


@pytest.fixture
async def z(tmp_path: Path) -> Any:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm={"console": {"templates": TEMPLATES}}) as running:
        yield running


def page_config(html: str) -> dict[str, Any]:
    found = re.search(r'<script id="zaphub-config" type="application/json">(.*?)</script>', html, re.S)
    assert found, "the page has no config block"
    return json.loads(found.group(1))  # type: ignore[no-any-return]


async def test_the_page_is_served_with_a_strict_content_security_policy(z: Zaphub) -> None:
    response = await z.http.get("/console")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval', no CDN
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy and "http" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    html = response.text
    for hook in ("token-input", "login", "composer", "send", "mode-toggle"):
        assert f'data-testid="{hook}"' in html, hook
    # Nothing in the page executes inline or comes from another origin.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    for attrs, body in scripts:
        assert 'type="application/json"' in attrs or (not body.strip() and 'src="console/' in attrs), attrs
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers would be blocked by the policy"


async def test_the_page_carries_the_namespace_and_templates_as_inert_json(z: Zaphub) -> None:
    html = (await z.http.get("/console")).text
    config = page_config(html)
    assert config["namespace"] == "/crm"
    assert [t["name"] for t in config["templates"]] == ["order_update", "tricky"]
    assert config["templates"][0] == {**TEMPLATES[0]}
    # A label cannot close the data block: "<" and ">" travel as JSON escapes.
    assert config["templates"][1]["label"] == TEMPLATES[1]["label"]
    assert "</script><script>alert" not in html


async def test_every_asset_is_served_with_its_type_and_revalidated_by_etag(z: Zaphub) -> None:
    for name, media_type in ASSETS.items():
        response = await z.http.get(f"/console/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] == media_type
        assert response.content == (STATIC / name).read_bytes()
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-cache"
        again = await z.http.get(f"/console/{name}", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


async def test_only_the_console_files_are_served(z: Zaphub) -> None:
    for path in (
        "/console/nope.js",
        "/console/../config.yaml",
        "/console/static/console.js",
        "/console/%2e%2e/",
    ):
        response = await z.http.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


async def test_a_trailing_slash_redirects_to_the_page_relative_assets_expect(z: Zaphub) -> None:
    response = await z.http.get("/console/")
    assert response.status_code == 308
    assert response.headers["location"] == "../console"


async def test_the_console_can_be_turned_off(tmp_path: Path) -> None:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm={"console": {"enabled": False}}) as z:
        for path in ("/console", "/console/console.js"):
            assert (await z.http.get(path)).status_code == 404, path
        assert (await z.http.get("/api/conversations", headers=z.auth())).status_code == 200


def test_console_settings_errors_name_the_key(tmp_path: Path) -> None:
    from core.app import create_app

    data = crm_config(
        f"sqlite:///{tmp_path / 'z.db'}", 3000, crm={"console": {"templates": [{"label": "x"}]}}
    )
    with pytest.raises(ConfigError, match=r"plugins\.crm_realtime.*console.*templates.*name"):
        create_app(parse_config(data))
    data = crm_config(f"sqlite:///{tmp_path / 'z.db'}", 3000, crm={"console": {"enabeld": False}})
    with pytest.raises(ConfigError, match="enabeld"):
        create_app(parse_config(data))


def test_the_shipped_socket_io_client_is_the_pinned_one_with_its_licence() -> None:
    """The bundle is a verbatim copy of the locked socket.io-client (no CDN, no build step)."""
    bundle = (STATIC / "vendor" / "socket.io.min.js").read_bytes()
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/socket.io-client"]["version"]
    assert f"Socket.IO v{version}".encode() in bundle[:200]
    licence = (STATIC / "vendor" / "socket.io.LICENSE").read_text()
    assert "MIT" in licence or "Permission is hereby granted" in licence
    installed = JS_DIR / "node_modules" / "socket.io-client"
    if not installed.is_dir():
        if IN_CI:
            pytest.fail(f"{installed} is missing: run npm ci --prefix tests/e2e/js")
        pytest.skip(f"{installed} is missing: run npm ci --prefix tests/e2e/js to compare the copy")
    assert bundle == (installed / "dist" / "socket.io.min.js").read_bytes(), (
        "plugins/crm_realtime/static/vendor/socket.io.min.js differs from the locked socket.io-client: "
        "copy dist/socket.io.min.js again"
    )
    assert licence == (installed / "LICENSE").read_text()


def test_package_data_ships_every_console_file() -> None:
    """pyproject's package-data globs (as setuptools applies them) match every file under static/."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["plugins.crm_realtime"]
    package_dir = STATIC.parent
    shipped = {f for pattern in patterns for f in glob.glob(pattern, root_dir=package_dir)}
    present = {str(p.relative_to(package_dir)) for p in STATIC.rglob("*") if p.is_file()}
    assert present, "static/ is empty"
    assert present <= shipped, f"not in the package: {sorted(present - shipped)}"
    assert {f"static/{name}" for name in ASSETS} | {"static/index.html"} <= present
