"""The journal codec: one reducer input as a journal entry (JSON text) and back.

Entries are read as untrusted data: any damage is a ``ContextSerdeError`` (or
``IncompatibleWorkflowChange`` when a type an entry names is gone), and errors inside
entries are rebuilt without calling their code (``construct=False``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from pydantic import BaseModel

from ._core import inputs as inp
from ._core.graph import type_key
from ._core.reducer import expected_runs
from ._stored import (
    _bool,
    _count,
    _event,
    _int,
    _list,
    _obj,
    _opt_number,
    _opt_text,
    _pairs,
    _parse_json,
    _text,
    _time,
    _why,
)
from .errors import ContextSerdeError, IncompatibleWorkflowChange, PitonError
from .serde import _PLAIN, JsonSerializer, TypeResolver

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


def decode_input(
    text: str | bytes, s: JsonSerializer, types: TypeResolver, *, construct: bool = False
) -> Any:
    """A journal entry back into the reducer input it was made from.

    Any damage raises ContextSerdeError (IncompatibleWorkflowChange when a type the entry
    names is gone); ``construct=False`` (the default) rebuilds errors without their code.
    """
    tree = _parse_json(text, "journal entry")
    if not isinstance(tree, dict):
        raise ContextSerdeError(
            f"A journal entry must be a JSON object, not {type(tree).__name__}."
        )
    kind = tree.pop("k", None)
    cls = _INPUTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ContextSerdeError(
            f"Unknown journal entry kind {kind!r:.80}; was it written by a newer piton?"
        )
    kwargs: dict[str, Any] = {}
    for name, value in tree.items():
        try:
            kwargs[name] = _dec_entry_field(name, value, s, types, construct)
        except PitonError as exc:
            if not isinstance(exc, ContextSerdeError):
                raise
            raise ContextSerdeError(f"Field '{name}' of a {kind} journal entry: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - stored data is untrusted: report it
            raise ContextSerdeError(
                f"Field '{name}' of a {kind} journal entry is damaged ({_why(exc)})."
            ) from exc
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a missing or unknown field
        raise ContextSerdeError(f"A {kind} journal entry is damaged ({_why(exc)}).") from exc


_MAX_EXPECTED = 10_000  # events one collect_events call may wait for


def _dec_entry_field(
    name: str, value: Any, s: JsonSerializer, types: TypeResolver, construct: bool
) -> Any:
    check = _ENTRY_SCALARS.get(name)
    if check is not None:
        return check(value, name)
    if name == "event_type":
        key = _opt_text(value, "event type")
        return None if key is None else _resolve_event(types, key, "waits for")
    if name == "expected":
        expected: list[type[Any]] = []
        for key, n in _pairs(value):
            if _count(n, "count") + len(expected) > _MAX_EXPECTED:
                raise ContextSerdeError(f"it expects more than {_MAX_EXPECTED} events")
            expected.extend([_resolve_event(types, _text(key, "event type"), "collects")] * n)
        return expected
    if name == "error":
        return s._dec_error(value, types, construct, 0)
    if name == "sends":
        sends = []
        for triple in _list(value):
            if not isinstance(triple, list) or len(triple) != 3:
                raise ContextSerdeError(f"a send is damaged: {triple!r:.80}")
            n, ev, target = triple
            sends.append(
                (
                    _count(n, "send index"),
                    _event(s, ev, types, construct),
                    _opt_text(target, "target step"),
                )
            )
        return tuple(sends)
    if name in ("event", "start_event", "waiter_event"):
        if value is None and name != "event":
            return None
        return _event(s, value, types, construct)
    decoded = s._dec(value, types, construct, 0)
    if name == "requirements":
        _obj(decoded, "requirements")
    return decoded


def _resolve_event(types: TypeResolver, key: str, verb: str = "uses") -> type[Any]:
    found = types.resolve(key, BaseModel)
    if found is None:
        raise IncompatibleWorkflowChange(
            f"The stored run {verb} event type '{key[:200]}', which is no longer defined. "
            "Restore the type (or run the old code) to finish this run."
        )
    return found




_ENTRY_SCALARS: dict[str, Callable[[Any, str], Any]] = {
    "at": _time,
    "timeout": _opt_number,
    "retry_in": _opt_number,
    "exec_id": _text,
    "waiter_id": _text,
    "timer_id": _text,
    "buffer_id": _text,
    "path": _text,
    "target": _opt_text,
    "index": _int,
    "retryable": _bool,
}


__all__ = ["decode_input", "encode_input"]
