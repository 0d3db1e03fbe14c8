"""``piton runs`` and ``piton show``: what the store holds, read without importing user code.

Both read the store only. ``show`` decodes the journal as plain JSON (each entry's kind,
time and fields; events and errors by their stored type names), so it works on any run
whatever code wrote it, and never imports or runs the workflow.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from piton._core.status import STATUSES
from piton.cli._common import DURATION, store_option, store_url
from piton.errors import InvalidCursor, PitonError
from piton.history import ago, shown_value, span, timeline, when
from piton.stores.base import (
    RunRecord,
    Store,
    open_store,
    parse_cursor,
    redact_url,
    run_cursor,
)

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


def check_cursor(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--after``: a cursor a listing printed, else a usage error (exit 2)."""
    if value is not None:
        try:
            parse_cursor(value)
        except InvalidCursor as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def seconds(value: float) -> str:
    """A duration as ``--since`` reads it back: ``3600s``, ``0.5s``."""
    return format(value, "f").rstrip("0").rstrip(".") + "s"


def next_command(words: list[str], options: list[tuple[str, object]]) -> str:
    """The command line that shows the next page: ``words`` and the options given."""
    words = list(words)
    for option, value in options:
        if value is not None:
            words += [option, str(value)]
    return shlex.join(words)


@click.command(
    epilog="""\b
Examples:
  piton runs
  piton runs --workflow Convert --status parked --limit 20
  piton runs --status failed --since 1h
  piton runs --after MTc2NDY4MjQwMC4xMjM6YXBwcm92ZS0x   # the next page, as printed
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
    "--since",
    type=DURATION,
    metavar="DURATION",
    help="Only runs created within the last DURATION (30s, 2m, 1h, 7d).",
)
@click.option(
    "--before",
    type=DURATION,
    metavar="DURATION",
    help="Only runs created more than DURATION ago.",
)
@click.option(
    "--limit",
    metavar="N",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Most runs on a page.",
)
@click.option(
    "--after",
    metavar="CURSOR",
    callback=check_cursor,
    help="Continue after this cursor: the runs after the last one of the page before "
    '(printed under the table, and as each run\'s "cursor" with --json).',
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print a JSON array instead of a table; each run has its "cursor".',
)
def runs(
    store: str | None,
    workflow: str | None,
    status: str | None,
    since: float | None,
    before: float | None,
    limit: int,
    after: str | None,
    as_json: bool,
) -> None:
    """List the runs kept in the store, newest first, a page at a time."""
    url = store_url(store)
    now = time.time()

    async def use(s: Store) -> list[RunRecord]:
        return await s.list_runs(
            status=status,
            workflow=workflow,
            limit=limit + 1,  # one more: is there a next page?
            after=after,
            created_after=None if since is None else now - since,
            created_before=None if before is None else now - before,
        )

    found = with_store(url, use)
    more, found = len(found) > limit, found[:limit]
    if as_json:
        click.echo(
            json.dumps([record_json(r) | {"cursor": run_cursor(r)} for r in found], indent=1)
        )
        return
    where = "after the cursor" if after else "newest first"
    table = Table(title=f"{len(found)} run(s) in {redact_url(url)}, {where}", title_justify="left")
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
    console = Console()
    console.print(table)
    if more:
        options: list[tuple[str, object]] = [
            ("--workflow", workflow),
            ("--status", status),
            ("--since", None if since is None else seconds(since)),
            ("--before", None if before is None else seconds(before)),
            ("--limit", None if limit == 50 else limit),
            ("--after", run_cursor(found[-1])),
        ]
        console.print(
            f"Next page: {next_command(['piton', 'runs'], options)}", markup=False, soft_wrap=True
        )


# --- piton show -----------------------------------------------------------------------


def waits_json(r: RunRecord) -> dict[str, Any]:
    return {"waiters": r.waiters, "wake_at": when(r.wake_at), "inbox": r.inbox}


@dataclass
class _Page:
    record: RunRecord
    snapshot_seq: int  # entries 1..snapshot_seq are not kept (an older piton compacted them)
    entries: list[tuple[int, str]]
    more: bool


@click.command(
    epilog="""\b
Examples:
  piton show 4f9c2e
  piton show 4f9c2e --after 200          # the next page of its journal
  piton show approve-1 --store postgresql://app@db/app --json

The journal is read as stored data: no workflow code is imported. Events and errors
are shown by their stored type names."""
)
@click.argument("run_id", metavar="RUN")
@store_option
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=0,
    metavar="SEQ",
    help="Show the journal entries after entry SEQ (the page before ends at it).",
)
@click.option(
    "--limit",
    metavar="N",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Most journal entries on a page.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def show(run_id: str, store: str | None, after: int, limit: int, as_json: bool) -> None:
    """Show run RUN: its record, what it waits for, and the timeline of its journal, a page
    of entries at a time."""
    url = store_url(store)

    async def use(s: Store) -> _Page | None:
        record = await s.get(run_id)
        if record is None:
            return None
        first = await s.journal(run_id, 0, 1)  # where the stored journal starts
        entries = await s.journal(run_id, after, limit + 1)  # one more: is there a next page?
        snapshot_seq = first[0][0] - 1 if first else record.seq
        return _Page(record, snapshot_seq, entries[:limit], len(entries) > limit)

    page = with_store(url, use)
    if page is None:
        fail(f"No run '{run_id}' in {redact_url(url)}. List the runs with: piton runs")
    r = page.record
    rows = timeline(page.entries)
    next_after = page.entries[-1][0] if page.more else None
    if as_json:
        out = record_json(r) | {
            "seq": r.seq,
            "owner": r.owner,
            "result": r.result,
            "waiting": waits_json(r),
            "snapshot_seq": page.snapshot_seq,
            "timeline": rows,
        }
        if next_after is not None:
            out["next_after"] = next_after
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
    if page.snapshot_seq and after < page.snapshot_seq:
        console.print(
            f"entries 1..{page.snapshot_seq} are not kept (compacted away by a piton before "
            "0.2, which did not keep a run's history)"
        )
    shown = (
        f"entries {page.entries[0][0]}..{page.entries[-1][0]} of {r.seq}"
        if page.entries
        else f"no entries after {after} (of {r.seq})"
    )
    table = Table(title=f"journal: {shown}", title_justify="left")
    steps = any(row.get("step") or row.get("took") is not None for row in rows)
    columns = (
        ("seq", "at (UTC)", "+", "step", "took", "entry")
        if steps
        else ("seq", "at (UTC)", "+", "entry")
    )
    for column in columns:
        table.add_column(column)
    for row in rows:
        since = "" if row.get("after") is None else span(row["after"])
        cells = [str(row["seq"]), row["at"] or "-", since]
        if steps:
            step_took = row.get("took")
            cells += [escape(row.get("step") or ""), "" if step_took is None else span(step_took)]
        table.add_row(*cells, escape(row["what"]))
    console.print(table)
    if next_after is not None:
        options: list[tuple[str, object]] = [
            ("--limit", None if limit == 200 else limit),
            ("--after", next_after),
        ]
        command = next_command(["piton", "show", run_id], options)
        console.print(f"Next page: {command}", markup=False, soft_wrap=True)


__all__ = ["ago", "fail", "runs", "show", "span", "when", "with_store"]
