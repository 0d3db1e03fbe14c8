"""The ``piton`` command (also ``python -m piton``).

Every command takes ``--store URL``; without it, ``$PITON_STORE``, else the embedded
``sqlite:///.piton/piton.db``.
"""

from __future__ import annotations

import click

from piton.cli._act import cancel, resume, send
from piton.cli._draw import draw
from piton.cli._maintain import doctor, gc
from piton.cli._run import fork, run, watch
from piton.cli._runs import runs, show
from piton.cli._serve import serve
from piton.cli._worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="piton")
def main() -> None:
    """piton: durable, event-driven workflows."""


main.add_command(run)
main.add_command(watch)
main.add_command(fork)
main.add_command(worker)
main.add_command(serve)
main.add_command(runs)
main.add_command(show)
main.add_command(send)
main.add_command(cancel)
main.add_command(resume)
main.add_command(gc)
main.add_command(doctor)
main.add_command(draw)

__all__ = ["main"]
