"""``piton gc`` and ``piton doctor``: keep a store tidy, and find runs that need a person."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from piton._core.status import ACTIVE_STATUSES
from piton.cli._common import DURATION, load_workflows, store_option, store_url
from piton.cli._runs import record_json, span, when, with_store
from piton.errors import IncompatibleWorkflowChange, JournalCorrupted
from piton.stores.base import RunRecord, Store, redact_url
from piton.workflow import Workflow


@click.command(
    epilog="""\b
Examples:
  piton gc --older-than 30d
  piton gc --older-than 12h --store postgresql://app@db/app

Only finished runs (completed, failed, cancelled, timed out) are deleted, with their
journal, stream and inbox; runs that are queued, running or parked are never touched."""
)
@click.option(
    "--older-than",
    "older_than",
    type=DURATION,
    required=True,
    help="Delete runs that finished longer ago than this (30d, 12h, 90m, ...).",
)
@store_option
def gc(older_than: float, store: str | None) -> None:
    """Delete finished runs older than --older-than from the store."""
    url = store_url(store)

    async def use(s: Store) -> int:
        return await s.prune(older_than)

    deleted = with_store(url, use)
    click.echo(
        f"Deleted {deleted} finished run(s) that finished more than {span(older_than)} ago "
        f"from {redact_url(url)}."
    )


def incompatible(workflows: list[Workflow], records: list[RunRecord]) -> list[tuple[str, str]]:
    """(run id, why) for the unfinished runs the current code of their workflow cannot
    resume: their journal replays (in memory, running no step) into an error."""
    by_name = {w.workflow_name: w for w in workflows}

    async def check() -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for r in records:
            w = by_name.get(r.workflow)
            if w is None or r.status not in ACTIVE_STATUSES or r.status == "queued":
                continue
            try:
                await w.get_run(r.run_id)
            except (IncompatibleWorkflowChange, JournalCorrupted) as exc:
                found.append((r.run_id, str(exc)))
        for w in workflows:
            if w.store is not None:
                await w.store.close()
        return found

    return asyncio.run(check())


@click.command(
    epilog="""\b
Examples:
  piton doctor
  piton doctor --workflow myapp.flows:Approve --workflow myapp.flows:Convert --json

A stuck run is parked with no waiter, no wake-up time and no event in its inbox:
nothing will ever move it. With --workflow, doctor also replays the journal of each
unfinished run of those workflows (in memory: no step runs) and lists the runs the
current code can no longer resume. Exit 0: all well; exit 1: runs need attention."""
)
@click.option(
    "--workflow",
    "-w",
    "specs",
    metavar="MODULE:ATTR",
    multiple=True,
    help="Check only runs of this workflow (repeat for more); also checks that its code "
    "can still resume them. A plain NAME filters by workflow name without importing code.",
)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def doctor(specs: tuple[str, ...], limit: int, store: str | None, as_json: bool) -> None:
    """List the runs that need a person: stuck runs, and runs the code can no longer resume."""
    url = store_url(store)
    loaded: list[Workflow] = []
    names: list[str] = []
    for spec in specs:
        if ":" in spec:
            if not loaded:
                os.environ["PITON_STORE"] = url  # the store of workflows made without one
            found = load_workflows([spec])
            loaded += found
            names += [w.workflow_name for w in found]
        else:
            names.append(spec)

    async def use(s: Store) -> tuple[list[RunRecord], list[RunRecord]]:
        stuck = await s.stuck(names or None, limit=limit)
        active: list[RunRecord] = []
        for name in [w.workflow_name for w in loaded]:
            for status in ("running", "parked"):
                active += await s.list_runs(status=status, workflow=name, limit=limit)
        return stuck, active

    stuck, active = with_store(url, use)
    broken = incompatible(loaded, active) if loaded else []
    if as_json:
        out = {
            "stuck": [record_json(r) for r in stuck],
            "incompatible": [{"run_id": run, "why": why} for run, why in broken],
        }
        click.echo(json.dumps(out, indent=1))
        sys.exit(1 if stuck or broken else 0)
    console = Console()
    if not stuck and not broken:
        checked = f" of {', '.join(names)}" if names else ""
        console.print(f"No stuck runs{checked} in {escape(redact_url(url))}.")
        if loaded:
            console.print(f"The code resumes all {len(active)} unfinished run(s) it was given.")
        return
    if stuck:
        table = Table(title=f"{len(stuck)} stuck run(s)", title_justify="left")
        for column in ("run id", "workflow", "parked since"):
            table.add_column(column)
        for r in stuck:
            table.add_row(escape(r.run_id), escape(r.workflow), when(r.updated_at))
        console.print(table)
        console.print(
            "Nothing will ever move these runs (parked: no waiter, no timer, no inbox event). "
            "Look at each with `piton show RUN`; end it with `piton cancel RUN -w "
            "module:Workflow`, or fork a repaired run from it. A stuck run is a piton bug: "
            "please report it with the `piton show RUN --json` output."
        )
    if broken:
        console.print(f"{len(broken)} run(s) the current code cannot resume:")
        for run, why in broken:
            console.print(f"  {escape(run)}: {escape(why)}")
        console.print(
            "Deploy the code the runs were written with to finish them (a worker for the old "
            "version), or cancel them with `piton cancel RUN -w module:Workflow`."
        )
    sys.exit(1)


__all__ = ["doctor", "gc"]
