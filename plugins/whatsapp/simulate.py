"""``zaphub sandbox`` and ``zaphub simulate``: try zaphub without a Meta account.

``zaphub sandbox`` runs the Meta emulator of :mod:`plugins.whatsapp.sandbox` on its own port;
``zaphub simulate`` posts signed webhooks (built with :mod:`plugins.whatsapp.webhook_builders`) to a
running zaphub, as Meta would. Both are also runnable as ``python -m plugins.whatsapp.simulate``.

Each option is taken from, in order: the command line, the environment
(``WHATSAPP_APP_SECRET``, ``WHATSAPP_PHONE_NUMBER_ID``, ``WHATSAPP_ACCESS_TOKEN``,
``WHATSAPP_BUSINESS_ACCOUNT_ID``, ``ZAPHUB_URL``), zaphub's config file (see
:func:`_defaults_from_config`), then the development defaults of the bundled ``config.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from core.cli_types import Command
from plugins.whatsapp import webhook_builders as wb
from plugins.whatsapp.sandbox import INBOUND_TYPES, SandboxOptions, create_sandbox_app, inbound_message

__all__ = ["main", "sandbox_command", "simulate_command"]

DEFAULT_APP_SECRET = "dev-app-secret"
DEFAULT_ZAPHUB_URL = "http://127.0.0.1:3000"
WEBHOOK_PATH = "/meta-whatsapp/webhook"
STATUSES = ("sent", "delivered", "read", "played", "failed")


def _defaults_from_config(args: argparse.Namespace) -> dict[str, str]:
    """Settings found in zaphub's config file (``--config``, ``ZAPHUB_CONFIG`` or ./config.yaml).

    Keys are named like the options of these commands; keys the config leaves empty are left
    out, so the environment and the built-in defaults still apply. An unreadable or invalid
    config is not an error here: these commands also serve hosts configured elsewhere.
    """
    from core.cli import load_plugin_settings
    from core.errors import ZaphubError

    try:
        config, settings = load_plugin_settings(getattr(args, "config", None), "whatsapp")
    except ZaphubError:
        return {}
    host = config.server.host if config.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    found = {
        "app_secret": settings.app_secret,
        "phone_number_id": settings.phone_number_id,
        "access_token": settings.access_token,
        "waba_id": settings.business_account_id,
        "url": f"http://{host}:{config.server.port}",
    }
    return {k: v for k, v in found.items() if v}


def _pick(flag: str | None, config: Mapping[str, str], key: str, env: str, default: str) -> str:
    # A flag beats an environment variable, which beats a config file found in the directory.
    if flag is not None:
        return flag
    return os.environ.get(env) or config.get(key) or default


def _webhook_url(url: str) -> str:
    """Accept zaphub's base URL as well as the full webhook URL."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(path=WEBHOOK_PATH)) if parsed.path in ("", "/") else url


