"""Serialization of events, state values, errors and whole runs.

Values become JSON trees. Pydantic models (events included) are tagged with their
type's ``module.QualName``; when read back, that name is looked up among the types
the workflow declares and, failing that, among the model classes already defined in
this process. A name found in stored data is never imported.

``JsonSerializer`` is the default. ``PickleSerializer`` additionally stores values
JSON cannot hold as pickles; use it only for data you trust.
"""

from __future__ import annotations

import base64
import builtins
import datetime as _dt
import json
import pickle
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any

from pydantic import BaseModel, ValidationError

from ._core import inputs as inp
from ._core.graph import Graph, type_key
from ._core.reducer import expected_runs
from ._core.state import (
    Attempt,
    CollectBuffer,
    Envelope,
    Execution,
    RunState,
    Waiter,
    WaitTimedOut,
)
from .errors import ContextSerdeError, IncompatibleWorkflowChange, PitonError

TAG = "__piton__"
FORMAT = "piton.context"
VERSION = "1"


def _walk_subclasses(base: type[Any]) -> Iterator[type[Any]]:
    stack = [base]
    seen: set[type[Any]] = set()
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                yield sub


class TypeResolver:
    """Finds a type by its stored name among known types, then loaded subclasses."""

    def __init__(self, known: Mapping[str, type[Any]] | None = None) -> None:
        self.known: dict[str, type[Any]] = dict(known or {})

    def resolve(self, key: str, base: type[Any]) -> type[Any] | None:
        found = self.known.get(key)
        if found is not None:
            return found
        if base is BaseException:
            cls = getattr(builtins, key.removeprefix("builtins."), None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                return cls
        for cls in _walk_subclasses(base):
            if type_key(cls) == key:
                self.known[key] = cls
                return cls
        return None


_PLAIN = frozenset({str, int, float, bool})
_TYPE_KEYS: dict[type[Any], str] = {}  # type_key per class, as encoding runs per step


class JsonSerializer:
    """Encodes values as JSON trees; refuses what JSON cannot hold, naming where it was."""

    name = "json"

    def encode(self, value: Any, where: str = "value") -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            return value
        if isinstance(value, BaseModel):  # events and state models: the usual case
            return self._encode_model(value, where)
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{n}]") for n, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and TAG not in value:
                return {k: self.encode(v, f"{where}.{k}") for k, v in value.items()}
            return {
                TAG: "dict",
                "items": [
                    [self.encode(k, where), self.encode(v, f"{where}[{k!r}]")]
                    for k, v in value.items()
                ],
            }
        if isinstance(value, tuple):
            return {TAG: "tuple", "items": [self.encode(v, where) for v in value]}
        if isinstance(value, set | frozenset):
            return {TAG: "set", "items": [self.encode(v, where) for v in value]}
        if isinstance(value, bytes):
            return {TAG: "bytes", "b64": base64.b64encode(value).decode()}
        if isinstance(value, _dt.datetime):
            return {TAG: "datetime", "iso": value.isoformat()}
        if isinstance(value, _dt.date):
            return {TAG: "date", "iso": value.isoformat()}
        if isinstance(value, WaitTimedOut):
            return {TAG: "timedout"}
        if isinstance(value, BaseException):
            return self.encode_error(value)
        return self._fallback(value, where)

    def _encode_model(self, model: BaseModel, where: str) -> Any:
        cls = type(model)
        declared = cls.model_fields
        fields = {name: getattr(model, name) for name in declared}
        if model.__pydantic_extra__:
            fields.update(model.__pydantic_extra__)
        data: dict[str, Any] = {}
        for k, v in fields.items():
            if v is None or type(v) in _PLAIN:  # the common case, kept cheap
                data[k] = v
                continue
            at = f"{where}.{k}" if where != "value" else f"{cls.__name__}.{k}"
            try:
                data[k] = self.encode(v, at)
            except ContextSerdeError as exc:
                if k not in declared:
                    raise
                # a declared field of a type pydantic serializes (UUID, Enum, Decimal,
                # Path, ...): store pydantic's JSON form; model_validate restores the type
                try:
                    data[k] = model.model_dump(mode="json", include={k})[k]
                except Exception:  # noqa: BLE001 - pydantic cannot either: report ours
                    raise exc from None
        key = _TYPE_KEYS.get(cls)
        if key is None:
            key = _TYPE_KEYS[cls] = type_key(cls)
        return {TAG: "model", "type": key, "data": data}

    def _fallback(self, value: Any, where: str) -> Any:
        raise ContextSerdeError(
            f"Cannot serialize {where}: a {type(value).__qualname__} is not JSON-serializable. "
            "Store JSON values or pydantic models, or pass serializer=PickleSerializer() "
            "for values you trust."
        )

    def encode_error(self, error: BaseException) -> Any:
        try:
            args = self.encode(list(error.args), "error.args")
        except ContextSerdeError:
            args = [str(error)]
        return {TAG: "error", "type": type_key(type(error)), "args": args, "message": str(error)}

    def decode(self, tree: Any, types: TypeResolver) -> Any:
        if isinstance(tree, list):
            return [self.decode(v, types) for v in tree]
        if not isinstance(tree, dict):
            return tree
        tag = tree.get(TAG)
        if tag is None:
            return {k: self.decode(v, types) for k, v in tree.items()}
        if tag == "model":
            return self._decode_model(tree, types)
        if tag == "dict":
            return {
                self._hashable(self.decode(k, types)): self.decode(v, types)
                for k, v in tree["items"]
            }
        if tag == "tuple":
            return tuple(self.decode(v, types) for v in tree["items"])
        if tag == "set":
            return {self._hashable(self.decode(v, types)) for v in tree["items"]}
        if tag == "bytes":
            return base64.b64decode(tree["b64"])
        if tag == "datetime":
            return _dt.datetime.fromisoformat(tree["iso"])
        if tag == "date":
            return _dt.date.fromisoformat(tree["iso"])
        if tag == "timedout":
            return WaitTimedOut()
        if tag == "error":
            return self.decode_error(tree, types)
        if tag == "pickle":
            return self._unpickle(tree)
        raise ContextSerdeError(
            f"Unknown value tag {tag!r} in stored data; was it written by a newer piton?"
        )

    @staticmethod
    def _hashable(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def _decode_model(self, tree: Mapping[str, Any], types: TypeResolver) -> Any:
        key = tree["type"]
        cls = types.resolve(key, BaseModel)
        if cls is None:
            raise ContextSerdeError(
                f"Stored data holds a '{key}', but no such event or model type is declared by "
                "the workflow or defined in this process. Import the module that defines it "
                "before restoring."
            )
        data = {k: self.decode(v, types) for k, v in tree["data"].items()}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ContextSerdeError(f"Stored '{key}' no longer validates: {exc}") from exc

    def decode_error(self, tree: Mapping[str, Any], types: TypeResolver) -> BaseException:
        cls = types.resolve(tree["type"], BaseException)
        args = self.decode(tree.get("args", []), types)
        if cls is not None:
            try:
                error: BaseException = cls(*args)
                return error
            except Exception:  # noqa: BLE001 - a constructor with other arguments
                pass
        return StoredError(f"{tree['type']}: {tree.get('message', '')}")

    def _unpickle(self, tree: Mapping[str, Any]) -> Any:
        raise ContextSerdeError(
            "Stored data holds a pickled value; restore it with serializer=PickleSerializer()."
        )

    # -- strings ----------------------------------------------------------------

    def dumps(self, value: Any, where: str = "value") -> str:
        return json.dumps(self.encode(value, where), separators=(",", ":"), allow_nan=True)

    def loads(self, text: str | bytes, types: TypeResolver) -> Any:
        return self.decode(json.loads(text), types)


class PickleSerializer(JsonSerializer):
    """JSON where possible, pickle (base64) for other values. Only for trusted data."""

    name = "pickle"

    def _fallback(self, value: Any, where: str) -> Any:
        try:
            blob = pickle.dumps(value)
        except Exception as exc:
            raise ContextSerdeError(
                f"Cannot serialize {where}: a {type(value).__qualname__} is neither JSON-"
                f"serializable nor picklable ({exc})."
            ) from exc
        return {TAG: "pickle", "b64": base64.b64encode(blob).decode()}

    def _unpickle(self, tree: Mapping[str, Any]) -> Any:
        return pickle.loads(base64.b64decode(tree["b64"]))  # noqa: S301 - opt-in


class StoredError(PitonError):
    """A stored error whose type cannot be rebuilt in this process."""


# --- runs ---------------------------------------------------------------------------


def _enc_attempt(s: JsonSerializer, a: Attempt) -> Any:
    return {
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


def _dec_attempt(s: JsonSerializer, t: Mapping[str, Any], types: TypeResolver) -> Attempt:
    return Attempt(
        step=t["step"],
        envelope=Envelope(t["id"], s.decode(t["event"], types), t.get("target")),
        retry_number=t.get("retry", 0),
        first_at=t.get("first_at"),
        last_error=None if t.get("last_error") is None else s.decode_error(t["last_error"], types),
        last_failed_at=t.get("last_failed_at"),
        resolved={k: s.decode(v, types) for k, v in t.get("resolved", {}).items()},
    )


def encode_run(state: RunState, s: JsonSerializer, *, keep_running: bool = False) -> dict[str, Any]:
    """The run as JSON trees, one per top-level part.

    In-flight work counts as queued (a restore re-runs it), unless ``keep_running``:
    a journal snapshot keeps executions as they are, since later entries name them.
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
        "counter": state.counter,
        "timeout": state.timeout,
        "active_elapsed": state.active_elapsed,
        "active_since": state.active_since,  # a journal tail after a snapshot goes on counting
        "result": s.encode(state.result, "result"),
        "error": None if state.error is None else s.encode_error(state.error),
    }


def decode_run(tree: Mapping[str, Any], graph: Graph, s: JsonSerializer) -> RunState:
    """Rebuild a RunState from :func:`encode_run`'s output, against ``graph``."""
    if tree.get("format") != FORMAT:
        raise ContextSerdeError(f"Not a piton context (format is {tree.get('format')!r}).")
    if str(tree.get("version")) != VERSION:
        raise ContextSerdeError(
            f"Unsupported context version {tree.get('version')!r}; this piton reads version "
            f"{VERSION}. Upgrade piton to read it."
        )
    types = TypeResolver(graph.event_types)
    if graph.state_type is not None:
        types.known[type_key(graph.state_type)] = graph.state_type
    state = RunState(run_id=tree["run_id"], graph=graph, status=tree["status"])
    state.values = s.decode(tree["state"], types)
    for t in tree["work"]:
        a = _dec_attempt(s, t, types)
        _check_step(graph, a.step)
        state.queues.setdefault(a.step, deque()).append(a)
    for r in tree.get("running", []):
        a = _dec_attempt(s, r["attempt"], types)
        _check_step(graph, a.step)
        state.running[r["id"]] = Execution(r["id"], a, r["at"])
        state.busy[a.step] = state.busy.get(a.step, 0) + 1
    state.delayed = {k: _dec_attempt(s, t, types) for k, t in tree.get("delayed", {}).items()}
    for w in tree.get("waiters", []):
        a = _dec_attempt(s, w["attempt"], types)
        _check_step(graph, a.step)
        etype = None if w["event_type"] is None else types.resolve(w["event_type"], BaseModel)
        if etype is None and w["event_type"] is not None:
            raise ContextSerdeError(
                f"Stored waiter waits for unknown event type '{w['event_type']}'."
            )
        state.waiters[w["key"]] = Waiter(
            w["id"], a, etype, s.decode(w["requirements"], types), w.get("deadline")
        )
    state.deadlines = {k: float(v) for k, v in tree.get("deadlines", {}).items()}
    for bid, b in tree.get("buffers", {}).items():
        buf = CollectBuffer(seen=set(b.get("seen", [])))
        for eid, ev in b.get("pending", []):
            event = s.decode(ev, types)
            buf.pending.setdefault(type(event), []).append((eid, event))
        for owner, batch in b.get("claimed", {}).items():
            buf.claimed[owner] = [(eid, s.decode(ev, types)) for eid, ev in batch]
        state.buffers[bid] = buf
    state.delivered = {k: int(v) for k, v in tree.get("delivered", {}).items()}
    state.streamed = {k: int(v) for k, v in tree.get("streamed", {}).items()}
    state.counter = int(tree.get("counter", 0))
    state.timeout = tree.get("timeout")
    state.active_elapsed = float(tree.get("active_elapsed", 0.0))
    since = tree.get("active_since")
    state.active_since = None if since is None else float(since)
    state.result = s.decode(tree.get("result"), types)
    if tree.get("error") is not None:
        state.error = s.decode_error(tree["error"], types)
    return state


# --- journal entries (reducer inputs) ------------------------------------------------------

_INPUTS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        inp.Begin,
        inp.StepDone,
        inp.StepFailed,
        inp.StepWaits,
        inp.Checkpoint,
        inp.Send,
        inp.SetState,
        inp.ReplaceState,
        inp.Collect,
        inp.StreamWrite,
        inp.TimerFired,
        inp.Cancel,
        inp.Park,
    )
}


