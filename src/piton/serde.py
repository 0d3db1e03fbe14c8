"""The value codec: events, state values and errors as JSON trees, and back.

Whole runs (snapshots, ``Context.to_dict``) are ``piton._run_codec``; journal entries are
``piton._journal_codec``; both store their values through this module.

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
import pathlib
import pickle
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Final, cast

import pydantic_core
from pydantic import AnyUrl, BaseModel, TypeAdapter

from ._core.graph import Graph, type_key
from ._core.state import WaitTimedOut
from ._stored import _list, _pairs, _parse_json, _text, _why
from .errors import ContextSerdeError, PitonError

TAG = "__piton__"
"""The key that marks a tagged value in a JSON tree (a model, tuple, set, bytes, error...)."""

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


__all__ = ["MAX_NESTING", "JsonSerializer", "PickleSerializer", "StoredError", "TypeResolver"]
