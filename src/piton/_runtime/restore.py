"""Restoring a durable run: snapshot + journal tail -> RunState.

A run stores the fingerprint of the graph it was written with, so a resume under changed
code replays under the old graph and then checks that the current code can go on.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from piton._core import inputs as i
from piton._core.graph import Graph, StepNode, build_graph, type_key
from piton._core.reducer import reduce
from piton._core.state import RunState
from piton._journal_codec import decode_input
from piton._run_codec import decode_run
from piton.errors import IncompatibleWorkflowChange, JournalCorrupted
from piton.events import Event
from piton.serde import JsonSerializer, TypeResolver
from piton.stores.base import Loaded

if TYPE_CHECKING:
    from piton._runtime.engine import Engine


def rebuild(loaded: Loaded, engine: Engine, ser: JsonSerializer) -> RunState:
    """Snapshot + journal tail -> RunState, replayed under the graph the run was written with."""
    record = loaded.record
    graph = historical_graph(record.fingerprint, engine, record.run_id)
    types = TypeResolver(engine.graph.event_types)
    if engine.graph.state_type is not None:
        types.known[type_key(engine.graph.state_type)] = engine.graph.state_type
    if loaded.snapshot is not None:
        try:
            state = decode_run(json.loads(loaded.snapshot), graph, ser)
        except IncompatibleWorkflowChange:
            raise
        except Exception as exc:  # noqa: BLE001 - stored data is untrusted: any damage
            raise JournalCorrupted(
                f"Run '{record.run_id}': the snapshot at seq {loaded.snapshot_seq} cannot be "
                f"read ({type(exc).__name__}: {exc})."
            ) from exc
    else:
        state = RunState(run_id=record.run_id, graph=graph, timeout=engine.config.timeout)
        state.values = engine.graph.state_type() if engine.graph.state_type is not None else {}
    for seq, text in loaded.entries:
        try:
            inp = decode_input(text, ser, types)
            _check_entry(state, inp)
            reduce(state, inp)
        except IncompatibleWorkflowChange:
            raise
        except Exception as exc:  # noqa: BLE001 - stored data is untrusted: any damage
            raise JournalCorrupted(
                f"Run '{record.run_id}': journal entry seq {seq} cannot be replayed "
                f"({type(exc).__name__}: {exc}). The run cannot be resumed; its other runs "
                "are not affected. Inspect the entry, or fail the run by hand."
            ) from exc
    state.journal.clear()
    _check_compatible(state, engine)
    state.graph = engine.graph
    return state


def _check_entry(state: RunState, inp: Any) -> None:
    """A step's outcome names an execution the replayed run has running (a live run only
    journals those); anything else is damage that would silently change the outcome."""
    if isinstance(inp, i.StepDone | i.StepFailed | i.StepWaits):
        if not state.finished and inp.exec_id not in state.running:
            raise ValueError(
                f"it names step execution {inp.exec_id!r}, which is not running at that point"
            )


def historical_graph(stored: str, engine: Engine, run_id: str = "?") -> Graph:
    if stored == engine.fingerprint:
        return engine.graph
    try:
        fp = json.loads(stored)
    except (ValueError, RecursionError):
        fp = {}
    steps = fp.get("steps") if isinstance(fp, dict) else None
    if not steps:
        return engine.graph
    try:
        return _graph_of(steps, engine)
    except IncompatibleWorkflowChange:
        raise
    except Exception as exc:  # noqa: BLE001 - stored data is untrusted
        raise JournalCorrupted(
            f"Run '{run_id}' of workflow '{engine.graph.workflow}': its stored fingerprint "
            f"cannot be read ({type(exc).__name__}: {exc})."
        ) from exc


def _graph_of(steps: dict[str, Any], engine: Engine) -> Graph:
    types = TypeResolver(engine.graph.event_types)
    nodes = {}
    for name, info in steps.items():
        accepted = []
        for key in info["accepts"]:
            found = types.resolve(key, Event)
            if found is None:
                raise IncompatibleWorkflowChange(
                    f"The stored run's step '{name}' consumes event type '{key}', which the "
                    f"current code of workflow '{engine.graph.workflow}' no longer defines."
                )
            accepted.append(found)
        current = engine.graph.steps.get(name)
        nodes[name] = StepNode(
            name=name,
            accepted=tuple(accepted),
            returns=(),
            num_workers=int(info.get("workers", 4)),
            retry_policy=current.retry_policy if current else None,
            timeout=current.timeout if current else None,
        )
    return build_graph(
        engine.graph.workflow, nodes, state_type=engine.graph.state_type, validate=False
    )


def _check_compatible(state: RunState, engine: Engine) -> None:
    needed = {ex.attempt.step for ex in state.running.values()}
    needed |= {step for step, q in state.queues.items() if q}
    needed |= {w.attempt.step for w in state.waiters.values()}
    needed |= {a.step for a in state.delayed.values()}
    missing = sorted(needed - set(engine.graph.steps))
    if missing:
        raise IncompatibleWorkflowChange(
            f"Run '{state.run_id}' has pending work for step(s) {', '.join(missing)}, which "
            f"workflow '{engine.graph.workflow}' no longer has. Restore them (or run the "
            "previous code) to finish this run."
        )
    for step in needed:
        node = engine.graph.steps[step]
        pending = [a.envelope.event for a in state.queues.get(step, ())]
        for ev in pending:
            if type(ev) not in node.accepted:
                raise IncompatibleWorkflowChange(
                    f"Run '{state.run_id}': step '{step}' has a pending {type(ev).__name__}, "
                    "which it no longer accepts."
                )


__all__ = ["historical_graph", "rebuild"]