def _where(item: Any, name: str) -> str:
    if name == "value" and isinstance(item, inp.SetState):
        return f"state key '{item.path}'"
    if name == "value":
        return "state"
    return name


_INPUT_FIELDS: dict[type[Any], tuple[str, ...]] = {}
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def encode_input(item: Any, s: JsonSerializer) -> str:
    """One reducer input as a journal entry (JSON text)."""
    cls = type(item)
    names = _INPUT_FIELDS.get(cls)
    if names is None:
        names = _INPUT_FIELDS[cls] = tuple(f.name for f in fields(item))
    tree: dict[str, Any] = {"k": cls.__name__}
    for name in names:
        value = getattr(item, name)
        if value is None or type(value) in _PLAIN:
            tree[name] = value
        elif name == "event_type":
            tree[name] = type_key(value)
        elif name == "expected":
            tree[name] = [[type_key(t), n] for t, n in expected_runs(value)]
        elif name == "error":
            tree[name] = s.encode_error(value)
        elif name == "sends":
            tree[name] = [
                [n, s.encode(ev, f"sent event {type(ev).__name__}"), target]
                for n, ev, target in value
            ]
        elif isinstance(value, str | int | float | bool):
            tree[name] = value
        else:
            tree[name] = s.encode(value, _where(item, name))
    return _dumps(tree)


