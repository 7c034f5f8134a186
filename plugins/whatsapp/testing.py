"""The whatsapp plugin's test kit: Meta's side of a test host (``zaphub_whatsapp`` fixture).

Found by :mod:`core.testing` through this plugin's entry point. :func:`defaults` turns the
sandbox on and sets a test app secret and verify token (values the test gives win);
:func:`kit` returns a :class:`WhatsAppKit` for a running host. Build payloads with
:mod:`plugins.whatsapp.webhook_builders`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plugins.whatsapp import webhook_builders as wb
from plugins.whatsapp.config import WhatsAppSettings
from plugins.whatsapp.routes import WEBHOOK_PATH

if TYPE_CHECKING:
    import httpx

    from core.testing import RunningHost

__all__ = ["TEST_APP_SECRET", "TEST_SANDBOX_TOKEN", "TEST_VERIFY_TOKEN", "WhatsAppKit", "defaults", "kit"]

TEST_APP_SECRET = "zaphub-test-app-secret-0123456789abcdef"
"""The app secret a test host gets unless the test sets one."""
TEST_VERIFY_TOKEN = "zaphub-test-verify-token"
"""The verify token a test host gets unless the test sets one."""
TEST_SANDBOX_TOKEN = "zaphub-test-sandbox-token"
"""The sandbox control token a test host gets (the kit sends it to read the recorded sends)."""

_SANDBOX_REQUESTS = "/_sandbox/graph/_sandbox/requests"


def defaults(section: dict[str, Any]) -> dict[str, Any]:
    """``plugins.whatsapp`` for a test: the sandbox and its controls on, test secrets (the test's win)."""
    return {
        "sandbox": True,
        "sandbox_token": TEST_SANDBOX_TOKEN,
        "app_secret": TEST_APP_SECRET,
        "verify_token": TEST_VERIFY_TOKEN,
        **section,
    }


class WhatsAppKit:
    """Posts signed webhooks to a running test host and reads what it sent to the sandbox's Graph.

    Args:
        running: the host (the ``zaphub`` fixture).
    """

    def __init__(self, running: RunningHost) -> None:
        self.running = running
        self.settings = running.host.settings("whatsapp", WhatsAppSettings)
        self._controls = {"X-Sandbox-Token": self.settings.sandbox_token}

    async def post(self, payload: Mapping[str, Any], *, expect: int | None = 200) -> httpx.Response:
        """POST a webhook body as Meta would: encoded like Meta, signed with the app secret.

        Args:
            payload: a full body, e.g. ``wb.envelope(messages=[wb.text("oi")])``.
            expect: the status to assert (``None`` to check it yourself).

        Returns:
            zaphub's answer (``200`` once everything in it is stored).
        """
        body, headers = wb.signed(payload, self.settings.app_secret)
        response = await self.running.http.post(WEBHOOK_PATH, content=body, headers=headers)
        if expect is not None:
            assert response.status_code == expect, (
                f"webhook answered {response.status_code}, expected {expect}: {response.text}"
            )
        return response

    async def receive(self, *messages: Mapping[str, Any], **envelope: Any) -> list[str]:
        """Deliver inbound messages (from the builders) in one webhook; returns their wamids.

        ``envelope`` takes :func:`~plugins.whatsapp.webhook_builders.envelope`'s keywords
        (``contacts``, ``phone_number_id``, ``statuses``…).
        """
        await self.post(wb.envelope(messages=messages, **envelope))
        return [str(m["id"]) for m in messages]

    async def statuses(self, *statuses: Mapping[str, Any]) -> None:
        """Deliver status updates (``wb.status(wamid, "read")``) in one webhook."""
        await self.post(wb.envelope(statuses=statuses))

    async def requests(self) -> list[dict[str, Any]]:
        """Every Graph request the sandbox recorded, oldest first (method, path, query, json…)."""
        response = await self.running.http.get(_SANDBOX_REQUESTS, headers=self._controls)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    async def sends(self) -> list[dict[str, Any]]:
        """The bodies of the messages the host sent to Graph, oldest first (mark-as-read excluded).

        Each is Graph's send body: ``{"messaging_product": "whatsapp", "to": "55…", "type":
        "text", "text": {"body": "…"}}``.
        """
        return [r["json"] for r in await self.requests() if _is_send(r)]

    async def wait_for_sends(self, count: int = 1, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` sends were recorded; returns them all (oldest first).

        Raises:
            AssertionError: fewer after ``timeout`` seconds (the message lists what was sent).
        """
        from core.testing import wait_for

        async def enough() -> list[dict[str, Any]] | None:
            sent = await self.sends()
            return sent if len(sent) >= count else None

        try:
            found: list[dict[str, Any]] = await wait_for(enough, timeout=timeout, what=f"{count} send(s)")
        except AssertionError:
            raise AssertionError(
                f"expected {count} send(s) within {timeout}s, the sandbox recorded {await self.sends()}"
            ) from None
        return found

    async def clear(self) -> None:
        """Forget the recorded requests (to assert on what comes next)."""
        (await self.running.http.delete(_SANDBOX_REQUESTS, headers=self._controls)).raise_for_status()


def _is_send(record: Mapping[str, Any]) -> bool:
    body = record.get("json")
    return (
        record.get("method") == "POST"
        and str(record.get("path", "")).endswith("/messages")
        and isinstance(body, dict)
        and "status" not in body  # mark-as-read / typing: {"status": "read", …}
    )


def kit(running: RunningHost) -> WhatsAppKit:
    """The kit :meth:`core.testing.RunningHost.kit` returns for ``whatsapp``."""
    return WhatsAppKit(running)
