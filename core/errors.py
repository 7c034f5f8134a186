"""zaphub's exceptions: one small tree, translated at the edges.

```
ZaphubError
├── ConfigError        fatal at startup; the message names the config path and the fix
├── PluginError        carries the plugin name (load, validation, a hook that must not fail)
├── ApiError           an answer to a CRM client: HTTP status + machine code + human message
│   ├── NotFoundError          404 not_found
│   ├── ValidationFailed       400 validation_error
│   ├── UnauthorizedError      401 unauthorized
│   ├── ForbiddenError         403 forbidden
│   ├── ConflictError          409 conflict
│   ├── WindowClosedError      422 window_closed (a send policy refused the type for now)
│   └── SendVetoed             422 send_vetoed (a plugin's ``on_before_send`` refused the message)
├── StorageError       the database failed (unreachable, disk full, refused a value); REST: 503
├── UpstreamError      Meta / Graph failed: HTTP status, Meta code/subcode/fbtrace_id, retryable?
└── WebhookPayloadError  in plugins.whatsapp.models: the webhook body is not JSON (answered 400)
```

Third-party exception types (httpx, SQLAlchemy, msgspec) never escape a plugin: each edge catches
them and raises one of these with ``from exc``. Whoever handles an error logs it, once.

The drawing is the real class tree of every ``ZaphubError`` subclass in ``core`` and ``plugins``
(tests/core/test_errors.py walks it); a new error class goes into the drawing too.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "ConfigError",
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "PluginError",
    "SendVetoed",
    "StorageError",
    "UnauthorizedError",
    "UpstreamError",
    "ValidationFailed",
    "WindowClosedError",
    "ZaphubError",
]


class ZaphubError(Exception):
    """Base of every error zaphub raises on purpose."""


class ConfigError(ZaphubError):
    """The configuration cannot be used. Fatal at startup.

    Attributes:
        path: dotted path of the offending key (``plugins.whatsapp.verify_token``), or ``""``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = message


class PluginError(ZaphubError):
    """A plugin failed to load, validate or run a hook that may not fail."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class ApiError(ZaphubError):
    """An error answered to a CRM client as ``{"error": {"code": …, "message": …}}``."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class NotFoundError(ApiError):
    """The named resource does not exist (or the caller's scope does not allow seeing it)."""

    status_code = 404
    code = "not_found"


class ValidationFailed(ApiError):
    """The request body or parameters are malformed."""

    status_code = 400
    code = "validation_error"


class UnauthorizedError(ApiError):
    """Missing, bad or expired bearer token."""

    status_code = 401
    code = "unauthorized"


class ForbiddenError(ApiError):
    """The token is valid but its scope does not cover this business number."""

    status_code = 403
    code = "forbidden"


class ConflictError(ApiError):
    """The request conflicts with an earlier one (an ``Idempotency-Key`` reused with another body)."""

    status_code = 409
    code = "conflict"


class WindowClosedError(ApiError):
    """A send policy refused the message's type for now (WhatsApp: free-form after 24 hours)."""

    status_code = 422
    code = "window_closed"


class SendVetoed(ApiError):
    """A plugin's ``on_before_send`` hook refused the message."""

    status_code = 422
    code = "send_vetoed"


class StorageError(ZaphubError):
    """The database failed: unreachable, out of space, timed out, or refused a value.

    The storage layer raises only this (SQLAlchemy's and the drivers' exceptions stay inside it,
    kept as ``__cause__``). The REST API answers ``503 storage_unavailable``; the webhook answers
    ``503`` so Meta retries. Retryable by the caller.
    """


class UpstreamError(ZaphubError):
    """Meta's Graph API (or the network to it) failed.

    Attributes:
        status: HTTP status, or ``None`` when no response arrived.
        code: Meta's ``error.code`` (``131047``…), or ``None``.
        subcode: Meta's ``error_subcode``, or ``None``.
        title: short human text (Meta's message, or the network error's name).
        fbtrace_id: Meta's trace id, for support tickets.
        retryable: whether sending again later may succeed.
        retry_after: seconds Meta (or a proxy) asked us to wait, if it said.
        ambiguous: the request may have reached Meta (a timeout after it was sent).
    """

    def __init__(
        self,
        title: str,
        *,
        status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        parts = [title]
        if code is not None:
            parts.append(f"code={code}")
        if status is not None:
            parts.append(f"http={status}")
        if fbtrace_id:
            parts.append(f"fbtrace_id={fbtrace_id}")
        super().__init__(" ".join(parts))
        self.title = title
        self.status = status
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.retryable = retryable
        self.retry_after = retry_after
        self.ambiguous = ambiguous
