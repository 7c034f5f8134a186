"""Types shared by the CLI and the plugins that contribute sub-commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command"]


@dataclass(frozen=True)
class Command:
    """A ``zaphub`` sub-command contributed by a plugin through ``register_commands``.

    Attributes:
        name: the sub-command (``sandbox`` → ``zaphub sandbox``).
        help: one line shown by ``zaphub --help``.
        configure: adds the command's arguments to its ``argparse`` parser. The global
            ``--config`` option is already there (``args.config``: a path or ``None``).
        run: does the work and returns the process exit code. Sync: use ``asyncio.run`` inside.
        description: longer text for ``zaphub NAME --help``; defaults to ``help``.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
