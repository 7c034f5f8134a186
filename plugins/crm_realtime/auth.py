"""JWT authentication of CRM clients, the same for Socket.IO and REST.

A token is verified against the configured keys (HS256 with ``jwt_secret``, RS256/ES256 with
``jwt_public_key``), must carry ``exp`` and ``sub``, and honours ``nbf``, ``aud`` and ``iss``
when configured. The optional scope claim (``phone_number_ids`` by default) limits the agent to
some business numbers. :func:`issue_token` makes tokens for ``zaphub token`` and tests.

:class:`TokenVerifier` is registered as the host's bearer verifier (``host.auth``, see
:mod:`core.auth`), so any plugin route can require the same token: :class:`~core.auth.Agent`
lives in core, and :class:`AuthError` subclasses :class:`core.auth.AuthError`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterable
from typing import Any

import jwt

from core.auth import Agent, forbidden_message
from core.auth import AuthError as TokenRefused
from plugins.crm_realtime.config import HMAC_ALGORITHMS, CrmRealtimeSettings

__all__ = [
    "REFUSAL_CODES",
    "Agent",
    "AuthError",
    "TokenVerifier",
    "forbidden_message",
    "issue_token",
    "parse_scope",
]

_REQUIRED_CLAIMS = ["exp", "sub"]


REFUSAL_CODES = frozenset(
    {
        "missing_token",
        "malformed_token",
        "algorithm",
        "expired",
        "not_yet_valid",
        "audience",
        "issuer",
        "missing_claim",
        "bad_signature",
        "invalid_token",
        "scope",
    }
)
"""Every :attr:`AuthError.code`: the label values of ``zaphub_crm_auth_refused_total{reason}``."""


#: Why a signature does not verify, by whether the token is HMAC-signed: a token made for another
#: host, or with another secret than this host's (a variable set in one shell but not the other).
_BAD_SIGNATURE = {
    True: "bad signature: the token was not signed with this host's plugins.crm_realtime.jwt_secret "
    "(CRM_JWT_SECRET); `zaphub token --sub NAME`, run with the same config, makes one",
    False: "bad signature: the token was not signed by the private key of "
    "plugins.crm_realtime.jwt_public_key",
}


class AuthError(TokenRefused):
    """A token was refused.

    ``reason`` says why in a few words (sent to the client; it may quote the token's header, so
    it is never a metric label). ``code`` is one of :data:`REFUSAL_CODES`.
    """

    def __init__(self, code: str, reason: str) -> None:
        if code not in REFUSAL_CODES:  # a new refusal must be added to the fixed set, not invented here
            raise ValueError(f"unknown refusal code {code!r}")
        super().__init__(reason)
        self.code = code


def parse_scope(value: Any, claim: str) -> frozenset[str] | None:
    """Read the scope claim: absent → ``None`` (all numbers); a list or comma-separated string of ids.

    Raises:
        AuthError: the claim is malformed or lists no number.
    """
    if value is None:
        return None
    items: Iterable[Any]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise AuthError("scope", f"claim {claim} must be a list of phone number ids")
    ids: set[str] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise AuthError("scope", f"claim {claim} must be a list of phone number ids")
        text = str(item).strip()
        if text:
            ids.add(text)
    if not ids:
        raise AuthError("scope", f"claim {claim} lists no business number")
    return frozenset(ids)


class TokenVerifier:
    """Verifies CRM tokens with one host's settings; build once, call :meth:`verify` per client."""

    def __init__(self, settings: CrmRealtimeSettings) -> None:
        self.settings = settings
        self._algorithms = list(settings.algorithms)
        self._secret = settings.jwt_secret.encode()
        self._public_key = settings.public_key
        self._options: dict[str, Any] = {"require": list(_REQUIRED_CLAIMS)}
        self._codec = jwt.PyJWT()

    def verify(self, token: object) -> Agent:
        """Check a token and return the agent it speaks for.

        Raises:
            AuthError: missing, malformed, badly signed, expired, not yet valid, wrong audience
                or issuer, or a malformed scope claim.
        """
        if not isinstance(token, str) or not token.strip():
            raise AuthError(
                "missing_token",
                "missing token: connect with auth {token: '<JWT>'} (`zaphub token --sub NAME` makes one)",
            )
        token = token.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise AuthError(
                "malformed_token",
                "malformed token: expected a JWT (three base64url parts; "
                "`zaphub token --sub NAME` makes one)",
            ) from None
        if alg not in self._algorithms:
            shown = str(alg)[:20]  # the attacker's own header, echoed back to them: keep it short
            expected = ", ".join(self._algorithms)
            raise AuthError("algorithm", f"algorithm {shown} not accepted (expected {expected})")
        key: Any = self._secret if alg in HMAC_ALGORITHMS else self._public_key
        settings = self.settings
        try:
            # A short dev secret is reported once at startup; PyJWT would warn on every token.
            quiet = warnings.catch_warnings() if settings.short_secret else contextlib.nullcontext()
            with quiet:
                if settings.short_secret:
                    warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims = self._codec.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=settings.jwt_audience,
                    issuer=settings.jwt_issuer,
                    leeway=settings.jwt_leeway_seconds,
                    options=self._options,  # type: ignore[arg-type]  # PyJWT's TypedDict is partial
                )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("not_yet_valid", "token not yet valid (nbf)") from None
        except jwt.InvalidAudienceError:
            raise AuthError("audience", "wrong audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise AuthError("issuer", "wrong issuer (iss)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing_claim", f"token has no {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", _BAD_SIGNATURE[alg in HMAC_ALGORITHMS]) from None
        except jwt.PyJWTError:
            raise AuthError("invalid_token", "invalid token") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("missing_claim", "token has no sub claim")
        exp = claims["exp"]
        return Agent(
            sub=sub,
            scope=parse_scope(claims.get(settings.scope_claim), settings.scope_claim),
            expires_at=float(exp),
        )


def issue_token(
    settings: CrmRealtimeSettings,
    *,
    sub: str,
    ttl: float = 86_400,
    scope: Iterable[str] | None = None,
    private_key: str | bytes | None = None,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A token this host accepts (for ``zaphub token`` and tests).

    Args:
        settings: the host's settings (secret or algorithm, ``aud``, ``iss``, scope claim).
        sub: the subject (an agent's name or id).
        ttl: seconds until ``exp``.
        scope: business numbers to restrict the agent to (``None``: all).
        private_key: PEM private key, for hosts that verify RS256/ES256 tokens.
        now: the issue time (Unix seconds), default now.
        extra: more claims (they override the computed ones).

    Raises:
        ValueError: no usable signing key for this configuration.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": int(issued + ttl)}
    if settings.jwt_audience is not None:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer is not None:
        claims["iss"] = settings.jwt_issuer
    if scope is not None:
        claims[settings.scope_claim] = sorted(scope)
    claims.update(extra or {})
    if private_key is not None:
        alg = next((a for a in settings.algorithms if a not in HMAC_ALGORITHMS), None)
        if alg is None:
            raise ValueError(
                "plugins.crm_realtime verifies HS256 tokens with jwt_secret: drop --private-key "
                "(it is for hosts configured with jwt_public_key)"
            )
        return jwt.encode(claims, private_key, algorithm=alg)
    alg = next((a for a in settings.algorithms if a in HMAC_ALGORITHMS), None)
    if alg is None:
        raise ValueError(
            f"plugins.crm_realtime verifies {', '.join(settings.algorithms)} tokens with jwt_public_key: "
            "pass --private-key FILE (the matching private key), or mint tokens with your identity provider"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, settings.jwt_secret, algorithm=alg)
