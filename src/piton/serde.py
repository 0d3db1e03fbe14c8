"""Serialization of events, state values, errors and whole runs.

Values become JSON trees. Pydantic models (events included) are tagged with their
type's ``module.QualName``; when read back, that name is looked up among the types
the workflow declares and, failing that, among the model classes already defined in
this process. A name found in stored data is never imported.

Stored data (snapshots, journal rows, ``Context.from_dict`` payloads, stream rows) is
untrusted input: reading it raises :class:`ContextSerdeError` for any damage (never a
bare Python exception), nests at most :data:`MAX_NESTING` levels, rebuilds stored errors
only as ``Exception`` subclasses, and, with ``construct=False`` (journal and snapshot
decoding), rebuilds them without calling any of their code.

``JsonSerializer`` is the default. ``PickleSerializer`` additionally stores values
JSON cannot hold as pickles; use it only for data you trust.
"""

from __future__ import annotations

import base64
import builtins
import datetime as _dt
import decimal
import enum
import ipaddress
import json
import math
import pathlib
import pickle
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from typing import Annotated, Any, Final, cast

import pydantic_core
from pydantic import AnyUrl, BaseModel, TypeAdapter

from ._core import inputs as inp
from ._core.graph import Graph, type_key
from ._core.reducer import expected_runs
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
    Waiter,
    WaitTimedOut,
)
from .errors import ContextSerdeError, IncompatibleWorkflowChange, PitonError

TAG = "__piton__"
FORMAT = "piton.context"
VERSION = "1"

MAX_NESTING: Final = 200
"""How deeply values may nest (lists, dicts, models) to be stored or read back."""

_MAIN = "__main__."


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


def _is_sub(cls: Any, base: type[Any]) -> bool:
    return isinstance(cls, type) and issubclass(cls, base)


class TypeResolver:
    """Finds a type by its stored name among known types, then loaded subclasses.

    ``known`` are the types the workflow declares (its events and state type). A run
    started by ``python app.py`` stores its types as ``__main__.X``, and a worker that
    imports ``app`` knows them as ``app.X`` (or the other way round): such a name matches
    the type with that qualified name when exactly one known type has it, or else when
    exactly one loaded subclass has it (a type only ``wait_for_event`` names, say).
    """

    def __init__(self, known: Mapping[str, type[Any]] | None = None) -> None:
        self.known: dict[str, type[Any]] = dict(known or {})
        self._found: dict[str, type[Any]] = {}

    @classmethod
    def of(cls, graph: Graph) -> TypeResolver:
        """The resolver for runs of ``graph``: its event types and its state type."""
        types = cls(graph.event_types)
        if graph.state_type is not None:
            types.known[type_key(graph.state_type)] = graph.state_type
        return types

    def resolve(self, key: str, base: type[Any]) -> type[Any] | None:
        if not isinstance(key, str):
            return None
        found = self.known.get(key)
        if _is_sub(found, base):
            return found
        found = _main_alias(key, base, self.known.values())
        if found is not None:
            return found
        if issubclass(base, BaseException):
            found = getattr(builtins, key.removeprefix("builtins."), None)
            if _is_sub(found, base):
                return found
        found = self._found.get(key)
        if _is_sub(found, base):
            return found
        found = next((c for c in _walk_subclasses(base) if type_key(c) == key), None)
        if found is None:
            found = _main_alias(key, base, _walk_subclasses(base))
        if found is not None:
            self._found[key] = found
        return found


def _main_alias(key: str, base: type[Any], candidates: Iterable[type[Any]]) -> type[Any] | None:
    """``__main__.X`` -> the one candidate named ``X``; ``app.X`` -> the one ``__main__.X``."""
    if key.startswith(_MAIN):
        qualname = key[len(_MAIN) :]
        matches = {c for c in candidates if c.__qualname__ == qualname}
    else:
        matches = {
            c
            for c in candidates
            if c.__module__ == "__main__" and key.endswith("." + c.__qualname__)
        }
    matches = {c for c in matches if _is_sub(c, base)}
    return matches.pop() if len(matches) == 1 else None


_PLAIN = frozenset({str, int, float, bool})
_TYPE_KEYS: dict[type[Any], str] = {}  # type_key per class, as encoding runs per step

