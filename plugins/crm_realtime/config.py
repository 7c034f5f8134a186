"""Settings of the ``crm_realtime`` plugin: the ``plugins.crm_realtime`` section of ``config.yaml``.

Everything that can be wrong with the JWT setup is checked while the section is validated, so a
missing secret, an unreadable key file or an algorithm without its key stops startup (and
``zaphub check``) with the key's path and the fix, instead of refusing every client later.

``jwt_public_key`` is either the PEM text itself (starts with ``-----BEGIN``) or the path of a PEM
file; the parsed key is kept on the frozen Struct through ``functools.cached_property`` (hence
``dict=True``), parsed once, here.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.config import ConfigFinding

__all__ = [
    "DEV_JWT_SECRET",
    "HMAC_ALGORITHMS",
    "PUBLIC_KEY_ALGORITHMS",
    "ConsoleSettings",
    "ConsoleTemplate",
    "CrmRealtimeSettings",
]

DEV_JWT_SECRET = "dev-jwt-secret"
"""The bundled config.yaml's fallback ``jwt_secret``: public, so anyone can mint tokens with it."""

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
"""Algorithms verified with ``jwt_secret``."""
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
"""Algorithms verified with ``jwt_public_key``."""

_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConsoleTemplate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """An approved WhatsApp template offered by the console's template picker.

    Example::

        {name: order_update, language: pt_BR, label: "Pedido a caminho",
         body: "Olá {{1}}, seu pedido {{2}} saiu para entrega."}
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    """The template's name as approved at Meta."""
    language: Annotated[str, msgspec.Meta(min_length=2, max_length=15)] = "en_US"
    """Its language code (``pt_BR``, ``en_US``)."""
    label: str | None = None
    """What agents see in the picker; the name when unset."""
    body: str | None = None
    """The body text as approved, with ``{{1}}``, ``{{2}}``… placeholders: the picker previews it
    and asks the agent for one value per placeholder (sent as body parameters)."""


class ConsoleSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The agent console at ``GET /console``."""

    enabled: bool = True
    """Serve the console page and its assets; ``false`` answers them ``404``."""
    templates: list[ConsoleTemplate] = msgspec.field(default_factory=list)
    """Templates the picker offers (outside the 24-hour window and to start a conversation).
    Agents can always type another approved template's name and language."""


class CrmRealtimeSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, dict=True):
    """Socket.IO namespace, JWT verification and the REST API for CRM clients."""

    namespace: str = "/crm"
    """Socket.IO namespace CRM clients connect to (``io(url + "/crm", …)``)."""
    jwt_secret: str = ""
    """HMAC secret of HS256 tokens (``CRM_JWT_SECRET``); use 32 random bytes or more
    (``openssl rand -hex 32``). Never logged."""
    jwt_public_key: str = ""
    """PEM public key (the text, or the path of a ``.pem`` file) verifying RS256/ES256 tokens
    issued by your own identity provider."""
    jwt_algorithms: list[str] = msgspec.field(default_factory=list)
    """Accepted ``alg`` values. Empty: HS256 when ``jwt_secret`` is set, plus RS256 or ES256/384/512
    according to the type of ``jwt_public_key``."""
    jwt_audience: str | list[str] | None = None
    """When set, tokens must carry a matching ``aud`` claim."""
    jwt_issuer: str | None = None
    """When set, tokens must carry this ``iss`` claim."""
    jwt_leeway_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Clock skew tolerated on ``exp`` and ``nbf``."""
    scope_claim: str = "phone_number_ids"
    """Claim restricting an agent to some business numbers (a list of phone number ids, or a
    comma-separated string). A token without it sees every number."""
    cors_allowed_origins: list[str] | None = None
    """Browser origins allowed to open Socket.IO connections and to call ``/api`` cross-origin:
    ``["https://crm.example.com"]`` (exact match), ``["*"]`` for any (development only), ``[]`` to
    leave CORS to a reverse proxy (no check, no headers), unset for same-origin only. Clients
    without an ``Origin`` header (Node, mobile, servers) are never refused by it."""
    transports: list[Literal["polling", "websocket"]] = msgspec.field(
        default_factory=lambda: ["polling", "websocket"]
    )
    """Socket.IO transports served. Behind a load balancer without sticky sessions use
    ``["websocket"]`` (polling needs every request of a client to reach the same process)."""
    ping_interval_seconds: Seconds = 25.0
    """Engine.IO heartbeat interval; a client silent for interval + timeout is disconnected."""
    ping_timeout_seconds: Seconds = 20.0
    """Engine.IO heartbeat timeout."""
    connect_timeout_seconds: Seconds = 10.0
    """An Engine.IO connection that has no namespace connected within this time is closed (a
    client whose connect was refused, after one second): it would hold a file descriptor while
    answering pings."""
    join_rate_per_second: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    """``join_conversation`` / ``join_message`` per second one agent (token ``sub``) may make in
    this process, across its sockets; beyond it the ack is a ``rate limited`` error."""
    join_burst: Annotated[int, msgspec.Meta(ge=1)] = 100
    """Joins an agent may make at once before ``join_rate_per_second`` applies (a console that
    joins every open conversation on load)."""
    max_joins_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 4
    """Joins one socket may have waiting for their ack; more are refused at once."""
    event_queue_size: Annotated[int, msgspec.Meta(ge=100)] = 10_000
    """Events waiting to be emitted (per process). When full, new events are not queued (counted in
    ``zaphub_crm_events_dropped_total``) and are delivered a moment later from the event log."""
    max_page_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200
    """Largest ``limit`` accepted by the REST list endpoints."""
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)
    """The agent console page (``GET /console``): ``{enabled: false}`` turns it off."""

    def __post_init__(self) -> None:
        if not self.namespace.startswith("/") or self.namespace == "/" or " " in self.namespace:
            raise ValueError(
                f"namespace {self.namespace!r} must start with '/' and name a namespace, e.g. /crm"
            )
        if not self.jwt_secret and not self.jwt_public_key:
            raise ValueError(
                "jwt_secret and jwt_public_key are both empty: set CRM_JWT_SECRET (HS256 tokens, e.g. "
                "`openssl rand -hex 32`) or jwt_public_key (the PEM key of your identity provider, "
                "RS256/ES256)"
            )
        if not self.scope_claim.strip():
            raise ValueError(
                "scope_claim is empty: name the claim listing an agent's numbers (phone_number_ids)"
            )
        key = self.public_key  # parse now: a bad key must stop startup, not every client
        for alg in self.algorithms:
            if alg in HMAC_ALGORITHMS:
                if not self.jwt_secret:
                    raise ValueError(
                        f"jwt_algorithms lists {alg} but jwt_secret is empty: set CRM_JWT_SECRET"
                    )
            elif alg in PUBLIC_KEY_ALGORITHMS:
                if key is None:
                    raise ValueError(
                        f"jwt_algorithms lists {alg} but jwt_public_key is empty: set it to a PEM key"
                    )
                if alg.startswith("ES") != isinstance(key, ec.EllipticCurvePublicKey):
                    raise ValueError(
                        f"jwt_algorithms lists {alg} but jwt_public_key is a {_key_kind(key)} key"
                    )
            else:
                known = ", ".join(sorted(HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS))
                raise ValueError(f"jwt_algorithms: {alg!r} is not supported; use one of {known}")

    @cached_property
    def public_key(self) -> Any:
        """The parsed ``jwt_public_key`` (a ``cryptography`` key object), or ``None``."""
        if not self.jwt_public_key:
            return None
        text = self.jwt_public_key.strip()
        where = "jwt_public_key"
        if not text.startswith("-----BEGIN"):
            path = Path(text).expanduser()
            try:
                text = path.read_text(encoding="ascii")
            except OSError as exc:
                raise ValueError(
                    f"jwt_public_key: cannot read {str(path)!r} ({exc.strerror}); give the PEM text or "
                    "a readable file path"
                ) from None
            where = f"jwt_public_key ({path})"
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, TypeError, UnicodeEncodeError):
            raise ValueError(
                f"{where} is not a PEM public key: expected '-----BEGIN PUBLIC KEY-----' (RSA or EC)"
            ) from None
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError(
                f"{where} is a {_key_kind(key)} key: only RSA (RS256) and EC (ES256) keys are supported"
            )
        return key

    @cached_property
    def algorithms(self) -> tuple[str, ...]:
        """The accepted algorithms: ``jwt_algorithms``, or those inferred from the keys."""
        if self.jwt_algorithms:
            return tuple(dict.fromkeys(self.jwt_algorithms))
        inferred = []
        if self.jwt_secret:
            inferred.append("HS256")
        if self.public_key is not None:
            inferred.append(_algorithm_for(self.public_key))
        return tuple(inferred)

    def findings(self) -> list[ConfigFinding]:
        """What is valid but unsafe outside a sandbox (the ``check_settings`` hook)."""
        fix = "set CRM_JWT_SECRET to 32 random bytes or more (openssl rand -hex 32)"
        if self.jwt_secret == DEV_JWT_SECRET:
            message = (
                f"is the published development default {DEV_JWT_SECRET!r}: anyone can mint tokens; {fix}"
            )
        elif self.short_secret:
            message = f"is shorter than 32 bytes, so it can be guessed offline from any token; {fix}"
        else:
            return []
        return [ConfigFinding(path="plugins.crm_realtime.jwt_secret", message=message)]

    @property
    def short_secret(self) -> bool:
        """Whether ``jwt_secret`` is shorter than HS256's 32-byte recommendation."""
        return bool(self.jwt_secret) and len(self.jwt_secret.encode()) < 32


def _algorithm_for(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHM.get(key.curve.name)
        if alg is None:
            raise ValueError(f"jwt_public_key uses curve {key.curve.name}: use P-256 (ES256), P-384 or P-521")
        return alg
    return "RS256"


def _key_kind(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    return type(key).__name__.removeprefix("_").replace("PublicKey", "")
