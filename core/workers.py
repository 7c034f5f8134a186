"""``zaphub run --workers N``: N processes serving one port, for machines with more cores.

The workers are uvicorn's multiprocess supervisor (:class:`uvicorn.supervisors.Multiprocess`):
the parent binds the socket and starts N processes that accept from it (the kernel spreads the
connections), answers their health checks, starts a new one when one dies, and on SIGINT or
SIGTERM (Ctrl-C) stops them all, each with the graceful shutdown of a single ``zaphub run``.

Each worker is a full host, exactly like several ``zaphub run`` behind a load balancer
(docs/operations.md, "Several processes or machines"), so the same requirements hold and are
checked before any worker starts (:func:`workers_problem`): PostgreSQL (a SQLite file has one
writer), Redis (a Socket.IO client is connected to one worker and must receive the events of all)
and, with ``crm_realtime``, the websocket transport only (long-polling needs every request of a
client on one process; workers sharing a port have no affinity). What must run once runs once
because it already does across processes: the hook dispatcher and the outgoing-webhooks worker
hold a PostgreSQL advisory lock, outbox rows are leased with ``FOR UPDATE SKIP LOCKED``, and the
handoff sweep is a conditional ``UPDATE … RETURNING``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from sqlalchemy.engine import make_url

from core.config import Config
from core.server import freeze_startup_heap

__all__ = ["WorkerApp", "workers_problem"]


def workers_problem(config: Config, settings: dict[str, Any], workers: int) -> tuple[str, str] | None:
    """Why ``config`` cannot run with ``workers`` processes (message and key), or ``None``.

    Args:
        config: the validated config.
        settings: the validated plugin settings (:func:`core.preflight.preflight`).
        workers: ``--workers``.
    """
    run = f"zaphub run --workers {workers}"
    if make_url(config.storage.url).get_backend_name() != "postgresql":
        return (
            f"{run} needs PostgreSQL: a SQLite file is written by one process at a time. Set "
            "storage.url to postgresql://user:password@host/db (and redis.url), or run without --workers",
            "storage.url",
        )
    if not config.redis.url:
        return (
            f"{run} needs Redis: each Socket.IO client is connected to one worker and receives the "
            "events of the others through it. Set redis.url (redis://host:6379/0), or run without --workers",
            "redis.url",
        )
    crm = settings.get("crm_realtime")
    if crm is not None and "polling" in getattr(crm, "transports", ()):
        return (
            f"{run}: Socket.IO long-polling needs every request of a client to reach the same "
            "process, and the workers share the port without affinity. Set "
            "plugins.crm_realtime.transports: [websocket] (clients connect with transports: "
            "['websocket']), or run one process per port behind a load balancer with sticky sessions",
            "plugins.crm_realtime.transports",
        )
    return None


class WorkerApp:
    """The app factory a worker process calls (uvicorn ``factory=True``); picklable.

    uvicorn starts workers with ``spawn`` and sends them their config pickled: the zaphub
    config travels in this object and each worker builds its own app (its own host, database
    pool, Redis connections) from it.
    """

    def __init__(self, config: Config, listening: str) -> None:
        """``listening`` is printed by each worker once it serves (with its process id)."""
        self.config = config
        self.listening = listening

    def __call__(self) -> Any:
        """Build the app in the worker: logging, then :func:`core.app.create_app`."""
        from core.app import create_app
        from core.logs import setup_logging

        setup_logging(self.config.logging)
        return _Lifespan(create_app(self.config), f"{self.listening} (worker {os.getpid()})")


class _Lifespan:
    """Watches the app's lifespan: says when the worker serves, and ends a worker that cannot start.

    uvicorn's supervisor stops everything when a worker exits with ``STARTUP_FAILURE`` (the app
    would fail the same way in every new worker), but a worker whose app failed its startup
    returns normally and would be started again twice a second. The startup error is logged by
    uvicorn before this exits.
    """

    def __init__(self, app: Any, listening: str) -> None:
        self.app = app
        self.listening = listening

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watched(message: Any) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                freeze_startup_heap()  # as `zaphub run` does with one process
                print(self.listening, file=sys.stderr, flush=True)
            elif message["type"] == "lifespan.startup.failed":
                from uvicorn.config import STARTUP_FAILURE

                sys.stderr.flush()
                os._exit(STARTUP_FAILURE)  # nothing serves yet; the parent stops the others

        await self.app(scope, receive, watched)
