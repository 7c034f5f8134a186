"""The event loop's CPU for one webhook on the HTTP path, in process: no sockets, no database.

One signed webhook (one text message, as ``bench/webhooks.py`` sends) is handed to the app as
uvicorn hands it (``ProxyHeadersMiddleware`` around ``create_app``'s app, a complete body on the
first ``receive``) many times in a row; the figure is CPU time (``time.process_time``) per
request, the least of several repeats. The store is replaced by a no-op, so what is measured is
exactly what runs on the event loop between uvicorn's parser and the database: middleware, routing,
body timeout, signature, decode, the answer. Steadier than a whole-server run on a shared machine,
so it shows levers of a few microseconds that ``bench/webhooks.py`` cannot separate from the noise.

    python bench/webhook_path.py                 # a stored message (the database stubbed)
    python bench/webhook_path.py --payload ignored   # another `object`: answered without storing
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware  # noqa: E402

from core.app import create_app  # noqa: E402
from core.config import parse_config  # noqa: E402
from plugins.whatsapp import webhook_builders as wb  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123"


async def measure(app: Any, body: bytes, n: int, repeat: int) -> tuple[list[float], dict[int, int]]:
    """CPU µs per request for each of ``repeat`` rounds of ``n`` requests, and the statuses answered."""
    headers = [
        (b"host", b"127.0.0.1:3000"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-hub-signature-256", wb.sign(body, SECRET).encode()),
        (b"user-agent", b"bench"),
    ]
    statuses: dict[int, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    def scope() -> dict[str, Any]:  # what uvicorn's httptools protocol builds
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 3000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "POST",
            "root_path": "",
            "path": "/meta-whatsapp/webhook",
            "raw_path": b"/meta-whatsapp/webhook",
            "query_string": b"",
            "headers": headers,
            "state": {},
        }

    for _ in range(n // 10):  # warm-up
        await app(scope(), receive, send)
    rounds = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(n):
            await app(scope(), receive, send)
        rounds.append((time.process_time() - started) / n * 1e6)
    return rounds, statuses


def main() -> None:
    """Print the CPU µs per webhook of this checkout's HTTP path."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payload", choices=["message", "ignored"], default="message")
    parser.add_argument("--n", type=int, default=10_000, help="requests per round")
    parser.add_argument("--repeat", type=int, default=9, help="rounds (the least is printed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(
            {
                "storage": {"url": f"sqlite:///{tmp}/z.db"},
                "plugins": {
                    "whatsapp": {
                        "app_secret": SECRET,
                        "verify_token": "bench",
                        "phone_number_id": wb.DEFAULT_PHONE_NUMBER_ID,
                        "access_token": "bench",
                        "sandbox": False,
                    }
                },
            },
            env={},
        )
        app: Any = create_app(config)

        async def stored(messages: Any, statuses: Any) -> None:  # the database is not measured here
            return None

        app.state.host.ingest.submit = stored
        if args.payload == "message":
            body = wb.encode(wb.envelope(messages=[wb.text("Olá, mensagem 1", from_="5511900000001")]))
        else:
            body = wb.encode({"object": "page", "entry": []})
        outer = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")  # as uvicorn wraps it
        rounds, statuses = asyncio.run(measure(outer, body, args.n, args.repeat))
    print(
        f"{args.payload}: {min(rounds):.1f} µs CPU per webhook (least of {args.repeat} rounds of {args.n}; "
        f"median {sorted(rounds)[len(rounds) // 2]:.1f}); answers {statuses}"
    )


if __name__ == "__main__":
    main()
