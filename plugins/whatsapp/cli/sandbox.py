"""``zaphub sandbox``: run the Meta emulator of :mod:`plugins.whatsapp.sandbox` on its own port.

Its options default as :mod:`plugins.whatsapp.cli.defaults` says.
"""

from __future__ import annotations

import argparse
import os
import sys

from core.cli_types import Command
from plugins.whatsapp import webhook_builders as wb
from plugins.whatsapp.cli.defaults import (
    DEFAULT_APP_SECRET,
    DEFAULT_ZAPHUB_URL,
    WEBHOOK_PATH,
    defaults_from_config,
    pick,
    webhook_url,
)
from plugins.whatsapp.sandbox import SandboxOptions, create_sandbox_app

__all__ = ["sandbox_command"]

_SANDBOX_DESCRIPTION = """\
Run a local emulator of Meta's Graph API (the "sandbox"): it accepts the send, media and upload
calls zaphub makes, answers like Meta, and then posts signed sent/delivered/read status webhooks
back to zaphub. Point zaphub at it with plugins.whatsapp.graph_api_url: http://HOST:PORT.

Conventions: recipients ending in 0000 fail with 131026 (undeliverable); ending in 0047 fail
free-form messages with 131047 (outside the 24-hour window). Test controls live under
/_sandbox/ (requests, faults, inbound, statuses, deliveries): see docs or the module docstring.

Example:
  zaphub sandbox --port 8089 --webhook-url http://127.0.0.1:3000/meta-whatsapp/webhook
  curl -X POST localhost:8089/_sandbox/inbound -d '{"type": "text", "text": "Olá"}'
"""


def _delays(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3 or any(p < 0 for p in parts):
        raise argparse.ArgumentTypeError("give three non-negative seconds, e.g. 0.5,1,2")
    return parts[0], parts[1], parts[2]


def _configure_sandbox(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8089, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--webhook-url",
        help=f"where status webhooks go (default: $ZAPHUB_URL{WEBHOOK_PATH}, i.e. "
        f"{DEFAULT_ZAPHUB_URL}{WEBHOOK_PATH}); a base URL gets {WEBHOOK_PATH} appended",
    )
    parser.add_argument("--no-webhooks", action="store_true", help="answer Graph calls but send no webhooks")
    parser.add_argument(
        "--app-secret",
        help=f"secret that signs the webhooks; must equal zaphub's app_secret "
        f"(default: $WHATSAPP_APP_SECRET or {DEFAULT_APP_SECRET!r})",
    )
    parser.add_argument(
        "--access-token",
        help="token Graph calls must carry as 'Authorization: Bearer …' "
        "(default: $WHATSAPP_ACCESS_TOKEN; unset = accept any token)",
    )
    parser.add_argument(
        "--phone-number-id",
        help=f"the business phone number id it knows (default: $WHATSAPP_PHONE_NUMBER_ID or "
        f"{wb.DEFAULT_PHONE_NUMBER_ID})",
    )
    parser.add_argument(
        "--status-delays",
        type=_delays,
        default=(0.05, 0.10, 0.15),
        metavar="SENT,DELIVERED,READ",
        help="seconds after a send at which each status webhook goes out (default: 0.05,0.1,0.15)",
    )


def _sandbox_options(args: argparse.Namespace) -> SandboxOptions:
    config = defaults_from_config(args)
    target: str | None = None
    if not args.no_webhooks:
        base = os.environ.get("ZAPHUB_URL") or config.get("url") or DEFAULT_ZAPHUB_URL
        target = webhook_url(args.webhook_url or base)
    return SandboxOptions(
        app_secret=pick(args.app_secret, config, "app_secret", "WHATSAPP_APP_SECRET", DEFAULT_APP_SECRET),
        webhook_url=target,
        access_token=pick(args.access_token, config, "access_token", "WHATSAPP_ACCESS_TOKEN", "") or None,
        phone_number_id=pick(
            args.phone_number_id,
            config,
            "phone_number_id",
            "WHATSAPP_PHONE_NUMBER_ID",
            wb.DEFAULT_PHONE_NUMBER_ID,
        ),
        waba_id=pick(None, config, "waba_id", "WHATSAPP_BUSINESS_ACCOUNT_ID", wb.DEFAULT_WABA_ID),
        status_delays=args.status_delays,
    )


def _run_sandbox(args: argparse.Namespace) -> int:
    import uvicorn  # only this command needs the server

    options = _sandbox_options(args)
    base = f"http://{args.host}:{args.port}"
    print(f"Meta sandbox on {base} (phone_number_id {options.phone_number_id})")
    print(f"  point zaphub at it:  plugins.whatsapp.graph_api_url: {base}")
    print(f"  status webhooks to:  {options.webhook_url or '(none: --no-webhooks)'}")
    print(f"  Graph token:         {'required' if options.access_token else 'any'}")
    print(f"  controls:            {base}/_sandbox/requests, faults, inbound, statuses, deliveries")
    sys.stdout.flush()
    uvicorn.run(create_sandbox_app(options), host=args.host, port=args.port, log_level="info")
    return 0


def sandbox_command() -> Command:
    """The ``zaphub sandbox`` sub-command: run the Meta emulator under uvicorn."""
    return Command(
        name="sandbox",
        help="run a local Meta Graph API emulator that also sends status webhooks",
        configure=_configure_sandbox,
        run=_run_sandbox,
        description=_SANDBOX_DESCRIPTION,
    )
