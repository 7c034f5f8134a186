"""``zaphub simulate``: post signed webhooks to a running zaphub, as Meta would.

An inbound message from a customer, or a status of a message zaphub sent, built with
:mod:`plugins.whatsapp.webhook_builders`. Its options default as :mod:`plugins.whatsapp.cli.defaults`
says.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

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
from plugins.whatsapp.sandbox import INBOUND_TYPES, inbound_message

__all__ = ["STATUSES", "simulate_command"]

STATUSES = ("sent", "delivered", "read", "played", "failed")


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
        "the emoji of a reaction, the new text of an edit, the title of a tapped button "
        "(default: 'Olá!' for text)",
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
    msg.add_argument(
        "--reply-to",
        metavar="WAMID",
        help="make it a reply to this message; with --type reaction, edit or revoke: the message it changes",
    )
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
    config = defaults_from_config(args)
    base = args.url or os.environ.get("ZAPHUB_URL") or config.get("url") or DEFAULT_ZAPHUB_URL
    url = webhook_url(base)
    secret = pick(args.app_secret, config, "app_secret", "WHATSAPP_APP_SECRET", DEFAULT_APP_SECRET)
    phone_number_id = pick(
        args.phone_number_id,
        config,
        "phone_number_id",
        "WHATSAPP_PHONE_NUMBER_ID",
        wb.DEFAULT_PHONE_NUMBER_ID,
    )
    try:
        payloads = _webhooks(args, phone_number_id)
    except ValueError as exc:  # an edit or revoke without the message it changes
        print(f"zaphub simulate: {exc}", file=sys.stderr)
        return 2
    with httpx.Client(timeout=args.timeout) as client:
        for payload in payloads:
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
