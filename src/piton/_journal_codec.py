"""The journal codec: one reducer input as a journal entry (JSON text) and back.

An entry is a JSON object: ``"k"`` holds the entry's kind, and one key per field of the
input. The kinds and keys are on-disk names, written out in :data:`_ENTRIES`; they are
not derived from the Python names, so renaming a class or a field of
``piton._core.inputs`` does not change what is stored (``tests/test_stored_format.py``
fails until the table names the new field, and replays committed sample journals).
Changing an on-disk name or the way a field is stored is a format change: it needs a
:data:`JOURNAL_VERSION` bump and a reader for the old version (see
``docs/storage-format.md``).

Entries are read as untrusted data: any damage is a ``ContextSerdeError`` (or
``IncompatibleWorkflowChange`` when a type an entry names is gone), and errors inside
entries are rebuilt without calling their code (``construct=False``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, Final

from pydantic import BaseModel

from ._core import inputs as i
from ._core.graph import type_key
from ._core.reducer import expected_runs
from ._stored import (
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

JOURNAL_VERSION: Final = 1
"""The version of the entry format this module writes and reads. Version 1 entries carry
no version key; a later version marks its entries with ``"v"`` (reserved for it)."""

KIND_KEY: Final = "k"
"""The on-disk key holding an entry's kind."""

_VERSION_KEY: Final = "v"
_MAX_EXPECTED = 10_000  # events one collect_events call may wait for

Encode = Callable[[Any, JsonSerializer, Any, str], Any]
"""(value, serializer, the input, on-disk key) -> JSON tree; not called for None or a
plain str/int/float/bool, which are stored as they are."""
Decode = Callable[[Any, JsonSerializer, TypeResolver, bool, str], Any]
"""(JSON tree, serializer, types, construct, on-disk key) -> the field's value."""


@dataclass(frozen=True, slots=True)
class _Way:
    """How one kind of field is stored."""

    encode: Encode
    decode: Decode


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str  # the Python field of the input
    key: str  # its on-disk key
    way: _Way
    required: bool  # the input has no default for it
    default: Any = MISSING  # written only when the value differs (fields added later)


@dataclass(frozen=True, slots=True)
class _Entry:
    cls: type[i.Input]
    kind: str  # the on-disk kind
    fields: tuple[_Field, ...]  # in the order they are written
    by_key: dict[str, _Field]


# --- how fields are stored ------------------------------------------------------------


def _as_is(value: Any, s: JsonSerializer, item: Any, key: str) -> Any:
    return value


def _scalar(check: Callable[[Any, str], Any]) -> _Way:
    return _Way(_as_is, lambda value, s, types, construct, key: check(value, key))


def _enc_value(value: Any, s: JsonSerializer, item: Any, key: str) -> Any:
    if isinstance(item, i.SetState):
        where = f"state key '{item.path}'"
    elif isinstance(item, i.ReplaceState):
        where = "state"
    else:
        where = key
    return s.encode(value, where)


def _dec_value(
    value: Any, s: JsonSerializer, types: TypeResolver, construct: bool, key: str
) -> Any:
    return s._dec(value, types, construct, 0)


def _dec_event(
    value: Any, s: JsonSerializer, types: TypeResolver, construct: bool, key: str
) -> Any:
    return _event(s, value, types, construct)


def _dec_opt_event(
    value: Any, s: JsonSerializer, types: TypeResolver, construct: bool, key: str
) -> Any:
    return None if value is None else _event(s, value, types, construct)


def _dec_requirements(
    value: Any, s: JsonSerializer, types: TypeResolver, construct: bool, key: str
) -> Any:
    return _obj(s._dec(value, types, construct, 0), "requirements")


def _enc_event_type(value: Any, s: JsonSerializer, item: Any, key: str) -> Any:
    return type_key(value)


def _dec_event_type(
    value: Any, s: JsonSerializer, types: TypeResolver, construct: bool, key: str
) -> Any:
    name = _opt_text(value, "event type")
    return None if name is None else _resolve_event(types, name, "waits for")


def _enc_expected(value: Any, s: JsonSerializer, item: Any, key: str) -> Any:
    return [[type_key(t), n] for t, n in expected_runs(value)]


def _dec_expected(
    value: Any, s: JsonSerializer, types: TypeResolver, construct: bool, key: str
) -> Any:
    expected: list[type[Any]] = []
    for name, n in _pairs(value):
        if _count(n, "count") + len(expected) > _MAX_EXPECTED:
            raise ContextSerdeError(f"it expects more than {_MAX_EXPECTED} events")
        expected.extend([_resolve_event(types, _text(name, "event type"), "collects")] * n)
    return expected


def _enc_error(value: Any, s: JsonSerializer, item: Any, key: str) -> Any:
    return s.encode_error(value)


def _dec_error(
    value: Any, s: JsonSerializer, types: TypeResolver, construct: bool, key: str
) -> Any:
    return s._dec_error(value, types, construct, 0)


