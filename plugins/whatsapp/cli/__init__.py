"""The ``zaphub`` commands of the whatsapp plugin: try zaphub without a Meta account.

- ``sandbox.py``: ``zaphub sandbox`` runs the Meta emulator on its own port.
- ``simulate.py``: ``zaphub simulate`` posts signed webhooks to a running zaphub.
- ``defaults.py``: where their options come from when the command line does not say.

Both also run without the ``zaphub`` console script: ``python -m plugins.whatsapp.cli sandbox …``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from core.cli_types import Command
from plugins.whatsapp.cli.sandbox import sandbox_command
from plugins.whatsapp.cli.simulate import simulate_command

__all__ = ["commands", "main", "sandbox_command", "simulate_command"]


def commands() -> list[Command]:
    """``zaphub sandbox`` and ``zaphub simulate``."""
    return [sandbox_command(), simulate_command()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sandbox`` or ``simulate`` without the ``zaphub`` CLI (``python -m plugins.whatsapp.cli``)."""
    parser = argparse.ArgumentParser(prog="python -m plugins.whatsapp.cli")
    parser.add_argument("--config", help="zaphub's config file (default: $ZAPHUB_CONFIG or ./config.yaml)")
    by_name = {c.name: c for c in commands()}
    sub = parser.add_subparsers(dest="command", required=True)
    for command in by_name.values():
        command.configure(sub.add_parser(command.name, help=command.help, description=command.description))
    args = parser.parse_args(argv)
    return by_name[args.command].run(args)
