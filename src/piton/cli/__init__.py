"""The ``piton`` command (also ``python -m piton``).

Every command takes ``--store URL``; without it, ``$PITON_STORE``, else the embedded
``sqlite:///.piton/piton.db``.
"""

from __future__ import annotations

import importlib

import click

# each command and where it is defined, in the order --help lists them; a command's module
# is imported only when it runs (``piton runs`` must not pay for the workflow runtime)
COMMANDS = {
    "run": "piton.cli._run:run",
    "watch": "piton.cli._run:watch",
    "fork": "piton.cli._run:fork",
    "worker": "piton.cli._worker:worker",
    "serve": "piton.cli._serve:serve",
    "runs": "piton.cli._runs:runs",
    "show": "piton.cli._runs:show",
    "send": "piton.cli._act:send",
    "cancel": "piton.cli._act:cancel",
    "resume": "piton.cli._act:resume",
    "gc": "piton.cli._maintain:gc",
    "doctor": "piton.cli._maintain:doctor",
    "draw": "piton.cli._draw:draw",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attr = where.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="piton")
def main() -> None:
    """piton: durable, event-driven workflows."""


__all__ = ["COMMANDS", "main"]
