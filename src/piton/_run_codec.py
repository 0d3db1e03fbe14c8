"""The snapshot codec: a whole run (``RunState``) as JSON trees and back.

Used for ``Context.to_dict()`` / ``from_dict()`` and for a durable run's journal
snapshots. Reading never trusts the data (see ``piton._stored``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, cast

from pydantic import BaseModel

from ._core.graph import Graph, type_key
from ._core.state import (
    FINAL,
    NEW,
    PARKED,
    RUNNING,
    Attempt,
    CollectBuffer,
    Envelope,
    Execution,
    RunState,
    StateStatus,
    Waiter,
)
from ._stored import (
    _check_step,
    _choice,
    _count,
    _counts,
    _event,
    _list,
    _number,
    _obj,
    _opt_text,
    _pairs,
    _reading,
    _text,
    _time,
)
from .errors import ContextSerdeError, IncompatibleWorkflowChange
from .serde import JsonSerializer, TypeResolver

FORMAT = "piton.context"
"""What a stored run (a journal snapshot, ``Context.to_dict()``) says it is."""
VERSION = "1"
"""The snapshot format's version. A change of the keys below or of how a part is stored
needs a bump and a reader for the old version (see docs/storage-format.md)."""


def _enc_attempt(s: JsonSerializer, a: Attempt) -> Any:
    tree: dict[str, Any] = {
        "step": a.step,
        "id": a.envelope.id,
        "event": s.encode(a.envelope.event, f"event of step '{a.step}'"),
        "target": a.envelope.target,
        "retry": a.retry_number,
        "first_at": a.first_at,
        "last_error": None if a.last_error is None else s.encode_error(a.last_error),
        "last_failed_at": a.last_failed_at,
        "resolved": {k: s.encode(v, "waited event") for k, v in a.resolved.items()},
    }
    if a.envelope.recoveries:  # added later: written only when set
        tree["recoveries"] = dict(a.envelope.recoveries)
    return tree


def _dec_attempt(s: JsonSerializer, t: Any, types: TypeResolver, construct: bool) -> Attempt:
    t = _obj(t, "work item")
    last_error = t.get("last_error")
    return Attempt(
        step=_text(t.get("step"), "step name"),
        envelope=Envelope(
            _text(t.get("id"), "event id"),
            _event(s, t.get("event"), types, construct),
            _opt_text(t.get("target"), "target step"),
            _recoveries(t.get("recoveries")),
        ),
        retry_number=_count(t.get("retry", 0), "retry number"),
        first_at=_number(t.get("first_at"), "first_at", optional=True),
        last_error=None if last_error is None else s._dec_error(last_error, types, construct, 0),
        last_failed_at=_number(t.get("last_failed_at"), "last_failed_at", optional=True),
        resolved={
            _text(k, "waiter id"): s._dec(v, types, construct, 0)
            for k, v in _obj(t.get("resolved", {}), "resolved waits").items()
        },
    )


def encode_run(state: RunState, s: JsonSerializer, *, keep_running: bool = False) -> dict[str, Any]:
    """The run as JSON trees, one per top-level part.

    In-flight work counts as queued (a restore re-runs it) and the run's clock is stopped
    (the time a payload is kept is not active time, even for an input that reaches the
    restored run before its Begin), unless ``keep_running``: a journal snapshot keeps
    executions and the clock as they are, since the entries after it go on from there.
    """
    work = [] if keep_running else [_enc_attempt(s, ex.attempt) for ex in state.running.values()]
    running = (
        [
            {"id": ex.id, "at": ex.started_at, "attempt": _enc_attempt(s, ex.attempt)}
            for ex in state.running.values()
        ]
        if keep_running
        else []
    )
    for queue in state.queues.values():
        work.extend(_enc_attempt(s, a) for a in queue)
    return {
        "format": FORMAT,
        "version": VERSION,
        "workflow": state.graph.workflow,
        "run_id": state.run_id,
        "status": state.status,
        "state": s.encode(state.values, "state"),
        "work": work,
        "running": running,
        "delayed": {k: _enc_attempt(s, a) for k, a in state.delayed.items()},
        "waiters": [
            {
                "key": key,
                "id": w.id,
                "attempt": _enc_attempt(s, w.attempt),
                "event_type": None if w.event_type is None else type_key(w.event_type),
                "requirements": s.encode(w.requirements, "requirements"),
                "deadline": w.deadline,
            }
            for key, w in state.waiters.items()
        ],
        "deadlines": dict(state.deadlines),
        "buffers": {
            bid: {
                "pending": [
                    [eid, s.encode(ev, "collected event")]
                    for q in b.pending.values()
                    for eid, ev in q
                ],
                "claimed": {
                    o: [[eid, s.encode(ev, "collected event")] for eid, ev in batch]
                    for o, batch in b.claimed.items()
                },
                "seen": sorted(b.seen),
            }
            for bid, b in state.buffers.items()
        },
        "delivered": dict(state.delivered),
        "streamed": dict(state.streamed),
        "kept": [_enc_kept(s, env) for env in state.kept],
        "counter": state.counter,
        "timeout": state.timeout,
        "active_elapsed": state.active_elapsed,
        "active_since": state.active_since if keep_running else None,
        "result": s.encode(state.result, "result"),
        "error": None if state.error is None else s.encode_error(state.error),
    }


def _enc_kept(s: JsonSerializer, env: Envelope) -> Any:
    tree: dict[str, Any] = {"id": env.id, "event": s.encode(env.event, "kept event"), "target": env.target}
    if env.recoveries:  # added later: written only when set
        tree["recoveries"] = dict(env.recoveries)
    return tree


def _recoveries(tree: Any) -> dict[str, int] | None:
    """The @catch_error recoveries an event's lineage has used (absent: none)."""
    if tree is None:
        return None
    return _counts(tree, "recoveries")


