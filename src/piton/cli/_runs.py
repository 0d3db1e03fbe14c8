"""``piton runs`` and ``piton show``: what the store holds, read without importing user code.

Both read the store only. ``show`` decodes the journal as plain JSON (each entry's kind,
time and fields; events and errors by their stored type names), so it works on any run
whatever code wrote it, and never imports or runs the workflow.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from piton._core.status import STATUSES
from piton.cli._common import store_option, store_url
from piton.errors import PitonError
from piton.history import ago, shown_value, span, timeline, when
from piton.stores.base import Loaded, RunRecord, Store, open_store, redact_url

T = TypeVar("T")


def with_store(url: str, use: Callable[[Store], Awaitable[T]]) -> T:
    """``use(store)`` on the opened store ``url``; a piton error exits 1 with its message."""

    async def main() -> T:
        store = open_store(url)
        await store.open()
        try:
            return await use(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except PitonError as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def record_json(r: RunRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "workflow": r.workflow,
        "status": r.status,
        "created_at": when(r.created_at),
        "updated_at": when(r.updated_at),
        "finished_at": when(r.finished_at),
        "error": r.error,
    }


# --- piton runs -----------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  piton runs
  piton runs --workflow Convert --status parked --limit 20
  piton runs --status failed --json | jq -r '.[].run_id'"""
)
@store_option
@click.option(
    "--workflow", "workflow", metavar="NAME", help="Only runs of this workflow (class name)."
)
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    help="Only runs with this status.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Most runs shown."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def runs(
    store: str | None, workflow: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List the runs kept in the store, newest first."""
    url = store_url(store)

    async def use(s: Store) -> list[RunRecord]:
        return await s.list_runs(status=status, workflow=workflow, limit=limit)

    found = with_store(url, use)
    if as_json:
        click.echo(json.dumps([record_json(r) for r in found], indent=1))
        return
    now = time.time()
    table = Table(title=f"{len(found)} run(s) in {redact_url(url)}", title_justify="left")
    for column in ("run id", "workflow", "status", "created", "updated"):
        table.add_column(column, no_wrap=column == "run id")
    for r in found:
        table.add_row(
            escape(r.run_id),
            escape(r.workflow),
            r.status,
            when(r.created_at),
            ago(r.updated_at, now),
        )
    Console().print(table)


# --- piton show -----------------------------------------------------------------------


def waits_json(r: RunRecord) -> dict[str, Any]:
    return {"waiters": r.waiters, "wake_at": when(r.wake_at), "inbox": r.inbox}


@click.command(
    epilog="""\b
Examples:
  piton show 4f9c2e
  piton show approve-1 --store postgresql://app@db/app --json

The journal is read as stored data: no workflow code is imported. Events and errors
are shown by their stored type names."""
)
@click.argument("run_id", metavar="RUN")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def show(run_id: str, store: str | None, as_json: bool) -> None:
    """Show run RUN: its record, what it waits for, and the timeline of its journal."""
    url = store_url(store)

    async def use(s: Store) -> Loaded | None:
        if await s.get(run_id) is None:
            return None
        return await s.load(run_id)

    loaded = with_store(url, use)
    if loaded is None:
        fail(f"No run '{run_id}' in {redact_url(url)}. List the runs with: piton runs")
    r = loaded.record
    rows = timeline(loaded.entries)
    if as_json:
        out = record_json(r) | {
            "seq": r.seq,
            "owner": r.owner,
            "result": r.result,
            "waiting": waits_json(r),
            "snapshot_seq": loaded.snapshot_seq,
            "timeline": rows,
        }
        click.echo(json.dumps(out, indent=1))
        return
    console = Console()
    end = r.finished_at if r.finished_at is not None else time.time()
    console.print(
        f"[bold]Run {escape(r.run_id)}[/bold]  workflow {escape(r.workflow)}  status "
        f"[bold]{r.status}"
    )
    console.print(
        f"created {when(r.created_at)}, updated {when(r.updated_at)}, "
        f"{'took' if r.finished else 'age'} {span(end - r.created_at)}"
    )
    if r.owner:
        console.print(f"held by {r.owner} (lease until {when(r.lease_until)})")
    if not r.finished:
        due = f", wakes at {when(r.wake_at)}" if r.wake_at is not None else ""
        console.print(f"waits: {r.waiters} waiter(s){due}, {r.inbox} event(s) in its inbox")
    if r.error:
        console.print(f"error: {r.error}", markup=False)
    if r.result is not None:
        console.print(f"result: {shown_value(r.result)[:500]}", markup=False)
    if loaded.snapshot_seq:
        console.print(f"entries 1..{loaded.snapshot_seq} are compacted into a snapshot")
    table = Table(title="journal", title_justify="left")
    for column in ("seq", "at (UTC)", "+", "entry"):
        table.add_column(column)
    for row in rows:
        after = "" if row.get("after") is None else span(row["after"])
        table.add_row(str(row["seq"]), row["at"] or "-", after, escape(row["what"]))
    console.print(table)


__all__ = ["ago", "fail", "runs", "show", "span", "when", "with_store"]
