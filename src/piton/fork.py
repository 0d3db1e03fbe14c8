"""Forking a durable run: a new run that starts from an earlier point of another's history.

A fork copies the journal entries ``1..at`` of a run into a new run, with the stream
events those entries wrote, and leaves it runnable (status ``running``, no owner): a
worker, or ``piton resume``, takes it and goes on from there under the current code.
Steps that were running at ``at`` run again; what came after ``at`` is not copied.
The source run is only read.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from piton._core import inputs as i
from piton._core.graph import type_key
from piton._core.reducer import reduce
from piton._core.status import RUNNING
from piton._journal_codec import _ENTRIES, KIND_KEY, decode_input
from piton._runtime.restore import rebuild
from piton.errors import PitonError, RunNotFound
from piton.serde import JsonSerializer, TypeResolver
from piton.stores.base import Loaded, RunRecord, Store, redact_url
from piton.workflow import Workflow

if TYPE_CHECKING:
    from piton._runtime.engine import Engine

# the entry kinds after which a run commits (the inputs that say ``commits``): the points
# a run can be forked at
COMMIT_KINDS = frozenset(e.kind for cls, e in _ENTRIES.items() if cls.commits)


class ForkRefused(PitonError, ValueError):
    """The run cannot be forked at that point; the message says why and what to do."""


async def history(store: Store, run_id: str, upto: int) -> list[tuple[int, str]]:
    """Journal entries 1..upto of the run, as far as the store still holds them."""
    journal = getattr(store, "journal", None)
    if journal is not None:
        out: list[tuple[int, str]] = []
        while len(out) < upto:
            page = await journal(run_id, after=out[-1][0] if out else 0, limit=1000)
            if not page:
                break
            out.extend(page)
        return [(seq, text) for seq, text in out if seq <= upto]
    loaded = await store.load(run_id)
    return [(seq, text) for seq, text in loaded.entries if seq <= upto]


def fork_points(entries: list[tuple[int, str]]) -> list[int]:
    """The seqs a run can be forked at: those of the entries its commits end with."""
    points = []
    for seq, text in entries:
        try:
            kind = json.loads(text).get(KIND_KEY)
        except (ValueError, AttributeError):
            continue
        if kind in COMMIT_KINDS:
            points.append(seq)
    return points


async def fork_run(w: Workflow, run_id: str, at: int, new_run_id: str | None = None) -> str:
    """Fork run ``run_id`` of workflow ``w`` at journal seq ``at``; return the new run's id.

    Raises ``RunNotFound`` for an unknown run or an existing ``new_run_id``, and
    ``ForkRefused`` when ``at`` is not a point the run can be forked at (the message
    lists the nearest ones), or when the history up to ``at`` does not replay under the
    workflow's current code.
    """
    store = w.store
    if store is None:
        raise ForkRefused(f"Workflow '{w.workflow_name}' has no store: only durable runs fork.")
    await store.open()
    record = await store.get(run_id)
    if record is None:
        raise RunNotFound(
            f"No run '{run_id}' in {redact_url(store.url)}. List the runs with: piton runs"
        )
    if record.workflow != w.workflow_name:
        raise RunNotFound(
            f"Run '{run_id}' belongs to workflow '{record.workflow}', not '{w.workflow_name}'."
        )
    if not 1 <= at <= record.seq:
        raise ForkRefused(
            f"--at {at}: run '{run_id}' has journal entries 1..{record.seq}; pick one of "
            f"them (piton show {run_id} lists them)."
        )
    entries = await history(store, run_id, at)
    if [seq for seq, _ in entries] != list(range(1, at + 1)):
        first = entries[0][0] if entries else at + 1
        raise ForkRefused(
            f"Run '{run_id}' no longer holds journal entries 1..{first - 1} (compacted into "
            f"a snapshot by an older piton), so it cannot be forked at {at}."
        )
    points = fork_points(entries)
    if at not in points:
        before = [p for p in points if p < at][-1:]
        raise ForkRefused(
            f"Entry {at} of run '{run_id}' is in the middle of a commit; a run forks after a "
            f"whole commit: the nearest point before it is {before[0] if before else 1} "
            f"(piton show {run_id} lists the entries)."
        )
    new_id = new_run_id or uuid.uuid4().hex
    engine = w._engine()
    ser = JsonSerializer()
    prefix = Loaded(replace(record, run_id=new_id, seq=at), None, 0, entries, [], [])
    try:
        state = rebuild(prefix, engine, ser)
    except PitonError as exc:
        raise ForkRefused(f"Run '{run_id}' cannot be forked at {at}: {exc}") from exc
    if state.finished:
        raise ForkRefused(
            f"Run '{run_id}' has already finished ({state.status}) at entry {at}; fork it at "
            "an earlier entry."
        )
    stream = await _stream_prefix(store, run_id, prefix, engine, ser)
    fork = RunRecord(
        run_id=new_id,
        workflow=record.workflow,
        status=RUNNING,  # no owner: any worker, or piton resume, may take it at once
        fingerprint=record.fingerprint,
        waiters=len(state.waiters),
    )
    if not await store.create(fork, [text for _, text in entries], stream):
        raise RunNotFound(f"A run '{new_id}' already exists; give the fork another id.")
    return new_id


async def _stream_prefix(
    store: Store, run_id: str, prefix: Loaded, engine: Engine, ser: JsonSerializer
) -> list[str]:
    """The stream events the entries of ``prefix`` wrote: the first N of the source run's
    stream, N counted by replaying them (every event a run publishes is streamed)."""
    state = rebuild(replace(prefix, entries=[]), engine, ser)
    types = TypeResolver(engine.graph.event_types)
    if engine.graph.state_type is not None:
        types.known[type_key(engine.graph.state_type)] = engine.graph.state_type
    published = 0
    for _, text in prefix.entries:
        _, cmds = reduce(state, decode_input(text, ser, types))
        published += sum(isinstance(cmd, i.Publish) for cmd in cmds)
    loaded = await store.load(run_id)
    return loaded.stream[:published]


__all__ = ["ForkRefused", "fork_points", "fork_run"]
