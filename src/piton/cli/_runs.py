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
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from piton._core.status import STATUSES
from piton._journal_codec import KIND_KEY
from piton.cli._common import store_option, store_url
from piton.errors import PitonError
from piton.serde import TAG
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


def when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    return f"{span(now - ts)} ago"


def span(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


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


def type_name(tree: Any) -> str:
    """The stored type name of an encoded event, model or error, else the JSON kind."""
    if isinstance(tree, dict) and TAG in tree:
        return str(tree.get("type") or tree[TAG]).rsplit(".", 1)[-1]
    return type(tree).__name__ if tree is not None else "None"


def shown_value(text: str) -> str:
    """A stored result for people: a StopEvent's ``result``, else the stored JSON."""
    try:
        tree = json.loads(text)
    except ValueError:
        return text
    if isinstance(tree, dict) and tree.get(TAG) == "model" and isinstance(tree.get("data"), dict):
        data = tree["data"]
        if str(tree.get("type")).endswith(".StopEvent") and set(data) == {"result"}:
            return json.dumps(data["result"])
        return f"{type_name(tree)} {json.dumps(data)}"
    return text


def describe(tree: dict[str, Any]) -> str:
    """One journal entry (as JSON) in a few words."""
    kind = tree.get(KIND_KEY)
    step = f"[{tree['exec_id']}] " if tree.get("exec_id") else ""
    sends = tree.get("sends") or []
    sent = f", sends {', '.join(type_name(s[1]) for s in sends if len(s) == 3)}" if sends else ""
    if kind == "Begin":
        start = tree.get("start_event")
        first = f"start {type_name(start)}" if start is not None else "resume"
        return f"{first} (owner {tree.get('owner') or '-'}, epoch {tree.get('epoch', 0)})"
    if kind == "StepDone":
        return f"{step}done -> {type_name(tree.get('result'))}{sent}"
    if kind == "StepFailed":
        error = tree.get("error") or {}
        message = error.get("message", "") if isinstance(error, dict) else ""
        retry = tree.get("retry_in")
        then = "gave up" if retry is None else f"retry in {span(float(retry))}"
        return f"{step}failed: {type_name(error)}: {message[:120]} ({then})"
    if kind == "StepWaits":
        what = tree.get("event_type")
        what = "sleep" if what is None else f"waits for {str(what).rsplit('.', 1)[-1]}"
        timeout = tree.get("timeout")
        return f"{step}{what}" + (f" (timeout {span(float(timeout))})" if timeout else "") + sent
    if kind == "Checkpoint":
        return f"{step}checkpoint{sent}"
    if kind == "Send":
        target = f" to {tree['target']}" if tree.get("target") else ""
        return f"received {type_name(tree.get('event'))}{target}"
    if kind == "SetState":
        return f"state {tree.get('path')} set"
    if kind == "ReplaceState":
        return "state replaced"
    if kind == "Collect":
        return f"{step}collected {type_name(tree.get('event'))}"
    if kind == "StreamWrite":
        return f"{step}streamed {type_name(tree.get('event'))}"
    if kind == "TimerFired":
        return f"timer {tree.get('timer_id')} fired"
    if kind == "Cancel":
        return "cancel requested"
    if kind == "Park":
        return "parked"
    return str(kind)


def timeline(loaded: Loaded) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    previous: float | None = None
    for seq, text in loaded.entries:
        try:
            tree = json.loads(text)
        except ValueError:
            tree = None
        if not isinstance(tree, dict):
            rows.append({"seq": seq, "at": None, "kind": "?", "what": "damaged entry"})
            continue
        at = tree.get("at")
        at = float(at) if isinstance(at, int | float) else None
        rows.append(
            {
                "seq": seq,
                "at": when(at)
                if at is None
                else datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
                "after": None if at is None or previous is None else round(at - previous, 6),
                "kind": str(tree.get(KIND_KEY)),
                "exec_id": tree.get("exec_id"),
                "what": describe(tree),
            }
        )
        previous = at if at is not None else previous
    return rows


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
    rows = timeline(loaded)
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


__all__ = ["fail", "runs", "show", "with_store"]
