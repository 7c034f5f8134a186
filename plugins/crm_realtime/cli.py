"""``zaphub token``: a JWT this host accepts, for trying a CRM client."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.cli import load_plugin_settings
from core.cli_types import Command
from core.errors import ConfigError
from plugins.crm_realtime.auth import AuthError, TokenVerifier, issue_token

__all__ = ["token_command"]

_DESCRIPTION = """\
Print a JWT signed with plugins.crm_realtime's key, for a CRM client: Socket.IO
(io(url + "/crm", {auth: {token}})) and REST (Authorization: Bearer TOKEN).
The token alone goes to stdout, so TOKEN=$(zaphub token --sub ana) works.

Examples:
  zaphub token --sub ana
  zaphub token --sub crm-backend --ttl 3600 --scope 100000000000002
  zaphub token --sub ana --private-key idp-private.pem     # hosts verifying RS256/ES256 tokens
"""


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sub", required=True, help="the token's subject: an agent's name or id")
    parser.add_argument("--ttl", type=float, default=86_400, help="seconds until it expires (default: 86400)")
    parser.add_argument(
        "--scope",
        default=None,
        help="restrict the agent to these business numbers: comma-separated phone number ids (default: all)",
    )
    parser.add_argument(
        "--private-key",
        metavar="FILE",
        default=None,
        help="PEM private key matching plugins.crm_realtime.jwt_public_key (RS256/ES256 configs)",
    )


def _run(args: argparse.Namespace) -> int:
    _, settings = load_plugin_settings(args.config, "crm_realtime")
    if args.ttl <= 0:
        raise ConfigError("--ttl must be a positive number of seconds")
    scope = [s.strip() for s in args.scope.split(",") if s.strip()] if args.scope else None
    private_key = None
    if args.private_key:
        try:
            private_key = Path(args.private_key).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError(f"--private-key: cannot read {args.private_key!r} ({exc.strerror})") from None
    try:
        token = issue_token(settings, sub=args.sub, ttl=args.ttl, scope=scope, private_key=private_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        TokenVerifier(settings).verify(token)  # a key that does not match is better caught here
    except AuthError as exc:
        raise ConfigError(
            f"this host would refuse the token ({exc.reason}): does --private-key match jwt_public_key?"
        ) from None
    if settings.short_secret and private_key is None:
        print(
            "warning: plugins.crm_realtime.jwt_secret is shorter than 32 bytes (set CRM_JWT_SECRET)",
            file=sys.stderr,
        )
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + args.ttl))
    print(f"sub={args.sub} expires={expires} scope={','.join(scope) if scope else 'all'}", file=sys.stderr)
    print(token)
    return 0


def token_command() -> Command:
    """The ``zaphub token`` sub-command."""
    return Command(
        name="token",
        help="print a JWT for a CRM client (Socket.IO auth.token and REST bearer)",
        configure=_configure,
        run=_run,
        description=_DESCRIPTION,
    )
