"""Settings of the ``whatsapp`` plugin (``plugins.whatsapp`` in ``config.yaml``)."""

from __future__ import annotations

import re

import msgspec

from core.config import ConfigFinding

__all__ = ["DEV_APP_SECRET", "DEV_VERIFY_TOKEN", "SANDBOX_PHONE_NUMBER_ID", "WhatsAppSettings"]

#: The business number the sandbox serves when none is configured.
SANDBOX_PHONE_NUMBER_ID = "100000000000002"

#: The bundled config.yaml's fallbacks: published, so anyone could sign webhooks with them.
DEV_APP_SECRET = "dev-app-secret"
DEV_VERIFY_TOKEN = "dev-verify-token"

_VERSION = re.compile(r"^v\d+\.\d+$")


class WhatsAppSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Meta WhatsApp Cloud API credentials, webhook security, and sending behaviour."""

    access_token: str = ""
    """System-user access token for the Graph API (``WHATSAPP_ACCESS_TOKEN``). Never logged."""
    phone_number_id: str = ""
    """The business phone number id this host serves (``WHATSAPP_PHONE_NUMBER_ID``). Webhooks for
    other numbers are answered 200 and ignored. Empty: serve every number the app receives."""
    phone_number_ids: list[str] = msgspec.field(default_factory=list)
    """More business numbers served by this host (multi-number setups)."""
    business_account_id: str = ""
    """WhatsApp Business Account id (``WHATSAPP_BUSINESS_ACCOUNT_ID``), for logs and checks."""
    verify_token: str = ""
    """The token typed in Meta's dashboard for the webhook handshake (``WHATSAPP_VERIFY_TOKEN``)."""
    app_secret: str = ""
    """The Meta app secret that signs webhooks (``WHATSAPP_APP_SECRET``). Required unless
    ``insecure_skip_signature`` is true."""
    insecure_skip_signature: bool = False
    """Accept unsigned webhooks. Only for local experiments: anyone could inject messages."""
    graph_api_url: str = "https://graph.facebook.com"
    """Base URL of the Graph API (a proxy or a BSP may differ)."""
    graph_api_version: str = "v25.0"
    """Pinned Graph API version; upgrade deliberately."""
    sandbox: bool = False
    """Use the built-in Meta emulator on this same port instead of Meta (no account needed)."""
    sandbox_token: str = ""
    """Token the sandbox's test controls (``/_sandbox/graph/_sandbox/…``: deliver a webhook, read the
    recorded sends, inject faults) require in the ``X-Sandbox-Token`` header
    (``WHATSAPP_SANDBOX_TOKEN``). Empty: the controls are off (403)."""
    sandbox_remote_control: bool = False
    """Let clients on other machines, or relayed by a proxy, use the sandbox controls (with the
    token). Off: only clients connecting from this machine directly."""
    webhook_max_bytes: int = msgspec.field(default=4 * 1024 * 1024)
    """Largest webhook body accepted (413 above); Meta sends at most 3 MB."""
    messages_per_second: float = 80.0
    """Send pacing per business number (Meta's default throughput is 80 messages/s); with
    ``redis.url``, shared by all processes."""
    pair_interval_seconds: float = 6.0
    """Spacing of messages to one recipient (Meta's pair rate limit: about one per 6 s)."""
    pair_burst: int = 10
    """Messages one recipient may receive back-to-back before spacing applies."""
    retry_window_seconds: float = 7200.0
    """How long a send keeps being retried after temporary errors (a Graph or network outage,
    throttling) before it is marked ``failed``, counted from when it was queued. The default, two
    hours, rides out an hour-long outage with room for the backoff between tries."""
    retry_backoff_seconds: float = 1.0
    """Upper bound of the first retry's delay; it doubles per attempt (with full jitter) up to
    ``retry_backoff_max_seconds``. ``Retry-After`` and Meta's rate-limit advice can ask for longer."""
    retry_backoff_max_seconds: float = 300.0
    """Cap of the backoff's upper bound, so a send is tried at least about this often in an outage."""
    max_attempts: int | None = None
    """Also fail a send after this many attempts; ``null`` (default): only the retry window bounds
    retries."""
    ambiguous_retry_seconds: float = 30.0
    """After a timeout that may have reached Meta, wait this long for a status webhook that
    proves the send happened before trying again (see docs/operations.md)."""
    request_timeout_seconds: float = 20.0
    """Read timeout of one Graph request."""

    def __post_init__(self) -> None:
        if not self.app_secret and not self.insecure_skip_signature:
            raise ValueError(
                "app_secret is empty: set WHATSAPP_APP_SECRET (Meta dashboard → App settings → Basic) "
                "or insecure_skip_signature: true"
            )
        if not self.verify_token:
            raise ValueError(
                "verify_token is empty: set WHATSAPP_VERIFY_TOKEN to the token typed in Meta's dashboard"
            )
        if not _VERSION.match(self.graph_api_version):
            raise ValueError(f"graph_api_version {self.graph_api_version!r} is not like 'v25.0'")
        if self.messages_per_second <= 0:
            raise ValueError("messages_per_second must be > 0")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(
                "max_attempts must be at least 1, or null to bound retries by retry_window_seconds"
            )
        if self.retry_window_seconds < 0:
            raise ValueError("retry_window_seconds must be >= 0 (0: no retries after temporary errors)")
        if not 0 < self.retry_backoff_seconds <= self.retry_backoff_max_seconds:
            raise ValueError(
                "retry_backoff_seconds must be > 0 and at most retry_backoff_max_seconds "
                f"({self.retry_backoff_seconds:g} > {self.retry_backoff_max_seconds:g})"
            )

    def findings(self) -> list[ConfigFinding]:
        """The sandbox, and what is unsafe outside it (the ``check_settings`` hook)."""
        found = []
        if self.sandbox:
            found.append(
                ConfigFinding(
                    path="plugins.whatsapp.sandbox",
                    kind="development",
                    message="on: sends go to the built-in Meta emulator, not to WhatsApp; "
                    f"{self.sandbox_controls()}; set WHATSAPP_SANDBOX=false with real credentials for "
                    "production",
                )
            )
        published = {
            "app_secret": (self.app_secret, DEV_APP_SECRET, "WHATSAPP_APP_SECRET", "your Meta app's secret"),
            "verify_token": (self.verify_token, DEV_VERIFY_TOKEN, "WHATSAPP_VERIFY_TOKEN", "a random token"),
        }
        for key, (value, default, var, what) in published.items():
            if value == default:
                found.append(
                    ConfigFinding(
                        path=f"plugins.whatsapp.{key}",
                        message=f"is the published development default {default!r}: set {var} to {what}",
                    )
                )
        if not self.sandbox and not self.access_token:
            found.append(
                ConfigFinding(
                    path="plugins.whatsapp.access_token",
                    message="is empty, so nothing can be sent: set WHATSAPP_ACCESS_TOKEN to a system-user "
                    "token (or WHATSAPP_SANDBOX=true to try zaphub without Meta)",
                )
            )
        if self.insecure_skip_signature:
            found.append(
                ConfigFinding(
                    path="plugins.whatsapp.insecure_skip_signature",
                    message="is on: anyone who can reach the webhook can inject messages; remove it and "
                    "set WHATSAPP_APP_SECRET",
                )
            )
        return found

    def sandbox_controls(self) -> str:
        """Who may use the sandbox's test controls, in words (for check, /ready and the log)."""
        if not self.sandbox_token:
            return "its test controls are off (set WHATSAPP_SANDBOX_TOKEN to use them)"
        who = "any client" if self.sandbox_remote_control else "clients on this machine"
        return f"its test controls answer {who} sending the X-Sandbox-Token header"

    def served_numbers(self) -> frozenset[str]:
        """Business numbers this host serves; empty means all."""
        numbers = {n for n in [self.phone_number_id, *self.phone_number_ids] if n}
        if self.sandbox and not numbers:
            numbers.add(SANDBOX_PHONE_NUMBER_ID)
        return frozenset(numbers)
