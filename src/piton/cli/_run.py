"""``piton run``, ``piton watch`` and ``piton fork``: start a run and follow it, follow a
run's stream, branch a run from an earlier point.

Progress is read back from the store (the journal a run commits), so what ``run`` and
``watch`` print is what is durable. Progress and hints go to stderr, results to stdout.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from piton._core.status import COMPLETED
from piton.cli._act import acting, one_workflow, shown, workflow_option
from piton.cli._common import EXIT_USAGE, store_option, store_url
from piton.cli._runs import fail, with_store
from piton.errors import PitonError
from piton.history import span, timeline, type_name
from piton.serde import TAG
from piton.stores.base import RunRecord, Store
from piton.workflow import Workflow

POLL = 0.2  # seconds between reads of a followed run
QUIET_KINDS = {"SetState", "ReplaceState", "StreamWrite", "Collect"}


def start_fields(args: tuple[str, ...], json_file: str | None) -> dict[str, Any]:
    """The start event's fields: ``--json FILE`` (``-`` for stdin), then each ``--arg
    key=value`` (the value read as JSON when it is JSON, else as a string)."""
    fields: dict[str, Any] = {}
    if json_file is not None:
        try:
            with click.open_file(json_file, encoding="utf-8") as f:
                loaded = json.load(f)
        except (OSError, ValueError) as exc:
            fail(f"--json {json_file}: not a JSON file ({exc}).", EXIT_USAGE)
        if not isinstance(loaded, dict):
            fail(f"--json {json_file}: holds a {type(loaded).__name__}, not an object.", EXIT_USAGE)
        fields.update(loaded)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            fail(f"--arg {arg!r}: write key=value, e.g. --arg count=3.", EXIT_USAGE)
        try:
            fields[key] = json.loads(value)
        except ValueError:
            fields[key] = value
    return fields


class Progress:
    """Prints a run's journal as it is committed, one line per entry that matters."""

    def __init__(self, store: Store, run_id: str, console: Console, hint: str) -> None:
        self.store, self.run_id, self.console, self.hint = store, run_id, console, hint
        self.seen = 0  # the last journal seq printed
        self.hinted: set[str] = set()
        self.steps = 0

    async def poll(self) -> RunRecord | None:
        record = await self.store.get(self.run_id)
        while record is not None and record.seq > self.seen:
            page = await self.store.journal(self.run_id, after=self.seen, limit=500)
            if not page:
                break
            self.show(page)
        return record

    def show(self, entries: list[tuple[int, str]]) -> None:
        for row in timeline(entries):
            self.seen = max(self.seen, row["seq"])
            if row["kind"] in QUIET_KINDS:
                continue
            if row["kind"] == "StepDone":
                self.steps += 1
            took = f" ({span(row['took'])})" if isinstance(row.get("took"), int | float) else ""
            self.console.print(
                f"  [dim]{row['seq']:>4}[/dim]  {escape(row['what'])}{took}",
                highlight=False,
                soft_wrap=True,
            )
            waits = row["what"].split("waits for ", 1)
            if row["kind"] == "StepWaits" and len(waits) == 2:
                event = waits[1].split(" ", 1)[0]
                if event not in self.hinted:
                    self.hinted.add(event)
                    self.console.print(
                        f"  [yellow]waiting for {escape(event)}[/yellow]: answer with "
                        f"piton send {escape(self.run_id)} {escape(event)} --data '{{...}}' "
                        f"{escape(self.hint)}",
                        highlight=False,
                        soft_wrap=True,
                    )

    async def follow(self) -> None:
        while True:
            try:
                await self.poll()
            except PitonError:
                pass  # the run's own driver reports an unreachable store
            await asyncio.sleep(POLL)


@click.command(
    epilog="""\b
Examples:
  piton run myapp.flows:Convert --arg path=in.csv --arg rows=100
  piton run myapp.flows:Approve --json request.json --run-id approve-7
  echo '{"path": "in.csv"}' | piton run myapp.flows:Convert --json -

The run is durable: each step is committed to the store as it finishes, and shown here
as it is. Ctrl-C stops this process and leaves the run resumable (the message says how).
A run that waits for an event waits here; answer it with piton send from another
terminal. Exit 0: completed (the result is printed). Exit 1: the run failed, was
cancelled or timed out. Exit 2: a bad argument. Exit 130: interrupted."""
)
@click.argument("spec", metavar="MODULE:WORKFLOW")
@click.option(
    "--arg",
    "args",
    multiple=True,
    metavar="KEY=VALUE",
    help="A field of the start event (repeatable); VALUE is read as JSON if it is JSON.",
)
@click.option(
    "--json",
    "json_file",
    metavar="FILE",
    default=None,
    help="The start event's fields as a JSON object in FILE ('-' reads stdin).",
)
@click.option("--run-id", default=None, help="The run's id (default: a new random id).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the result, no progress.")
@store_option
def run(
    spec: str,
    args: tuple[str, ...],
    json_file: str | None,
    run_id: str | None,
    quiet: bool,
    store: str | None,
) -> None:
    """Run workflow MODULE:WORKFLOW durably, show its steps as they commit, print its result."""
    url = store_url(store)
    w = one_workflow(spec, url)
    cls = w._engine().graph.start_event
    try:
        start = cls.model_validate(start_fields(args, json_file))
    except ValidationError as exc:
        fail(f"The arguments do not make a {cls.__name__}: {exc}", EXIT_USAGE)
    rid = run_id or uuid.uuid4().hex
    console = Console(stderr=True, quiet=quiet)
    hint = f"-w {spec}" + (f" --store {url}" if store else "")
    console.print(f"run [bold]{escape(rid)}[/bold] of {escape(w.workflow_name)}", highlight=False)
    try:
        result = asyncio.run(_run(w, rid, start, console, hint))
    except KeyboardInterrupt:
        fail(f"Interrupted; run '{rid}' is resumable: piton resume {rid} {hint}", 130)
    click.echo(shown(result))


