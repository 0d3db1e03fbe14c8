"""Reading stored data safely: the checks every stored snapshot and journal entry goes
through. Stored data is untrusted: each helper raises ``ContextSerdeError`` saying what is
damaged, never a bare Python exception."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ._core.graph import Graph
from .errors import ContextSerdeError, IncompatibleWorkflowChange, PitonError

if TYPE_CHECKING:
    from .serde import JsonSerializer, TypeResolver


def _why(exc: BaseException) -> str:
    text = str(exc)
    return type(exc).__name__ + (f": {text[:300]}" if text else "")


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


def _opt_number(value: Any, what: str) -> float | None:
    return _number(value, what, optional=True)


def _check_step(graph: Graph, step: str) -> None:
    if step not in graph.steps:
        raise IncompatibleWorkflowChange(
            f"The stored run has work for step '{step[:200]}', which workflow "
            f"'{graph.workflow}' no longer has. Restore the step (or run the old code) to "
            "finish this run."
        )
