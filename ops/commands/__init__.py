"""Pluggable ``run.py`` commands. Each module in :data:`MODULES` defines::

    NAME: str                                   # the subcommand
    HELP: str                                   # one line for ``run.py --help``
    def add_arguments(p: argparse.ArgumentParser) -> None
    async def run(args: argparse.Namespace, settings: config.settings.Settings) -> int   # exit status

``run.py`` adds the common flags (--config, --set, --nats, --log-level) and loads the settings.
Raise :class:`ops.commands.CommandError` for a failure the user can fix (exit 1, message printed), or
:class:`ops.commands.UsageError` for bad flags (exit 2).
"""

from __future__ import annotations

#: Modules providing extra commands, in ``--help`` order.
MODULES: list[str] = [
    "ops.commands.fetch",
    "ops.commands.verify",
    "ops.commands.export",
    "ops.commands.route",
    "ops.commands.gate",
    "ops.commands.bench",
    "ops.commands.env_check",
    "ops.commands.nats_auth",
    "ops.commands.fleet",
    "ops.commands.status",
    "ops.commands.train",
    "ops.commands.evaluator",
]


class CommandError(Exception):
    """A command failed for a reason the message explains (exit status 1)."""


class UsageError(Exception):
    """Bad flags or arguments (exit status 2)."""
