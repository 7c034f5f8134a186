"""``zaphub webhooks``: list and replay dead letters, show each subscriber's position."""

from __future__ import annotations

import argparse
import asyncio
import time

from core.cli import load_plugin_settings
from core.cli_types import Command
from core.errors import ConfigError
from core.storage import PluginStore, Storage
from plugins.webhooks.client import WebhookClient
from plugins.webhooks.config import Subscriber, WebhooksSettings
from plugins.webhooks.deadletters import DeadLetter, list_dead_letters
from plugins.webhooks.worker import PLUGIN, cursor_name

__all__ = ["webhooks_command"]

_DESCRIPTION = """\
Outgoing webhooks (plugins.webhooks): where each subscriber is, and the events it
never accepted within its retry window (dead letters).

  zaphub webhooks status                         each subscriber's cursor and backlog
  zaphub webhooks dead-letters                   every dead letter, oldest first
  zaphub webhooks dead-letters --subscriber crm  one subscriber's
  zaphub webhooks replay --subscriber crm        POST them again (signed as before, now)
  zaphub webhooks replay --subscriber crm --event 1234 --event 1240

A replay POSTs from this command, once per event; a 2xx removes the dead letter, anything
else keeps it (exit status 1). It runs beside the live stream, so replayed events arrive
after newer ones: receivers order by the id in the body.
"""


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("status", help="each subscriber's cursor, backlog and dead letters")
    dead = sub.add_parser("dead-letters", help="list dead letters")
    dead.add_argument("--subscriber", default=None, help="only this subscriber (its name)")
    replay = sub.add_parser("replay", help="POST dead letters again; delivered ones are removed")
    replay.add_argument("--subscriber", required=True, help="the subscriber (its name, see status)")
    replay.add_argument(
        "--event",
        type=int,
        action="append",
        default=None,
        help="only this event id (repeatable); default: all",
    )


def _find(settings: WebhooksSettings, name: str) -> Subscriber:
    for sub in settings.subscribers:
        if sub.label == name:
            return sub
    names = ", ".join(s.label for s in settings.subscribers) or "none configured"
    raise ConfigError(f"--subscriber {name!r}: no subscriber has that name; subscribers: {names}")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def _status(storage: Storage, store: PluginStore, settings: WebhooksSettings) -> int:
    last = (await storage.event_bounds()).last
    for sub in settings.subscribers:
        cursor = await storage.get_cursor(cursor_name(sub))
        dead = len(await list_dead_letters(store, sub.key))
        position = "not started" if cursor is None else f"cursor={cursor} behind={max(0, last - cursor)}"
        print(f"{sub.label}\t{sub.url}\t{position}\tdead_letters={dead}")
    return 0


async def _list(store: PluginStore, settings: WebhooksSettings, name: str | None) -> int:
    key = _find(settings, name).key if name is not None else None
    letters = await list_dead_letters(store, key)
    if not letters:
        print("no dead letters")
        return 0
    print("subscriber\tevent\ttype\tattempts\tdead_at\tlast_error")
    for _, d in letters:
        print(f"{d.subscriber}\t{d.event_id}\t{d.type}\t{d.attempts}\t{_when(d.dead_at)}\t{d.last_error}")
    return 0


async def _replay(store: PluginStore, sub: Subscriber, events: list[int] | None) -> int:
    letters: list[tuple[str, DeadLetter]] = await list_dead_letters(store, sub.key)
    if events is not None:
        missing = sorted(set(events) - {d.event_id for _, d in letters})
        if missing:
            raise ConfigError(
                f"--event: no dead letter of {sub.label!r} for event(s) {', '.join(map(str, missing))}"
            )
        letters = [(k, d) for k, d in letters if d.event_id in events]
    client = WebhookClient()
    failed = 0
    try:
        for key, d in letters:
            attempt = await client.post(
                sub.url, sub.secret, d.event_id, d.body.encode(), timeout=sub.timeout_seconds
            )
            if attempt.delivered:
                await store.delete(key)
                print(f"event {d.event_id}: delivered (HTTP {attempt.status})")
            else:
                failed += 1
                print(f"event {d.event_id}: failed ({attempt.error}); kept")
    finally:
        await client.aclose()
    print(f"replayed {len(letters) - failed} of {len(letters)} to {sub.label}")
    return 1 if failed else 0


async def _main(args: argparse.Namespace) -> int:
    config, settings = load_plugin_settings(args.config, PLUGIN)
    storage = Storage(config.storage)
    await storage.open()
    try:
        store = PluginStore(storage, PLUGIN)
        if args.action == "status":
            return await _status(storage, store, settings)
        if args.action == "dead-letters":
            return await _list(store, settings, args.subscriber)
        return await _replay(store, _find(settings, args.subscriber), args.event)
    finally:
        await storage.close()


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


def webhooks_command() -> Command:
    """The ``zaphub webhooks`` sub-command."""
    return Command(
        name="webhooks",
        help="outgoing webhooks: subscriber status, dead letters, replay",
        configure=_configure,
        run=_run,
        description=_DESCRIPTION,
    )