def _enc_sends(value: Any, s: JsonSerializer, item: Any, key: str) -> Any:
    return [[n, s.encode(ev, f"sent event {type(ev).__name__}"), target] for n, ev, target in value]


def _dec_sends(
    value: Any, s: JsonSerializer, types: TypeResolver, construct: bool, key: str
) -> Any:
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


def _resolve_event(types: TypeResolver, key: str, verb: str = "uses") -> type[Any]:
    found = types.resolve(key, BaseModel)
    if found is None:
        raise IncompatibleWorkflowChange(
            f"The stored run {verb} event type '{key[:200]}', which is no longer defined. "
            "Restore the type (or run the old code) to finish this run."
        )
    return found


TIME = _scalar(_time)  # a finite number (seconds since the epoch)
TEXT = _scalar(_text)
OPT_TEXT = _scalar(_opt_text)
INT = _scalar(_int)
OPT_NUMBER = _scalar(_opt_number)
VALUE = _Way(_enc_value, _dec_value)  # any value, through the value codec (serde)
EVENT = _Way(_enc_value, _dec_event)
OPT_EVENT = _Way(_enc_value, _dec_opt_event)
REQUIREMENTS = _Way(_enc_value, _dec_requirements)  # an object of values
EVENT_TYPE = _Way(_enc_event_type, _dec_event_type)  # a type key, or null
EXPECTED = _Way(_enc_expected, _dec_expected)  # [[type key, count], ...]
ERROR = _Way(_enc_error, _dec_error)  # the value codec's stored error
SENDS = _Way(_enc_sends, _dec_sends)  # [[index, event, target step or null], ...]


# --- the on-disk names ----------------------------------------------------------------


def _entry(
    cls: type[i.Input], kind: str, *, added: tuple[str, ...] = (), **names: tuple[str, _Way]
) -> _Entry:
    """``cls`` is stored as ``kind``; ``names`` maps each of its Python fields to its
    on-disk key and the way its value is stored. The fields ``added`` after the format's
    first entries were written are left out while they hold their default, so an entry
    written before they existed reads and writes back unchanged."""
    known = {f.name: f for f in fields(cls)}
    required = {
        n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING
    }
    table = tuple(
        _Field(attr, key, way, attr in required, known[attr].default if attr in added else MISSING)
        for attr, (key, way) in names.items()
    )
    return _Entry(cls, kind, table, {f.key: f for f in table})


_ENTRIES: Final[dict[type[i.Input], _Entry]] = {
    e.cls: e
    for e in (
        _entry(
            i.Begin,
            "Begin",
            at=("at", TIME),
            start_event=("start_event", OPT_EVENT),
            owner=("owner", OPT_TEXT),
            epoch=("epoch", INT),
            trace=("trace", OPT_TEXT),
            added=("owner", "epoch", "trace"),
        ),
        _entry(
            i.StepDone,
            "StepDone",
            at=("at", TIME),
            exec_id=("exec_id", TEXT),
            result=("result", VALUE),
            sends=("sends", SENDS),
            step=("step", TEXT),
            took=("took", OPT_NUMBER),
            added=("step", "took"),
        ),
        _entry(
            i.StepFailed,
            "StepFailed",
            at=("at", TIME),
            exec_id=("exec_id", TEXT),
            error=("error", ERROR),
            retry_in=("retry_in", OPT_NUMBER),
            step=("step", TEXT),
            took=("took", OPT_NUMBER),
            added=("step", "took"),
        ),
        _entry(
            i.StepWaits,
            "StepWaits",
            at=("at", TIME),
            exec_id=("exec_id", TEXT),
            waiter_id=("waiter_id", TEXT),
            event_type=("event_type", EVENT_TYPE),
            requirements=("requirements", REQUIREMENTS),
            waiter_event=("waiter_event", OPT_EVENT),
            timeout=("timeout", OPT_NUMBER),
            sends=("sends", SENDS),
            step=("step", TEXT),
            took=("took", OPT_NUMBER),
            added=("step", "took"),
        ),
        _entry(
            i.Checkpoint,
            "Checkpoint",
            at=("at", TIME),
            exec_id=("exec_id", TEXT),
            sends=("sends", SENDS),
        ),
        _entry(
            i.Send, "Send", at=("at", TIME), event=("event", EVENT), target=("target", OPT_TEXT)
        ),
        _entry(
            i.SetState, "SetState", at=("at", TIME), path=("path", TEXT), value=("value", VALUE)
        ),
        _entry(i.ReplaceState, "ReplaceState", at=("at", TIME), value=("value", VALUE)),
        _entry(
            i.Collect,
            "Collect",
            at=("at", TIME),
            exec_id=("exec_id", TEXT),
            event=("event", EVENT),
            expected=("expected", EXPECTED),
            buffer_id=("buffer_id", TEXT),
        ),
        _entry(
            i.StreamWrite,
            "StreamWrite",
            at=("at", TIME),
            event=("event", EVENT),
            exec_id=("exec_id", TEXT),
            index=("index", INT),
        ),
        _entry(i.TimerFired, "TimerFired", at=("at", TIME), timer_id=("timer_id", TEXT)),
        _entry(i.Cancel, "Cancel", at=("at", TIME)),
        _entry(i.Park, "Park", at=("at", TIME), trace=("trace", OPT_TEXT), added=("trace",)),
    )
}
"""Every input kind (``piton._core.inputs.INPUTS``) with its on-disk kind and keys."""

