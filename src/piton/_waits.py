"""Which event types a workflow's steps wait for, read from their source.

``send_event`` refuses an event type the workflow does not know (``EventNotAccepted``):
one that no step consumes, returns or waits for. Steps declare what they consume and
return in their signatures; what they wait for is an argument of
``ctx.wait_for_event(EventType, ...)`` inside their bodies, so it is read from the
source once per workflow class. When piton cannot be sure it saw every wait (no
source, a type given by a variable, or the step hands its ``ctx`` to other code that
might wait), the workflow is *open*: every event type is accepted, as before.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .events import Event


@dataclass(frozen=True)
class Waits:
    types: frozenset[type[Event]] = frozenset()
    open: bool = False  # some wait could not be read: accept every event type


OPEN = Waits(open=True)

# the Context methods a step may call without handing its ctx to other code
_CTX_METHODS = frozenset(
    {
        "store",
        "send_event",
        "collect_events",
        "wait_for_event",
        "write_event_to_stream",
        "retry_info",
        "checkpoint",
        "sleep",
        "get_state",
        "set_state",
        "to_dict",
        "kept_events",
        "running_steps",
        "is_running",
    }
)


def scan(func: Callable[..., Any], ctx_param: str | None, namespace: Mapping[str, Any]) -> Waits:
    """The event types ``func`` passes to ``<ctx>.wait_for_event``; OPEN when unsure."""
    if ctx_param is None:
        return Waits()
    try:
        source = textwrap.dedent(inspect.getsource(func))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return OPEN
    scope = {**namespace, **getattr(func, "__globals__", {})}
    closure = inspect.getclosurevars(func)
    scope.update(closure.nonlocals)
    found: set[type[Event]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == ctx_param:
            if not _used_as_receiver(node, tree):
                return OPEN  # ctx escapes into other code, which may wait for anything
        if isinstance(node, ast.Call) and _is_wait(node, ctx_param):
            arg = node.args[0] if node.args else _keyword(node, "event_type")
            resolved = _resolve(arg, scope) if arg is not None else None
            if not (isinstance(resolved, type) and issubclass(resolved, Event)):
                return OPEN
            found.add(resolved)
    return Waits(frozenset(found))


def _is_wait(node: ast.Call, ctx_param: str) -> bool:
    f = node.func
    return (
        isinstance(f, ast.Attribute)
        and f.attr == "wait_for_event"
        and isinstance(f.value, ast.Name)
        and f.value.id == ctx_param
    )


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _used_as_receiver(name: ast.Name, tree: ast.AST) -> bool:
    """``ctx.<known method>``, or the parameter itself in the signature."""
    for parent in ast.walk(tree):
        if isinstance(parent, ast.Attribute) and parent.value is name:
            return parent.attr in _CTX_METHODS
    return False


def _resolve(expr: ast.expr, scope: Mapping[str, Any]) -> Any:
    if isinstance(expr, ast.Name):
        return scope.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _resolve(expr.value, scope)
        return getattr(base, expr.attr, None) if base is not None else None
    return None


def merge(waits: list[Waits]) -> Waits:
    if any(w.open for w in waits):
        return OPEN
    return Waits(frozenset(t for w in waits for t in w.types))


__all__ = ["OPEN", "Waits", "merge", "scan"]
