"""The agent console: one page at ``GET /console`` and its assets under ``/console/``.

The page is static (``static/``: HTML, CSS, vanilla JavaScript and the pinned ``socket.io-client``
browser bundle with its licence), read once when the routes are built and served from memory. It
speaks only the public contract: the REST API under ``/api`` and Socket.IO on the configured
namespace, with the token the agent pastes in (kept in the tab's ``sessionStorage``).

The one server-side piece is a JSON block in the page (namespace, templates for the picker),
inert data that the Content-Security-Policy does not execute. The policy allows scripts, styles
and connections from this origin only; media are fetched with the bearer token and shown from
``blob:`` URLs, because ``<img src>`` cannot send an ``Authorization`` header.

Asset URLs in the page are relative (``console/console.js``), and the page finds the API and
Socket.IO relative to its own URL, so the console also works behind a proxy that mounts the host
under a path prefix.
"""

# No `from __future__ import annotations`: Litestar reads the handlers' annotations at runtime.
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, Router, get
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.status_codes import HTTP_304_NOT_MODIFIED

from core import __version__
from core.errors import NotFoundError
from plugins.crm_realtime.config import CrmRealtimeSettings

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "console_router"]

STATIC = Path(__file__).parent / "static"

ASSETS = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "icon.svg": "image/svg+xml",
    "vendor/socket.io.min.js": "text/javascript",
    "vendor/socket.io.LICENSE": "text/plain",
}
"""Every file served under ``/console/``, with its type; anything else is ``404``."""

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # Media arrive as blobs fetched with the bearer token.
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        # 'self' covers ws:/wss: to this same host (CSP Level 3): no other host is reachable.
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""The page's policy: nothing inline runs, nothing loads from another origin."""

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

_CONFIG_MARK = b"{{console-config}}"


@dataclass(frozen=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def _load(name: str, media_type: str) -> _File:
    body = (STATIC / name).read_bytes()
    return _File(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _page(settings: CrmRealtimeSettings) -> _File:
    config = {
        "namespace": settings.namespace,
        "version": __version__,
        "templates": msgspec.to_builtins(settings.console.templates),
    }
    # Inside <script type="application/json">, only "</script" could end the block early: escape
    # every "<" (and ">" and "&" for good measure) as JSON \\u escapes, which JSON.parse reads back.
    data = msgspec.json.encode(config).replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
    data = data.replace(b"&", b"\\u0026")
    template = (STATIC / "index.html").read_bytes()
    if _CONFIG_MARK not in template:
        raise RuntimeError(f"{STATIC / 'index.html'} lost its {_CONFIG_MARK.decode()} marker")
    body = template.replace(_CONFIG_MARK, data)
    return _File(body, "text/html", '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _answer(request: Request[Any, Any, Any], file: _File, headers: dict[str, str]) -> Response[bytes]:
    # `no-cache` = revalidate every time: an upgraded zaphub never runs a stale console.js.
    out = {**headers, "ETag": file.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == file.etag:
        return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=out)
    return Response(file.body, media_type=file.media_type, headers=out)


def console_router(settings: CrmRealtimeSettings) -> Router:
    """``GET /console`` (the page) and ``GET /console/{asset}``, built from ``static/``."""
    page = _page(settings)
    assets = {name: _load(name, media_type) for name, media_type in ASSETS.items()}

    @get("/", include_in_schema=False, sync_to_thread=False)
    def console_page(request: Request[Any, Any, Any]) -> Response[bytes] | Redirect:
        # Litestar routes /console/ here too, with the slash gone from url.path; raw_path keeps it.
        if request.scope.get("raw_path", b"").endswith(b"/"):
            # Relative asset URLs resolve against /console, not /console/; a relative Location
            # keeps a proxy's path prefix.
            return Redirect(path="../console", status_code=308)
        return _answer(request, page, _SECURITY_HEADERS)

    @get("/{asset:path}", include_in_schema=False, sync_to_thread=False)
    def console_asset(request: Request[Any, Any, Any], asset: FromPath[str]) -> Response[bytes]:
        file = assets.get(asset.lstrip("/"))
        if file is None:
            raise NotFoundError(f"/console{asset} is not part of the console")
        return _answer(request, file, {"X-Content-Type-Options": "nosniff"})

    return Router("/console", route_handlers=[console_page, console_asset])
