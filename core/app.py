"""``create_app(config) -> Litestar``: where pluggy meets Litestar, in one place.

The app factory builds the plugin manager, validates every plugin's settings, creates the
:class:`~core.host.Host`, and collects routes (mounts included), direct routes (answered before
Litestar's router) and readiness checks from hooks. The host starts and stops inside the Litestar
lifespan. Ops endpoints (``/health``, ``/ready``, ``/metrics``) and the JSON error envelope
(``{"error": {"code", "message"}}``) are the host's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import redis.asyncio as aioredis
from litestar import Litestar, Request, Response, get
from litestar.di import Provide
from litestar.exceptions import (
    HTTPException,
    LitestarDeprecationWarning,
    SerializationException,
    ValidationException,
)
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from core import __version__
from core.config import Config, redact, redact_url
from core.errors import ApiError, PluginError, StorageError
from core.host import Host, ReadinessCheck
from core.logs import Throttle
from core.metrics import CONTENT_TYPE_LATEST
from core.plugins import build_plugin_manager, validate_plugin_settings
from core.preflight import findings
from core.server import DirectRoute, body_timeout, release_held_start, single_write_send
from core.stash import StashKey

__all__ = ["REDIS", "create_app", "error_response"]

log = logging.getLogger("zaphub.app")

#: The host's Redis client when ``redis.url`` is set (plugins may share it).
REDIS: StashKey[aioredis.Redis] = StashKey("core.redis")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str, **extra: Any) -> Response[Any]:
    """The JSON error envelope every endpoint uses."""
    error: dict[str, Any] = {"code": code, "message": message}
    error.update(extra)
    return Response({"error": error}, status_code=status, media_type="application/json")


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    details = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in details:
        if isinstance(item, dict):
            where = item.get("key") or item.get("source") or ""
            parts.append(f"{where}: {item.get('message', '')}".strip(": "))
    message = "; ".join(parts) or str(exc.detail)
    return error_response(400, "validation_error", message, details=details)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc.__cause__, SerializationException):  # Litestar's wrapper for a body it cannot decode
        return error_response(400, "bad_json", f"request body is not valid JSON: {exc.detail}")
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))


_Answer = tuple[int, str, str, dict[str, str]]
"""status, error code, message, extra headers."""


class _Errors:
    """The host's answers to the exceptions a route raises: Litestar's routes and direct routes alike."""

    def __init__(self) -> None:
        # One line per minute for a failure repeated on every request (the database down, a bug),
        # not a traceback per request.
        self._storage = Throttle(log)
        self._internal = Throttle(log)

    def answer(self, method: str, path: str, exc: Exception) -> _Answer:
        """The answer to ``exc`` raised while serving ``method path`` (logged when it is ours)."""
        if isinstance(exc, ApiError):
            return exc.status_code, exc.code, exc.message, {}
        if isinstance(exc, RecursionError):
            # msgspec raises RecursionError (not a decode error) for JSON nested about 1,000 levels
            # deep; a request body is where such input comes from.
            return 400, "bad_json", "request body nests JSON arrays/objects too deeply to decode", {}
        if isinstance(exc, StorageError):
            self._storage.error("storage unavailable on %s %s: %s", method, path, exc)
            message = "the database is unavailable; retry later (see GET /ready)"
            return 503, "storage_unavailable", message, {"Retry-After": "5"}
        self._internal.error("unhandled error on %s %s", method, path, exc_info=exc)
        message = "internal error; the server log has the details"
        return HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", message, {}

    def litestar_handler(self, request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        """Litestar's exception handler for the types :meth:`answer` knows."""
        status, code, message, headers = self.answer(request.method, request.url.path, exc)
        response = error_response(status, code, message)
        response.headers.update(headers)
        return response

    async def asgi(self, scope: Any, send: Any, exc: Exception) -> None:
        """The same answer sent on a raw ASGI ``send`` (a direct route: no Litestar around it)."""
        status, code, message, headers = self.answer(scope["method"], scope["path"], exc)
        body = _encode({"error": {"code": code, "message": message}})
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw_headers.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


_encode = msgspec.json.Encoder().encode