async def _run(w: Workflow, run_id: str, start: Any, console: Console, hint: str) -> Any:
    store = w.store
    assert store is not None
    progress = Progress(store, run_id, console, hint)
    follower = asyncio.create_task(progress.follow())
    began = time.monotonic()
    try:
        try:
            result = await w.run(run_id=run_id, start_event=start)
        finally:
            await _settle(follower, progress)
    except PitonError as exc:
        failed: str = str(exc)
    except Exception as exc:  # noqa: BLE001 - the run's own error: report it
        failed = f"Run '{run_id}' failed: {type(exc).__name__}: {exc}"
    else:
        console.print(
            f"[green]completed[/green] in {span(time.monotonic() - began)}, "
            f"{progress.steps} step(s)",
            highlight=False,
        )
        return result
    finally:
        await store.close()
    fail(failed)


async def _settle(follower: asyncio.Task[None], progress: Progress) -> None:
    """Stop following, after printing what the run committed last."""
    follower.cancel()
    try:
        await follower
    except asyncio.CancelledError:
        pass
    try:
        await progress.poll()
    except PitonError:
        pass


# --- piton watch -----------------------------------------------------------------------


def stream_item(index: int, text: str) -> dict[str, Any]:
    """One stored stream event as plain JSON: its index, type name and fields."""
    try:
        tree = json.loads(text)
    except ValueError:
        return {"id": index, "type": "?", "data": text}
    data = tree.get("data") if isinstance(tree, dict) and TAG in tree else tree
    return {"id": index, "type": type_name(tree), "data": data}


@click.command(
    epilog="""\b
Examples:
  piton watch approve-1
  piton watch approve-1 --cursor 12 --json | jq .type

Prints each event the run writes to its stream (ctx.write_event_to_stream, the events
it waits with, its StopEvent), from event CURSOR on, until the run finishes. Ctrl-C stops
watching and prints the cursor to continue from. No workflow code is imported.
Exit 0: the run completed. Exit 1: no such run, or it failed, was cancelled or timed
out. Exit 130: interrupted."""
)
@click.argument("run_id", metavar="RUN")
@click.option(
    "--cursor",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The first stream event to print (0 is the first the run wrote).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@store_option
def watch(run_id: str, cursor: int, as_json: bool, store: str | None) -> None:
    """Follow the event stream of run RUN live, from a cursor."""
    url = store_url(store)
    err = Console(stderr=True)
    position = [cursor]

    async def follow(s: Store) -> RunRecord | None:
        seen_seq = -1
        while True:
            record = await s.get(run_id)
            if record is None:
                return None
            if record.seq != seen_seq or record.finished:
                seen_seq = record.seq
                loaded = await s.load(run_id)
                for text in loaded.stream[position[0] :]:
                    item = stream_item(position[0], text)
                    if as_json:
                        click.echo(json.dumps(item))
                    else:
                        click.echo(f"[{item['id']}] {item['type']} {json.dumps(item['data'])}")
                    position[0] += 1
                if loaded.record.finished:
                    return loaded.record
            await asyncio.sleep(POLL)

    try:
        record = with_store(url, follow)
    except KeyboardInterrupt:
        fail(f"Stopped; continue with: piton watch {run_id} --cursor {position[0]}", 130)
    if record is None:
        fail(f"No run '{run_id}' in {url}. List the runs with: piton runs")
    err.print(f"run {escape(run_id)} {record.status}", highlight=False)
    if record.error:
        err.print(f"error: {record.error}", markup=False, highlight=False)
    if record.status != COMPLETED:
        raise SystemExit(1)


# --- piton fork ------------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  piton fork approve-1 --at 7 -w myapp.flows:Approve
  piton fork approve-1 --at 7 --run-id approve-1-retry -w myapp.flows:Approve

Copies entries 1..SEQ of RUN's journal (and the stream events they wrote) into a new
run and leaves it for a worker or `piton resume` to go on, under the current code:
to try again from a point before a bad step, or to see what another answer does.
Steps running at SEQ run again. SEQ must end a commit: `piton show RUN` lists the
entries. RUN is not changed. Prints the new run's id. Exit 1: no such run, or the run
cannot be forked at SEQ (the message says why)."""
)
@click.argument("run_id", metavar="RUN")
@click.option(
    "--at",
    "at",
    type=click.IntRange(min=1),
    required=True,
    metavar="SEQ",
    help="The journal entry to fork after.",
)
@click.option("--run-id", "new_id", default=None, help="The new run's id (default: random).")
@workflow_option
@store_option
def fork(run_id: str, at: int, new_id: str | None, spec: str, store: str | None) -> None:
    """Start a new run from RUN's history up to entry SEQ (time travel, repair)."""
    from piton.fork import fork_run

    url = store_url(store)
    w = one_workflow(spec, url)
    created = acting(w, run_id, lambda: fork_run(w, run_id, at, new_id))
    click.echo(created)
    hint = f"-w {spec}" + (f" --store {url}" if store else "")
    Console(stderr=True).print(
        f"Forked run '{escape(run_id)}' at entry {at} into '{escape(created)}'. "
        f"Run it with: piton resume {escape(created)} {escape(hint)} (or let a worker take it)",
        highlight=False,
    )


__all__ = ["fork", "run", "watch"]