# Values whose pydantic JSON form, read back through the field's declared type, gives the
# same value: a declared field holding one of them (or containers and models of them) is
# stored in that form. Anything else (files, iterators, sockets, objects) is refused.
_PYDANTIC_VALUES: tuple[type[Any], ...] = (
    uuid.UUID,
    decimal.Decimal,
    enum.Enum,
    pathlib.PurePath,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
    AnyUrl,
    pydantic_core.Url,
    pydantic_core.MultiHostUrl,
)
_ADAPTERS: dict[tuple[type[Any], str], TypeAdapter[Any]] = {}


def _pydantic_value(value: Any, depth: int) -> bool:
    """Is ``value`` made only of JSON values and :data:`_PYDANTIC_VALUES`?"""
    if depth > MAX_NESTING:
        return False
    if value is None or isinstance(value, str | int | float | bytes):
        return True
    if isinstance(value, _PYDANTIC_VALUES):
        return True
    if isinstance(value, list | tuple | set | frozenset):
        return all(_pydantic_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return TAG not in value and all(
            _pydantic_value(k, depth + 1) and _pydantic_value(v, depth + 1)
            for k, v in value.items()
        )
    if isinstance(value, BaseModel):
        data = {n: vars(value).get(n) for n in type(value).model_fields}
        data.update(value.__pydantic_extra__ or {})
        return all(_pydantic_value(v, depth + 1) for v in data.values())
    return False


def _same(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are equal and of the same types, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, set | frozenset):
        names = sorted(type(x).__qualname__ for x in a)
        return bool(a == b) and names == sorted(type(x).__qualname__ for x in b)
    return a is b or bool(a == b)


def _why(exc: BaseException) -> str:
    text = str(exc)
    return type(exc).__name__ + (f": {text[:300]}" if text else "")


class JsonSerializer:
    """Encodes values as JSON trees; refuses what JSON cannot hold, naming where it was."""

    name = "json"

    def encode(self, value: Any, where: str = "value") -> Any:
        return self._enc(value, where, 0)

    def _enc(self, value: Any, where: str, depth: int) -> Any:
        if value is None or isinstance(value, bool | int | str | float):
            return value
        if depth >= MAX_NESTING:
            raise ContextSerdeError(
                f"Cannot serialize {where}: it nests more than {MAX_NESTING} levels deep (or "
                "contains itself). Store flatter data."
            )
        depth += 1
        if isinstance(value, BaseModel):  # events and state models: the usual case
            return self._encode_model(value, where, depth)
        if isinstance(value, list):
            return [self._enc(v, f"{where}[{n}]", depth) for n, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and TAG not in value:
                return {k: self._enc(v, f"{where}.{k}", depth) for k, v in value.items()}
            return {
                TAG: "dict",
                "items": [
                    [self._enc(k, where, depth), self._enc(v, f"{where}[{k!r}]", depth)]
                    for k, v in value.items()
                ],
            }
        if isinstance(value, tuple):
            return {TAG: "tuple", "items": [self._enc(v, where, depth) for v in value]}
        if isinstance(value, set | frozenset):
            return {TAG: "set", "items": [self._enc(v, where, depth) for v in value]}
        if isinstance(value, bytes):
            return {TAG: "bytes", "b64": base64.b64encode(value).decode()}
        if isinstance(value, _dt.datetime):
            return {TAG: "datetime", "iso": value.isoformat()}
        if isinstance(value, _dt.date):
            return {TAG: "date", "iso": value.isoformat()}
        if isinstance(value, WaitTimedOut):
            return {TAG: "timedout"}
        if isinstance(value, BaseException):
            return self._enc_error(value, depth)
        return self._fallback(value, where)

    def _encode_model(self, model: BaseModel, where: str, depth: int) -> Any:
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
                data[k] = self._enc(v, at, depth)
            except ContextSerdeError:
                if k not in declared:
                    raise
                # a declared field of a type pydantic stores faithfully (UUID, Enum,
                # Decimal, Path, ...): its JSON form; model_validate restores the type
                data[k] = self._pydantic_form(model, k, v, where)
        key = _TYPE_KEYS.get(cls)
        if key is None:
            key = _TYPE_KEYS[cls] = type_key(cls)
        return {TAG: "model", "type": key, "data": data}

    def _pydantic_form(self, model: BaseModel, name: str, value: Any, where: str) -> Any:
        cls = type(model)

        def refuse(why: str) -> ContextSerdeError:
            place = "" if where == "value" else f" (in {where})"
            return ContextSerdeError(
                f"Cannot serialize field '{name}' of {cls.__qualname__}{place}: {why}. A field "
                "must hold JSON values, pydantic models, or values pydantic stores faithfully "
                "(UUID, Decimal, Enum, Path, dates and times, IP addresses, URLs) in a field "
                "declared with their type. Pass the data itself (for a file: its content or "
                "its path), or pass serializer=PickleSerializer() for values you trust."
            )

        kind = type(value).__qualname__
        if not _pydantic_value(value, 0):
            raise refuse(f"a {kind} cannot be stored") from None
        try:
            dumped = model.model_dump(mode="json", include={name})[name]
            adapter = _ADAPTERS.get((cls, name))
            if adapter is None:
                info = cls.model_fields[name]
                adapter = _ADAPTERS[(cls, name)] = TypeAdapter(
                    cast(Any, Annotated[info.annotation, info])
                )
            back = adapter.validate_python(dumped)
        except Exception as exc:  # noqa: BLE001 - pydantic cannot store it either
            raise refuse(f"a {kind} cannot be stored ({_why(exc)})") from None
        if not _same(back, value):
            raise refuse(
                f"a {kind} would come back as {type(back).__qualname__} {back!r:.80}; declare "
                "the field with the value's type"
            ) from None
        return dumped

    def _fallback(self, value: Any, where: str) -> Any:
        raise ContextSerdeError(
            f"Cannot serialize {where}: a {type(value).__qualname__} is not JSON-serializable. "
            "Store JSON values or pydantic models, or pass serializer=PickleSerializer() "
            "for values you trust."
        )

    def encode_error(self, error: BaseException) -> Any:
        return self._enc_error(error, 0)

    def _enc_error(self, error: BaseException, depth: int) -> Any:
        try:
            message = str(error)
        except Exception:  # noqa: BLE001 - a broken __str__ must not fail the commit
            message = f"<{type(error).__qualname__} with an unprintable message>"
        try:
            args = self._enc(list(error.args), "error.args", depth)
        except ContextSerdeError:
            args = [message]
        return {TAG: "error", "type": type_key(type(error)), "args": args, "message": message}

    # -- reading ----------------------------------------------------------------

    def decode(self, tree: Any, types: TypeResolver, *, construct: bool = True) -> Any:
        """A JSON tree back into a value; any damage raises ContextSerdeError.

        ``construct=False`` rebuilds stored errors without calling their code.
        """
        try:
            return self._dec(tree, types, construct, 0)
        except PitonError:
            raise
        except Exception as exc:  # noqa: BLE001 - stored data is untrusted: report it
            raise ContextSerdeError(f"A stored value is damaged ({_why(exc)}).") from exc

    def _dec(self, tree: Any, types: TypeResolver, construct: bool, depth: int) -> Any:
        if not isinstance(tree, list | dict):
            return tree
        if depth >= MAX_NESTING:
            raise ContextSerdeError(
                f"A stored value nests more than {MAX_NESTING} levels deep; it is damaged."
            )
        depth += 1
        if isinstance(tree, list):
            return [self._dec(v, types, construct, depth) for v in tree]
        tag = tree.get(TAG)
        if tag is None:
            return {k: self._dec(v, types, construct, depth) for k, v in tree.items()}
        if tag == "model":
            return self._dec_model(tree, types, construct, depth)
        if tag == "dict":
            return {
                self._hashable(self._dec(k, types, construct, depth)): self._dec(
                    v, types, construct, depth
                )
                for k, v in _pairs(tree["items"])
            }
        if tag == "tuple":
            return tuple(self._dec(v, types, construct, depth) for v in _list(tree["items"]))
        if tag == "set":
            return {
                self._hashable(self._dec(v, types, construct, depth)) for v in _list(tree["items"])
            }
        if tag == "bytes":
            return base64.b64decode(_text(tree["b64"], "bytes"), validate=True)
        if tag == "datetime":
            return _dt.datetime.fromisoformat(_text(tree["iso"], "datetime"))
        if tag == "date":
            return _dt.date.fromisoformat(_text(tree["iso"], "date"))
        if tag == "timedout":
            return WaitTimedOut()
        if tag == "error":
            return self._dec_error(tree, types, construct, depth)
        if tag == "pickle":
            return self._unpickle(tree)
        raise ContextSerdeError(
            f"Unknown value tag {str(tag)[:80]!r} in stored data; was it written by a newer piton?"
        )

    @staticmethod
    def _hashable(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def _dec_model(
        self, tree: Mapping[str, Any], types: TypeResolver, construct: bool, depth: int
    ) -> Any:
        key = _text(tree.get("type"), "model type")
        cls = types.resolve(key, BaseModel)
        if cls is None:
            raise ContextSerdeError(
                f"Stored data holds a '{key[:200]}', but no such event or model type is "
                "declared by the workflow or defined in this process. Import the module that "
                "defines it before restoring."
            )
        raw = tree.get("data")
        if not isinstance(raw, dict):
            raise ContextSerdeError(f"The stored '{key}' is damaged: its data is not an object.")
        data = {k: self._dec(v, types, construct, depth) for k, v in raw.items()}
        try:
            return cls.model_validate(data)
        except Exception as exc:  # noqa: BLE001 - validators may raise anything
            raise ContextSerdeError(f"Stored '{key}' no longer validates: {exc}") from exc

    def decode_error(
        self, tree: Any, types: TypeResolver, *, construct: bool = True
    ) -> BaseException:
        """A stored error: an instance of its ``Exception`` subclass, or a StoredError.

        ``construct=True`` calls the class with the stored args. ``construct=False`` calls
        none of its code (no ``__init__``, ``__new__`` override or ``__setstate__``): the
        instance is made by the builtin exception's ``__new__`` and given its ``args``.
        """
        try:
            return self._dec_error(tree, types, construct, 0)
        except PitonError:
            raise
        except Exception as exc:  # noqa: BLE001 - stored data is untrusted: report it
            raise ContextSerdeError(f"A stored error is damaged ({_why(exc)}).") from exc

    def _dec_error(
        self, tree: Any, types: TypeResolver, construct: bool, depth: int
    ) -> BaseException:
        if not isinstance(tree, dict):
            raise ContextSerdeError(f"A stored error is damaged: {type(tree).__name__}.")
        name = _text(tree.get("type"), "error type")
        message = tree.get("message", "")
        message = message if isinstance(message, str) else repr(message)
        args = tuple(self._dec(a, types, construct, depth + 1) for a in _list(tree.get("args", [])))
        cls = types.resolve(name, Exception)
        if cls is None:
            return StoredError(name, message)
        if construct:
            try:
                error: BaseException = cls(*args)
                return error
            except Exception:  # noqa: BLE001 - a constructor with other arguments
                pass
        return _bare_error(cls, args) or StoredError(name, message)

    def _unpickle(self, tree: Mapping[str, Any]) -> Any:
        raise ContextSerdeError(
            "Stored data holds a pickled value; restore it with serializer=PickleSerializer()."
        )

    # -- strings ----------------------------------------------------------------

    def dumps(self, value: Any, where: str = "value") -> str:
        return json.dumps(self.encode(value, where), separators=(",", ":"), allow_nan=True)

    def loads(self, text: str | bytes, types: TypeResolver, *, construct: bool = True) -> Any:
        return self.decode(_parse_json(text, "stored value"), types, construct=construct)


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
    """A stored error that cannot be rebuilt as itself in this process.

    ``type_name`` is the stored ``module.QualName``, ``message`` its message. Errors are
    rebuilt only as ``Exception`` subclasses this process knows; a stored ``SystemExit``,
    ``KeyboardInterrupt`` or ``CancelledError`` comes back as a StoredError.
    """

    def __init__(self, type_name: str, message: str = "") -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


_ARGS: Any = vars(BaseException)["args"]


def _bare_error(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException | None:
    """An instance of ``cls`` made without running any of its own code, or None."""
    builtin = next(b for b in cls.__mro__ if getattr(builtins, b.__name__, None) is b)
    try:
        error: BaseException = builtin.__new__(cls)
        _ARGS.__set__(error, args)  # the builtin slot, even where a class redefines .args
    except Exception:  # noqa: BLE001 - e.g. a C type whose __new__ needs arguments
        return None
    return error


# --- shapes of stored data ------------------------------------------------------------------


def _parse_json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ContextSerdeError(f"The {what} nests too deeply to be read; it is damaged.") from None
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ContextSerdeError(f"The {what} is not valid JSON ({_why(exc)}).") from exc


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ContextSerdeError(f"Stored {what} is damaged: expected a string, got {value!r:.80}.")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ContextSerdeError(f"Stored data is damaged: expected a list, got {value!r:.80}.")
    return value


def _pairs(value: Any) -> Iterator[tuple[Any, Any]]:
    for pair in _list(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ContextSerdeError(f"Stored data is damaged: expected a pair, got {pair!r:.80}.")
        yield pair[0], pair[1]


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


def _dec_attempt(s: JsonSerializer, t: Any, types: TypeResolver, construct: bool) -> Attempt:
    t = _obj(t, "work item")
    last_error = t.get("last_error")
    return Attempt(
        step=_text(t.get("step"), "step name"),
        envelope=Envelope(
            _text(t.get("id"), "event id"),
            _event(s, t.get("event"), types, construct),
            _opt_text(t.get("target"), "target step"),
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
        "kept": [
            {"id": env.id, "event": s.encode(env.event, "kept event"), "target": env.target}
            for env in state.kept
        ],
        "counter": state.counter,
        "timeout": state.timeout,
        "active_elapsed": state.active_elapsed,
        "active_since": state.active_since,  # a journal tail after a snapshot goes on counting
        "result": s.encode(state.result, "result"),
        "error": None if state.error is None else s.encode_error(state.error),
    }


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
        state.status = _choice(tree.get("status"), _STATUSES, "status")
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


def _check_step(graph: Graph, step: str) -> None:
    if step not in graph.steps:
        raise IncompatibleWorkflowChange(
            f"The stored run has work for step '{step[:200]}', which workflow "
            f"'{graph.workflow}' no longer has. Restore the step (or run the old code) to "
            "finish this run."
        )


# --- checks on the shapes of stored runs and entries ----------------------------------------


@contextmanager
def _reading(part: str) -> Iterator[None]:
    """Turns any failure to read ``part`` of a stored run into a ContextSerdeError."""
    try:
        yield
    except ContextSerdeError as exc:
        raise ContextSerdeError(f"The stored run's '{part}' cannot be read: {exc}") from exc
    except PitonError:
        raise
    except Exception as exc:  # noqa: BLE001 - stored data is untrusted: report it
        raise ContextSerdeError(f"The stored run's '{part}' is damaged ({_why(exc)}).") from exc


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContextSerdeError(f"{what} is damaged: expected an object, got {value!r:.80}")
    return value


def _opt_text(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _number(value: Any, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise ContextSerdeError(f"{what} is damaged: expected a finite number, got {value!r:.80}")


def _time(value: Any, what: str) -> float:
    number = _number(value, what)
    assert number is not None
    return number


def _count(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ContextSerdeError(f"{what} is damaged: expected a count, got {value!r:.80}")


def _counts(value: Any, what: str) -> dict[str, int]:
    return {_text(k, what): _count(v, what) for k, v in _obj(value, what).items()}


def _choice(value: Any, allowed: frozenset[str], what: str) -> str:
    if isinstance(value, str) and value in allowed:
        return value
    raise ContextSerdeError(
        f"{what} is damaged: {value!r:.80} is not one of {', '.join(sorted(allowed))}"
    )


def _event(s: JsonSerializer, tree: Any, types: TypeResolver, construct: bool) -> Any:
    event = s._dec(tree, types, construct, 0)
    if not isinstance(event, BaseModel):
        raise ContextSerdeError(f"expected a stored event, got a {type(event).__name__}")
    return event


def _int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ContextSerdeError(f"{what} is damaged: expected an integer, got {value!r:.80}")


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ContextSerdeError(f"{what} is damaged: expected true or false, got {value!r:.80}")


def _opt_number(value: Any, what: str) -> float | None:
    return _number(value, what, optional=True)


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