_BY_KIND: Final[dict[str, _Entry]] = {e.kind: e for e in _ENTRIES.values()}


def _check_table() -> None:
    """Every input kind, and every field of it, has an on-disk name (and no name is used
    twice): a field without one would silently not be stored."""
    problems = [f"{c.__name__} has no entry" for c in i.INPUTS if c not in _ENTRIES]
    for cls, e in _ENTRIES.items():
        names = {f.name for f in fields(cls)}
        table = {f.attr for f in e.fields}
        problems += [f"{cls.__name__}.{n} has no on-disk key" for n in sorted(names - table)]
        problems += [f"{cls.__name__} has no field {n}" for n in sorted(table - names)]
        if len(e.by_key) != len(e.fields):
            problems.append(f"{cls.__name__} uses an on-disk key twice")
    if len(_BY_KIND) != len(_ENTRIES) or _ENTRIES.keys() != set(i.INPUTS):
        problems.append("the kinds are not one per input of piton._core.inputs.Input")
    if problems:
        raise TypeError(
            "piton._journal_codec._ENTRIES does not match piton._core.inputs: "
            + "; ".join(problems)
            + ". Name new fields there; renaming an on-disk name is a format change "
            "(see docs/storage-format.md)."
        )


_check_table()


def on_disk_names() -> dict[str, tuple[str, dict[str, str]]]:
    """Input class name -> (on-disk kind, {Python field: on-disk key}), for tests and docs."""
    return {
        cls.__name__: (e.kind, {f.attr: f.key for f in e.fields}) for cls, e in _ENTRIES.items()
    }


# --- encoding and decoding ------------------------------------------------------------

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def encode_input(item: i.Input, s: JsonSerializer) -> str:
    """One reducer input as a journal entry (JSON text)."""
    entry = _ENTRIES[type(item)]
    tree: dict[str, Any] = {KIND_KEY: entry.kind}
    for f in entry.fields:
        value = getattr(item, f.attr)
        if f.default is not MISSING and value == f.default:
            continue
        if value is None or type(value) in _PLAIN:
            tree[f.key] = value
        else:
            tree[f.key] = f.way.encode(value, s, item, f.key)
    return _dumps(tree)


def decode_input(
    text: str | bytes, s: JsonSerializer, types: TypeResolver, *, construct: bool = False
) -> i.Input:
    """A journal entry back into the reducer input it was made from.

    Any damage raises ContextSerdeError (IncompatibleWorkflowChange when a type the entry
    names is gone); ``construct=False`` (the default) rebuilds errors without their code.
    """
    tree = _parse_json(text, "journal entry")
    if not isinstance(tree, dict):
        raise ContextSerdeError(
            f"A journal entry must be a JSON object, not {type(tree).__name__}."
        )
    version = tree.pop(_VERSION_KEY, 1)  # unmarked entries are version 1
    if version != JOURNAL_VERSION:
        raise ContextSerdeError(
            f"A journal entry has format version {version!r:.40}; this piton reads version "
            f"{JOURNAL_VERSION}. Was it written by a newer piton?"
        )
    kind = tree.pop(KIND_KEY, None)
    entry = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise ContextSerdeError(
            f"Unknown journal entry kind {kind!r:.80}; was it written by a newer piton?"
        )
    kwargs: dict[str, Any] = {}
    for key, value in tree.items():
        f = entry.by_key.get(key)
        if f is None:
            raise ContextSerdeError(
                f"A {kind} journal entry is damaged: it has no field {key!r:.80}."
            )
        kwargs[f.attr] = _decode_field(f, kind, value, s, types, construct)
    missing = [f.key for f in entry.fields if f.required and f.attr not in kwargs]
    if missing:
        raise ContextSerdeError(
            f"A {kind} journal entry is damaged: it lacks {', '.join(map(repr, missing))}."
        )
    return entry.cls(**kwargs)


def _decode_field(
    f: _Field, kind: str, value: Any, s: JsonSerializer, types: TypeResolver, construct: bool
) -> Any:
    try:
        return f.way.decode(value, s, types, construct, f.key)
    except PitonError as exc:
        if not isinstance(exc, ContextSerdeError):
            raise
        raise ContextSerdeError(f"Field '{f.key}' of a {kind} journal entry: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - stored data is untrusted: report it
        raise ContextSerdeError(
            f"Field '{f.key}' of a {kind} journal entry is damaged ({_why(exc)})."
        ) from exc


__all__ = ["JOURNAL_VERSION", "KIND_KEY", "decode_input", "encode_input", "on_disk_names"]