# --- zaphub sandbox -------------------------------------------------------------------------------

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
    config = _defaults_from_config(args)
    webhook_url: str | None = None
    if not args.no_webhooks:
        base = os.environ.get("ZAPHUB_URL") or config.get("url") or DEFAULT_ZAPHUB_URL
        webhook_url = _webhook_url(args.webhook_url or base)
    return SandboxOptions(
        app_secret=_pick(args.app_secret, config, "app_secret", "WHATSAPP_APP_SECRET", DEFAULT_APP_SECRET),
        webhook_url=webhook_url,
        access_token=_pick(args.access_token, config, "access_token", "WHATSAPP_ACCESS_TOKEN", "") or None,
        phone_number_id=_pick(
            args.phone_number_id,
            config,
            "phone_number_id",
            "WHATSAPP_PHONE_NUMBER_ID",
            wb.DEFAULT_PHONE_NUMBER_ID,
        ),
        waba_id=_pick(None, config, "waba_id", "WHATSAPP_BUSINESS_ACCOUNT_ID", wb.DEFAULT_WABA_ID),
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


# --- zaphub simulate ------------------------------------------------------------------------------

_SIMULATE_DESCRIPTION = """\
Post a signed webhook to a running zaphub, exactly as Meta would: an inbound message from a
customer, or a status (delivered, read, failed…) of a message zaphub sent. It prints what it
sent and zaphub's answer, and exits non-zero when zaphub is unreachable or does not answer 200.

Examples:
  zaphub simulate message --text "Olá! Qual o preço?"
  zaphub simulate message --type image --text "Segue a foto" --from 5511988887777 --name "Maria"
  zaphub simulate status --wamid wamid.HBgL... --status failed --error-code 131047
"""


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help=f"zaphub's webhook URL or base URL (default: $ZAPHUB_URL or {DEFAULT_ZAPHUB_URL}; "
        f"{WEBHOOK_PATH} is appended to a base URL)",
    )
    parser.add_argument(
        "--app-secret",
        help=f"signs the webhook; must equal zaphub's plugins.whatsapp.app_secret "
        f"(default: $WHATSAPP_APP_SECRET or {DEFAULT_APP_SECRET!r})",
    )
    parser.add_argument(
        "--phone-number-id",
        help=f"the business number the webhook is for (default: $WHATSAPP_PHONE_NUMBER_ID or "
        f"{wb.DEFAULT_PHONE_NUMBER_ID})",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for zaphub (default: 10)"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _configure_simulate(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="simulate_what", metavar="{message,status}", required=True)
    msg = sub.add_parser(
        "message",
        help="an inbound message from a customer",
        description="Post a signed inbound-message webhook to zaphub, as Meta does when a customer writes.",
        epilog='Example: zaphub simulate message --text "Olá" --from 5511999999999 --name "João Silva"',
    )
    msg.add_argument(
        "--text",
        help="what the customer wrote: the text, or the caption of an image/video/document, "
        "the emoji of a reaction, the title of a tapped button (default: 'Olá!' for text)",
    )
    msg.add_argument("--type", default="text", choices=INBOUND_TYPES, help="message type (default: text)")
    msg.add_argument(
        "--from",
        dest="from_",
        metavar="NUMBER",
        default=wb.DEFAULT_FROM,
        help="the customer's number, digits only (default: %(default)s)",
    )
    msg.add_argument("--name", help="the customer's WhatsApp profile name (default: one derived from --from)")
    msg.add_argument("--count", type=_positive, default=1, help="send N messages, one webhook each")
    msg.add_argument("--media-id", help="media id of an image/audio/… (default: one the sandbox serves)")
    msg.add_argument("--reply-to", metavar="WAMID", help="make it a reply to this message")
    _add_target_options(msg)
    status = sub.add_parser(
        "status",
        help="a status of a message zaphub sent",
        description="Post a signed status webhook to zaphub, as Meta does when a sent message is "
        "delivered, read or fails.",
        epilog="Example: zaphub simulate status --wamid wamid.HBgL... --status read",
    )
    status.add_argument("--wamid", required=True, help="the wamid Meta returned for the sent message")
    status.add_argument("--status", default="delivered", choices=STATUSES, help="(default: delivered)")
    status.add_argument(
        "--error-code",
        type=int,
        help="Meta error code of a failed status (default 131026 when --status failed)",
    )
    status.add_argument(
        "--recipient",
        default=wb.DEFAULT_FROM,
        help="the customer's number (default: %(default)s)",
    )
    _add_target_options(status)
    for sub_parser in (msg, status):
        # Also accept --config after the sub-command; SUPPRESS keeps the outer value when absent.
        sub_parser.add_argument(
            "--config", metavar="PATH", default=argparse.SUPPRESS, help="config file to read defaults from"
        )


def _webhooks(args: argparse.Namespace, phone_number_id: str) -> list[dict[str, Any]]:
    if args.simulate_what == "status":
        item = wb.status(args.wamid, args.status, recipient_id=args.recipient, error_code=args.error_code)
        return [wb.envelope(statuses=[item], phone_number_id=phone_number_id)]
    bodies = []
    for _ in range(args.count):
        message = inbound_message(
            args.type, args.text, from_=args.from_, media_id=args.media_id, reply_to=args.reply_to
        )
        contact = wb.contact(args.from_, args.name)
        bodies.append(wb.envelope(messages=[message], contacts=[contact], phone_number_id=phone_number_id))
    return bodies


def _run_simulate(args: argparse.Namespace) -> int:
    config = _defaults_from_config(args)
    base = args.url or os.environ.get("ZAPHUB_URL") or config.get("url") or DEFAULT_ZAPHUB_URL
    url = _webhook_url(base)
    secret = _pick(args.app_secret, config, "app_secret", "WHATSAPP_APP_SECRET", DEFAULT_APP_SECRET)
    phone_number_id = _pick(
        args.phone_number_id,
        config,
        "phone_number_id",
        "WHATSAPP_PHONE_NUMBER_ID",
        wb.DEFAULT_PHONE_NUMBER_ID,
    )
    with httpx.Client(timeout=args.timeout) as client:
        for payload in _webhooks(args, phone_number_id):
            body = wb.encode(payload)
            signature = wb.sign(body, secret)
            print(f"POST {url}\nX-Hub-Signature-256: {signature}")
            print(json.dumps(payload, ensure_ascii=False))
            try:
                answer = client.post(
                    url,
                    content=body,
                    headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
                )
            except httpx.ConnectError as exc:
                print(f"cannot reach {url}: is `zaphub run` running? ({exc})", file=sys.stderr)
                return 1
            except httpx.HTTPError as exc:
                print(f"no answer from {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            line = f"<- {answer.status_code} {answer.reason_phrase} {answer.text[:2000]}".rstrip()
            if answer.status_code != 200:
                print(line, file=sys.stderr)
                if answer.status_code == 401:
                    print(
                        "zaphub refused the signature: --app-secret must equal its "
                        "plugins.whatsapp.app_secret",
                        file=sys.stderr,
                    )
                return 1
            print(line)
    return 0


def simulate_command() -> Command:
    """The ``zaphub simulate`` sub-command: post signed webhooks to a running zaphub."""
    return Command(
        name="simulate",
        help="post a signed Meta webhook (an inbound message or a status) to a running zaphub",
        configure=_configure_simulate,
        run=_run_simulate,
        description=_SIMULATE_DESCRIPTION,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sandbox`` or ``simulate`` without the ``zaphub`` CLI (``python -m`` this module)."""
    parser = argparse.ArgumentParser(prog="python -m plugins.whatsapp.simulate")
    parser.add_argument("--config", help="zaphub's config file (default: $ZAPHUB_CONFIG or ./config.yaml)")
    commands = {c.name: c for c in (sandbox_command(), simulate_command())}
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands.values():
        command.configure(sub.add_parser(command.name, help=command.help, description=command.description))
    args = parser.parse_args(argv)
    return commands[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