class _App(Litestar):
    """Litestar, with the plugins' direct routes (``register_direct_routes``) answered before its router.

    A direct route skips Litestar's exception middleware, router and route middleware (together
    about a tenth of the event loop's time per webhook); the host's own guarantees for every
    route, the body timeout and the error envelope, are applied by :func:`core.server.body_timeout`.
    """

    direct: dict[tuple[str, str], Any] = {}
    """``(method, path)`` → the wrapped endpoint; set by :func:`create_app` (empty: no direct routes)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Dispatch a direct route's method and path to it, anything else to Litestar.

        Every HTTP response that declares its length is written in one go
        (:func:`core.server.single_write_send`).
        """
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        send = single_write_send(send)
        route = self.direct.get((scope["method"], scope["path"])) if self.direct else None
        if route is not None:
            await route(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
        await release_held_start(send)  # an app that announced a body and returned without it


def create_app(config: Config, *, extra_plugins: Mapping[str, object] | None = None) -> Litestar:
    """Build the app for ``config``.

    Args:
        config: a validated :class:`~core.config.Config` (plugin sections still raw).
        extra_plugins: plugin objects usable without installation (tests, embedding), enabled
            only when ``config.plugins`` names them.

    Raises:
        ConfigError: unknown plugin, invalid plugin settings.
        PluginError: a plugin failed to load or to register its routes.
    """
    pm = build_plugin_manager(config, extra_plugins=extra_plugins)
    settings = validate_plugin_settings(pm, config)
    host = Host(config, pm, settings)
    notes = [f"{f.path}: {f.message}" for f in findings(config, host.hooks)]

    checks: list[ReadinessCheck] = [("storage", _storage_check(host))]
    if config.redis.url:
        checks.append(("redis", _redis_check(host)))
    checks.extend(item for _, item in host.hooks.collect("register_readiness_checks", host=host))
    host.readiness_checks = checks
    host.sender.policies = [policy for _, policy in host.hooks.collect("register_send_policies", host=host)]
    host.sender.channels = [channel for _, channel in host.hooks.collect("register_channels", host=host)]

    @get("/health", sync_to_thread=False, tags=["ops"], summary="Liveness: 200 while the process runs")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", tags=["ops"], summary="Readiness: 200 when storage, Redis and plugins answer, else 503")
    async def ready() -> Response[Any]:
        results = await asyncio.gather(*(_run_check(fn) for _, fn in host.readiness_checks))
        report = {
            name: (reason or "ok") for (name, _), reason in zip(host.readiness_checks, results, strict=True)
        }
        failing = {
            name: reason for (name, _), reason in zip(host.readiness_checks, results, strict=True) if reason
        }
        body: dict[str, Any] = {"checks": report}
        if notes:  # a sandbox, development secrets: say so wherever the host is looked at
            body["warnings"] = notes
        if failing or not host.started:
            if not host.started:
                report["host"] = "starting"
            return Response({"status": "unavailable", **body}, status_code=503)
        return Response({"status": "ready", **body}, status_code=200)

    @get("/metrics", tags=["ops"], summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
    async def metrics() -> Response[bytes]:
        # An explicit header: Litestar appends a second `charset` to text/* media types, and
        # Prometheus 3 refuses a Content-Type with a duplicate parameter.
        headers = {"content-type": CONTENT_TYPE_LATEST}
        return Response(host.metrics.render(), media_type=CONTENT_TYPE_LATEST, headers=headers)

    routes: list[Any] = [health, ready, metrics]
    routes.extend(item for _, item in host.hooks.collect("register_routes", host=host))
    errors = _Errors()
    direct = _direct_routes(host, errors)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if config.dev_defaults:
            log.warning(
                "USING DEVELOPMENT DEFAULTS for %s: fine on your machine, unsafe anywhere else; set the "
                "environment variables named in %s before exposing this host",
                ", ".join(config.dev_defaults),
                config.source,
            )
        if config.redis.url:
            host.stash[REDIS] = aioredis.from_url(config.redis.url, socket_connect_timeout=2)
            await _warn_unless_redis_answers(host.stash[REDIS], config.redis.url)
        elif config.storage.url.startswith("postgresql"):
            log.warning(
                "storage is PostgreSQL but redis.url is not set: with several processes (zaphub run "
                "--workers, or several hosts) a Socket.IO client only receives the events of the process "
                "it is connected to; set redis.url (ZAPHUB_REDIS_URL) unless this is the only process"
            )
        log.info("storage: %s; plugins: %s", host.storage.describe(), ", ".join(config.plugins) or "none")
        log.debug("config: %s", redact(config))
        await host.start()
        try:
            yield
        finally:
            await host.stop()
            client = host.stash.get(REDIS)
            if client is not None:
                await client.aclose()

    with warnings.catch_warnings():
        # `host: Host` and `agent: Agent` are the documented way for a handler to ask for them.
        # Litestar 2 warns about every dependency not marked `NamedDependency[...]` while it builds
        # the routes (its 3.0 drops unmarked ones; zaphub pins `litestar<3` and will keep these two
        # working); only the warning about these two names is silenced, and only here.
        warnings.filterwarnings(
            "ignore", message=_HOST_DEPENDENCY_WARNING, category=LitestarDeprecationWarning
        )
        app = _litestar(config, host, routes, lifespan, errors)
    app.direct = direct
    app.state.host = host  # for tests and embedding; plugins get `host` through hooks and DI
    return app


#: Litestar's warning about an unmarked dependency, for the two the host provides.
_HOST_DEPENDENCY_WARNING = r".*Inferred dependency field '(host|agent)'"


def _direct_routes(host: Host, errors: _Errors) -> dict[tuple[str, str], Any]:
    """The plugins' direct routes by ``(method, path)``, each under the body timeout and error envelope.

    Raises:
        PluginError: a plugin returned something else than a :class:`DirectRoute`, or a method
            and path another plugin already registered.
    """
    seconds = host.config.server.body_timeout_seconds
    table: dict[tuple[str, str], Any] = {}
    owners: dict[tuple[str, str], str] = {}
    for plugin, route in host.hooks.collect("register_direct_routes", host=host):
        if not isinstance(route, DirectRoute):
            raise PluginError(
                plugin, f"register_direct_routes must return core.server.DirectRoute objects, got {route!r}"
            )
        key = (route.method, route.path)
        if key in owners:
            raise PluginError(
                plugin, f"direct route {route.method} {route.path} is already registered by {owners[key]!r}"
            )
        owners[key] = plugin
        table[key] = body_timeout(route.app, seconds, errors=errors.asgi)
    return table


def _litestar(config: Config, host: Host, routes: list[Any], lifespan: Any, errors: _Errors) -> _App:
    return _App(
        route_handlers=routes,
        lifespan=[lifespan],
        dependencies={
            "host": Provide(lambda: host, sync_to_thread=False, use_cache=True),
            # The bearer check of core.auth: 401 before the handler without a good token.
            "agent": Provide(host.auth.authenticate),
        },
        exception_handlers={
            ApiError: errors.litestar_handler,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            RecursionError: errors.litestar_handler,
            StorageError: errors.litestar_handler,
            Exception: errors.litestar_handler,
        },
        request_max_body_size=config.server.max_body_bytes,
        middleware=[DefineMiddleware(body_timeout, seconds=config.server.body_timeout_seconds)],
        openapi_config=OpenAPIConfig(
            title="zaphub",
            version=__version__,
            description=(
                "WhatsApp Cloud API ↔ CRM in real time. CRM endpoints need `Authorization: Bearer <JWT>`."
            ),
            path="/schema",
            # The Contract's `/api/*` token; the CRM router lists it as each operation's `security`.
            components=Components(
                security_schemes={
                    "bearerAuth": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT",
                        description="The CRM token, the same as Socket.IO's `auth.token` "
                        "(`zaphub token --sub you` prints one).",
                    )
                }
            ),
        ),
        logging_config=None,
    )


def _storage_check(host: Host) -> Any:
    async def check() -> str | None:
        try:
            await host.storage.ping()
        except Exception as exc:
            return str(exc)
        return None

    return check


async def _warn_unless_redis_answers(client: aioredis.Redis, url: str) -> None:
    try:
        await asyncio.wait_for(client.ping(), 3)
    except Exception as exc:
        # Not fatal: webhooks and REST work without Redis, and the relay recovers when it is back.
        log.error(
            "REDIS UNREACHABLE at %s (%s): Socket.IO events are not relayed between processes until it "
            "answers, and /ready answers 503; start Redis or correct redis.url (ZAPHUB_REDIS_URL)",
            redact_url(url),
            f"{type(exc).__name__}: {exc}"[:200],
        )


def _redis_check(host: Host) -> Any:
    async def check() -> str | None:
        client = host.stash.get(REDIS)
        if client is None:
            return "not connected"
        try:
            await client.ping()
        except Exception as exc:
            return f"unreachable: {exc.__class__.__name__}"
        return None

    return check


async def _run_check(fn: Any) -> str | None:
    try:
        result: str | None = await asyncio.wait_for(fn(), timeout=3)
    except TimeoutError:
        return "timed out after 3 s"
    except Exception as exc:
        return f"check failed: {exc.__class__.__name__}: {exc}"
    return result
