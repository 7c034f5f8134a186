"""The floor of the webhook benchmark: a bare Litestar route reading the webhook's body.

Served by the same uvicorn configuration as ``zaphub run`` (:func:`core.server.uvicorn_config`),
so the distance between its CPU per request and zaphub's CPU per webhook is what zaphub's own
work costs: the signature, the decode, the transaction, the fan-out.

    python -m bench._floor --port 8123
"""

from __future__ import annotations

import argparse
import socket
import sys

import uvicorn
from litestar import Litestar, Request, Response, post

from core.config import ServerConfig
from core.server import uvicorn_config


@post("/meta-whatsapp/webhook", status_code=200)
async def webhook(request: Request) -> Response[bytes]:
    """Read the whole body, answer a short JSON like zaphub's."""
    body = await request.body()
    return Response(b'{"received":1}' if body else b"{}", media_type="application/json")


def main() -> None:
    """Serve the floor app on ``--port`` until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    app = Litestar([webhook], openapi_config=None)
    config = uvicorn_config(app, ServerConfig(host="127.0.0.1", port=args.port), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