_STATUSES = frozenset({NEW, RUNNING, PARKED, *FINAL})


def decode_run(
    tree: Mapping[str, Any], graph: Graph, s: JsonSerializer, *, construct: bool = False
) -> RunState:
    """Rebuild a RunState from :func:`encode_run`'s output, against ``graph``.

    Any damage raises ContextSerdeError naming the part; ``construct=False`` (the default:
    snapshots) rebuilds stored errors without calling their code.
    """
    if not isinstance(tree, Mapping):
        raise ContextSerdeError(f"A stored run must be a JSON object, not {type(tree).__name__}.")
    if tree.get("format") != FORMAT:
        raise ContextSerdeError(f"Not a piton context (format is {tree.get('format')!r:.80}).")
    if tree.get("version") not in (VERSION, int(VERSION)):
        raise ContextSerdeError(
            f"Unsupported context version {tree.get('version')!r:.80}; this piton reads "
            f"version {VERSION}. Upgrade piton to read it."
        )
    types = TypeResolver.of(graph)
    with _reading("run_id"):
        state = RunState(run_id=_text(tree.get("run_id"), "run id"), graph=graph)
    with _reading("status"):
        state.status = cast(StateStatus, _choice(tree.get("status"), _STATUSES, "status"))
    with _reading("state"):
        state.values = s._dec(tree["state"], types, construct, 0)
    with _reading("work"):
        for t in _list(tree["work"]):
            a = _dec_attempt(s, t, types, construct)
            _check_step(graph, a.step)
            state.queues.setdefault(a.step, deque()).append(a)
    with _reading("running"):
        for r in _list(tree.get("running", [])):
            r = _obj(r, "running step")
            exec_id = _text(r.get("id"), "execution id")
            a = _dec_attempt(s, r.get("attempt"), types, construct)
            _check_step(graph, a.step)
            state.running[exec_id] = Execution(exec_id, a, _time(r.get("at"), "at"))
            state.busy[a.step] = state.busy.get(a.step, 0) + 1
    with _reading("delayed"):
        state.delayed = {
            _text(k, "timer id"): _dec_attempt(s, t, types, construct)
            for k, t in _obj(tree.get("delayed", {}), "delayed").items()
        }
    with _reading("waiters"):
        for w in _list(tree.get("waiters", [])):
            _dec_waiter(state, s, _obj(w, "waiter"), types, construct)
    with _reading("deadlines"):
        state.deadlines = {
            _text(k, "timer id"): _time(v, "deadline")
            for k, v in _obj(tree.get("deadlines", {}), "deadlines").items()
        }
    with _reading("buffers"):
        for bid, b in _obj(tree.get("buffers", {}), "buffers").items():
            state.buffers[bid] = _dec_buffer(s, _obj(b, "buffer"), types, construct)
    with _reading("delivered"):
        state.delivered = _counts(tree.get("delivered", {}), "delivered")
    with _reading("streamed"):
        state.streamed = _counts(tree.get("streamed", {}), "streamed")
    with _reading("kept"):
        state.kept = [
            Envelope(
                _text(k.get("id"), "event id"),
                _event(s, k.get("event"), types, construct),
                _opt_text(k.get("target"), "target step"),
                _recoveries(k.get("recoveries")),
            )
            for k in (_obj(k, "kept event") for k in _list(tree.get("kept", [])))
        ]
    with _reading("counter"):
        state.counter = _count(tree.get("counter", 0), "counter")
    with _reading("timeout"):
        state.timeout = _number(tree.get("timeout"), "timeout", optional=True)
    with _reading("active_elapsed"):
        state.active_elapsed = _time(tree.get("active_elapsed", 0.0), "active_elapsed")
    with _reading("active_since"):
        state.active_since = _number(tree.get("active_since"), "active_since", optional=True)
    with _reading("result"):
        state.result = s._dec(tree.get("result"), types, construct, 0)
    with _reading("error"):
        if tree.get("error") is not None:
            state.error = s._dec_error(tree["error"], types, construct, 0)
    return state


def _dec_waiter(
    state: RunState, s: JsonSerializer, w: Mapping[str, Any], types: TypeResolver, construct: bool
) -> None:
    a = _dec_attempt(s, w.get("attempt"), types, construct)
    _check_step(state.graph, a.step)
    key = _opt_text(w.get("event_type"), "waited event type")
    etype = None if key is None else types.resolve(key, BaseModel)
    if etype is None and key is not None:
        raise IncompatibleWorkflowChange(
            f"Run '{state.run_id}' has a waiter for event type '{key}', which is no longer "
            "defined. Restore the type (or run the old code) to finish this run."
        )
    requirements = s._dec(w.get("requirements", {}), types, construct, 0)
    state.waiters[_text(w.get("key"), "waiter key")] = Waiter(
        _text(w.get("id"), "waiter id"),
        a,
        etype,
        _obj(requirements, "requirements"),
        _number(w.get("deadline"), "deadline", optional=True),
    )


def _dec_buffer(
    s: JsonSerializer, b: Mapping[str, Any], types: TypeResolver, construct: bool
) -> CollectBuffer:
    buf = CollectBuffer(seen={_text(e, "event id") for e in _list(b.get("seen", []))})
    for eid, ev in _pairs(b.get("pending", [])):
        event = _event(s, ev, types, construct)
        buf.pending.setdefault(type(event), []).append((_text(eid, "event id"), event))
    for owner, batch in _obj(b.get("claimed", {}), "claimed").items():
        buf.claimed[owner] = [
            (_text(eid, "event id"), _event(s, ev, types, construct)) for eid, ev in _pairs(batch)
        ]
    return buf


__all__ = ["FORMAT", "VERSION", "decode_run", "encode_run"]
