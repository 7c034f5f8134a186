"""Bearer tokens for HTTP routes: the neutral interface between who verifies and who requires them.

Core does not know how tokens are made. A plugin that does (``crm_realtime`` verifies the CRM's
JWTs) registers a :class:`TokenVerifier` with ``host.auth.use(verifier, by="crm_realtime")``
while its routes are registered. Any route, a third-party plugin's included, then requires the
same token as ``/api`` by taking the ``agent`` dependency, and gets who the token speaks for
(``agent: Agent`` or Litestar's ``agent: NamedDependency[Agent]``, both without a warning)::

    from litestar import get
    from litestar.params import FromPath

    from core.auth import Agent
    from core.host import Host


    @get("/mybot/conversations/{conversation_id:int}/notes")
    async def notes(agent: Agent, host: Host, conversation_id: FromPath[int]) -> list[str]:
        conversation = await host.storage.get_conversation(conversation_id)
        ...  # 404 when it is None
        agent.require(conversation.phone_number_id, f"conversation {conversation_id}")  # else 403
        return [...]

A request without a token, or with a refused one, gets ``401 unauthorized`` naming the problem
and the fix before the handler runs. With no verifier registered (``crm_realtime`` not enabled)
such routes answer ``503 unavailable`` saying so.
"""

from __future__ import annotations

from typing import Annotated, Protocol, runtime_checkable

import msgspec
from litestar.params import HeaderParameter

from core.errors import ApiError, ForbiddenError, UnauthorizedError

__all__ = ["Agent", "AuthError", "BearerAuth", "TokenVerifier", "forbidden_message"]


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    """Who a verified token speaks for: an agent, or a CRM back end."""

    sub: str
    """The token's subject; it also scopes ``Idempotency-Key``."""
    scope: frozenset[str] | None
    """Business numbers (phone number ids) this agent may see; ``None`` means all."""
    expires_at: float
    """When the token expires (Unix seconds)."""

    def allows(self, phone_number_id: str) -> bool:
        """Whether this agent may see messages of that business number."""
        return self.scope is None or phone_number_id in self.scope

    def require(self, phone_number_id: str, what: str) -> None:
        """Raise :class:`core.errors.ForbiddenError` (``403 forbidden``) unless :meth:`allows`.

        Args:
            phone_number_id: the business number of the resource.
            what: the resource, for the message (``conversation 12``).
        """
        if not self.allows(phone_number_id):
            raise ForbiddenError(forbidden_message(what, phone_number_id))


def forbidden_message(what: str, phone_number_id: str) -> str:
    """The refusal text for a resource outside an agent's scope."""
    return f"{what} belongs to business number {phone_number_id}, which your token's scope does not include"


class AuthError(Exception):
    """A token was refused; ``reason`` says why in a few words (sent to the client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class TokenVerifier(Protocol):
    """What a plugin that verifies bearer tokens provides."""

    def verify(self, token: object) -> Agent:
        """The agent a token speaks for.

        Raises:
            AuthError: the token is missing, malformed, expired or otherwise refused.
        """
        ...


class BearerAuth:
    """The host's bearer-token check (``host.auth``), backed by the verifier a plugin registered."""

    def __init__(self) -> None:
        self._verifier: TokenVerifier | None = None
        self._by: str | None = None

    @property
    def provider(self) -> str | None:
        """The plugin whose verifier is in use, or ``None``."""
        return self._by

    def use(self, verifier: TokenVerifier, *, by: str) -> None:
        """Verify bearer tokens with ``verifier`` (registered by plugin ``by``).

        Raises:
            ValueError: another plugin registered a verifier already (one host, one token).
        """
        if self._verifier is not None and self._by != by:
            raise ValueError(f"plugin {self._by!r} already verifies bearer tokens on this host")
        self._verifier, self._by = verifier, by

    def verify(self, token: object) -> Agent:
        """Verify a bare token (no ``Bearer`` prefix needed); used by non-HTTP transports too.

        Raises:
            UnauthorizedError: refused (401, the reason in the message).
            ApiError: no plugin verifies tokens on this host (503).
        """
        if self._verifier is None:
            raise ApiError(
                "this route needs a bearer token but no plugin verifies tokens on this host: "
                "enable the crm_realtime plugin (plugins.crm_realtime in config.yaml)",
                code="unavailable",
                status_code=503,
            )
        try:
            return self._verifier.verify(token)
        except AuthError as exc:
            raise UnauthorizedError(exc.reason) from None

    async def authenticate(
        self,
        # Out of the schema: OpenAPI documents the header as the `bearerAuth` security scheme.
        authorization: Annotated[
            str | None, HeaderParameter(name="Authorization", include_in_schema=False)
        ] = None,
    ) -> Agent:
        """The Litestar provider of the ``agent`` dependency: the ``Authorization`` header, verified.

        Raises:
            UnauthorizedError: no header, not ``Bearer <token>``, or a refused token.
        """
        if not authorization:
            raise UnauthorizedError(
                "missing bearer token: send Authorization: Bearer <JWT> (try `zaphub token --sub you`)"
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <JWT>'")
        return self.verify(token)