def decode_input(text: str, s: JsonSerializer, types: TypeResolver) -> Any:
    """A journal entry back into the reducer input it was made from."""
    tree = json.loads(text)
    cls = _INPUTS.get(tree.pop("k", None))
    if cls is None:
        raise ContextSerdeError("Unknown journal entry kind; was it written by a newer piton?")
    kwargs: dict[str, Any] = {}
    for name, value in tree.items():
        if name == "event_type":
            resolved = None if value is None else types.resolve(value, BaseModel)
            if value is not None and resolved is None:
                raise IncompatibleWorkflowChange(
                    f"The stored run waits for event type '{value}', which is no longer defined."
                )
            kwargs[name] = resolved
        elif name == "expected":
            kwargs[name] = [_resolve_event(types, key) for key, n in value for _ in range(n)]
        elif name == "error":
            kwargs[name] = s.decode_error(value, types)
        elif name == "sends":
            kwargs[name] = tuple((n, s.decode(ev, types), target) for n, ev, target in value)
        else:
            kwargs[name] = s.decode(value, types)
    return cls(**kwargs)


def _resolve_event(types: TypeResolver, key: str) -> type[Any]:
    found = types.resolve(key, BaseModel)
    if found is None:
        raise IncompatibleWorkflowChange(
            f"The stored run uses event type '{key}', which is no longer defined."
        )
    return found


def _check_step(graph: Graph, step: str) -> None:
    if step not in graph.steps:
        raise IncompatibleWorkflowChange(
            f"The stored run has work for step '{step}', which workflow '{graph.workflow}' no "
            "longer has. Restore the step (or run the old code) to finish this run."
        )


__all__ = [
    "JsonSerializer",
    "PickleSerializer",
    "StoredError",
    "TypeResolver",
    "decode_input",
    "decode_run",
    "encode_input",
    "encode_run",
]
