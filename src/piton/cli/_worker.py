"""``piton worker``: run the queued and runnable runs of some workflows until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from piton.cli._common import (
    DURATION,
    load_workflows,
    log_level_option,
    setup_logging,
    store_option,
    store_url,
)
from piton.errors import PitonError
from piton.worker import Worker

log = logging.getLogger("piton.worker")

HARD_STOP = 3.0  # seconds a second signal leaves for handing leases back


@click.command(
    epilog="""\b
Examples:
  piton worker myapp.flows:Convert --store postgresql://app@db/app --concurrency 50
  piton worker myapp.flows:workflows --grace 2m
  PITON_STORE=redis://cache:6379/0 piton worker myapp.flows:Convert myapp.flows:Review

On SIGTERM or Ctrl-C the worker stops claiming runs, lets the steps running now finish
(up to --grace), hands every run back and exits 0. A second signal stops it at once."""
)
@click.argument("workflows", nargs=-1, required=True, metavar="MODULE:ATTR...")
@store_option
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Most runs executing at once in this worker (parked runs do not count).",
)
@click.option(
    "--grace",
    type=DURATION,
    default="30s",
    show_default=True,
    help="On shutdown, how long running steps may take to finish (30s, 2m, ...).",
)
@click.option(
    "--poll",
    "poll_interval",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Look for work this often when the store sends no wake-up.",
)
@log_level_option
def worker(
    workflows: tuple[str, ...],
    store: str | None,
    concurrency: int,
    grace: float,
    poll_interval: float,
    log_level: str,
) -> None:
    """Execute the runs of WORKFLOWS kept in the store: queued, abandoned and due ones.

    Each WORKFLOW is module:attribute naming a Workflow class, an instance, or a list
    of them. Start as many workers as you like, on any machines, against one PostgreSQL
    or Redis store: each run is executed by one worker at a time.
    """
    setup_logging(log_level)
    found = load_workflows(workflows)
    url = store_url(store)
    try:
        w = Worker(url, found, concurrency=concurrency, grace=grace, poll_interval=poll_interval)
    except PitonError as exc:
        raise click.UsageError(str(exc)) from exc
    code = asyncio.run(_serve(w))
    sys.exit(code)


async def _serve(w: Worker) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hard = asyncio.Event()
    seen: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        seen.append(sig)
        if len(seen) == 1:
            log.info(
                "piton worker: %s: draining (steps running now may take up to %ss); "
                "send it again to stop at once",
                sig.name,
                w.grace,
            )
            stop.set()
        else:
            log.warning("piton worker: %s again: stopping now", sig.name)
            hard.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await w.start()
    except PitonError as exc:
        log.error("piton worker: cannot start: %s", exc)
        return 1
    await stop.wait()
    drain = asyncio.ensure_future(w.drain())
    hurry = asyncio.ensure_future(hard.wait())
    await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
    hurry.cancel()
    if not hard.is_set():
        await drain
        return 0
    drain.cancel()
    try:  # hand back what can be handed back quickly; the rest expires with its lease
        await asyncio.wait_for(w.close(), HARD_STOP)
    except (TimeoutError, asyncio.CancelledError):
        pass
    return 128 + seen[-1]


__all__ = ["worker"]
