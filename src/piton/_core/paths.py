"""State paths: the dotted keys of ``ctx.store.get/set`` and of the journal's SetState.

A path reaches only state data: the keys of dicts, the indices of lists (and, to read,
tuples), and the declared fields or extra fields of pydantic models. No segment may start
with ``_``, and a path never walks into the attributes of anything else, so a path read
from stored data (a journal entry, a snapshot) can never reach a class, a module or a
builtin. Every bad path raises :class:`~piton.errors.StateKeyError` naming the path and
the segment.
"""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import BaseModel

from piton.errors import StateKeyError

MAX_PATH_SEGMENTS: Final = 64
"""How many dot-separated segments a state path may have."""

MISSING: Final[Any] = object()
"""What :func:`get_path` returns when nothing is stored at the path."""

_INDEX = re.compile(r"-?[0-9]{1,9}")


def split_path(path: object) -> list[str]:
    """The segments of ``path``; raises StateKeyError for a path no state can have."""
    if not isinstance(path, str) or not path:
        raise StateKeyError(
            f"A state path must be a non-empty string of keys separated by dots, like "
            f"'user.name'; got {_short(repr(path))}."
        )
    parts = path.split(".")
    if len(parts) > MAX_PATH_SEGMENTS:
        raise StateKeyError(
            f"State path '{_short(path)}' has {len(parts)} segments; at most "
            f"{MAX_PATH_SEGMENTS} are allowed. Store deeply nested data as one value."
        )
    for n, part in enumerate(parts):
        if not part:
            raise _bad(path, part, f"segment {n + 1} is empty. Separate keys with single dots")
        if part.startswith("_"):
            raise _bad(
                path,
                part,
                "it starts with '_'. A path reaches only state data (dict keys, list indices, "
                "model fields), never private or special attributes; rename the key",
            )
    return parts


def get_path(root: Any, path: object) -> Any:
    """The value at ``path`` inside ``root``, or :data:`MISSING`."""
    node = root
    for part in split_path(path):
        node = _child(node, part)
        if node is MISSING:
            return MISSING
    return node


def set_path(root: Any, path: object, value: Any) -> Any:
    """Set ``value`` at ``path``, creating intermediate dicts; returns ``root``.

    Checks the whole path before changing anything, so a bad path leaves ``root`` as it was.
    """
    parts = split_path(path)
    node, at = _settle(root, parts, str(path))
    for part in reversed(parts[at + 1 :]):
        value = {part: value}
    _assign(node, parts[at], value, str(path))
    return root


def check_set_path(root: Any, path: object) -> None:
    """Raise the StateKeyError that ``set_path(root, path, ...)`` would raise, if any."""
    _settle(root, split_path(path), str(path))


# --- walking -------------------------------------------------------------------------------


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, MISSING)
    if isinstance(node, list | tuple):
        index = _index(part, len(node))
        return MISSING if index is None else node[index]
    if isinstance(node, BaseModel):
        if part in type(node).model_fields:
            return vars(node).get(part, MISSING)
        extra = node.__pydantic_extra__
        return MISSING if extra is None else extra.get(part, MISSING)
    return MISSING  # scalars and any other object: no state data below them


def _index(part: str, length: int) -> int | None:
    if not _INDEX.fullmatch(part):
        return None
    index = int(part)
    return index if -length <= index < length else None


def _settle(root: Any, parts: list[str], path: str) -> tuple[Any, int]:
    """The deepest existing container on the path, and the segment to assign in it."""
    node = root
    for n, part in enumerate(parts):
        _check_assignable(node, part, path, parts[:n])
        if n == len(parts) - 1:
            return node, n
        child = _child(node, part)
        if child is MISSING or child is None:
            return node, n  # the rest of the path is created as dicts
        node = child
    raise AssertionError("unreachable: split_path never returns no segments")


def _check_assignable(node: Any, part: str, path: str, above: list[str]) -> None:
    where = "the state" if not above else f"'{_short('.'.join(above))}'"
    if isinstance(node, dict):
        return
    if isinstance(node, list):
        if _index(part, len(node)) is None:
            raise _bad(
                path,
                part,
                f"the list at {where} has {len(node)} items and this is not one of their "
                "indices. Use an index below its length, or store the whole list",
            )
        return
    if isinstance(node, BaseModel):
        cls = type(node)
        declared = cls.model_fields.get(part)
        if declared is None and cls.model_config.get("extra") != "allow":
            raise _bad(
                path,
                part,
                f"{cls.__qualname__} at {where} has no such field. Declare the field on "
                f"{cls.__qualname__}, or store the value under another key",
            )
        if cls.model_config.get("frozen") or (declared is not None and declared.frozen):
            raise _bad(
                path,
                part,
                f"that field of {cls.__qualname__} at {where} is frozen. Replace the whole "
                "model instead",
            )
        return
    raise _bad(
        path,
        part,
        f"{where} holds a value of type {type(node).__qualname__}, not a dict, a list or a "
        "pydantic model, so a path cannot go into it. Store the value under another key, "
        "or first set that key to a dict",
    )


def _assign(node: Any, part: str, value: Any, path: str) -> None:
    if isinstance(node, dict):
        node[part] = value
    elif isinstance(node, list):
        index = _index(part, len(node))
        assert index is not None  # _check_assignable saw it
        node[index] = value
    elif part in type(node).model_fields:
        try:
            setattr(node, part, value)  # a declared field: pydantic's own assignment
        except Exception as exc:
            raise _bad(
                path, part, f"that field of {type(node).__qualname__} refused the value: {exc}"
            ) from exc
    else:
        extra = node.__pydantic_extra__
        if extra is None:
            extra = {}
            object.__setattr__(node, "__pydantic_extra__", extra)
        extra[part] = value  # an extra field: data only, never an attribute


def _bad(path: str, part: str, why: str) -> StateKeyError:
    return StateKeyError(f"State path '{_short(path)}', segment '{_short(part)}': {why}.")


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["MAX_PATH_SEGMENTS", "MISSING", "check_set_path", "get_path", "set_path", "split_path"]
