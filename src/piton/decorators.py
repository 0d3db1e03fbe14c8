"""``@step``: turns a method (or a free function) into a workflow step.

The decorator reads the signature once and records a frozen :class:`StepSpec`:
which events the step accepts (the annotated event parameter; a union means any of
them), which it may emit (the return annotation), where the ``Context`` goes, and
which parameters are injected resources.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, Union, get_args, get_origin, overload

from ._core.graph import Catch
from .context import Context
from .errors import WorkflowValidationError
from .events import Event, StepFailedEvent
from .resource import Resource
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .workflow import Workflow

F = TypeVar("F", bound=Callable[..., Any])

STEP_ATTR = "__piton_step__"
LOCALS_ATTR = "__piton_locals__"


@dataclass(frozen=True)
class StepOptions:
    num_workers: int = 4
    retry_policy: RetryPolicy | None = None
    timeout: float | None = None
    catch: Catch | None = None  # a @catch_error handler's declaration


@dataclass(frozen=True)
class StepSpec:
    """Everything piton knows about one step, read from its signature."""

    name: str
    func: Callable[..., Any]
    is_method: bool
    is_async: bool
    event_param: str
    accepted: tuple[type[Event], ...]
    returns: tuple[type[Event], ...]
    ctx_param: str | None = None
    state_type: type[Any] | None = None
    resources: tuple[tuple[str, Resource], ...] = ()
    options: StepOptions = field(default_factory=StepOptions)

    @property
    def num_workers(self) -> int:
        return self.options.num_workers


class _Unresolved(Exception):
    """A type hint names something not defined yet; resolved again at workflow build."""


def _is_context(hint: Any) -> tuple[bool, type[Any] | None]:
    if hint is Context:
        return True, None
    if get_origin(hint) is Context:
        args = get_args(hint)
        return True, (args[0] if args else None)
    return False, None


def _event_types(hint: Any) -> tuple[type[Event], ...] | None:
    """The event classes ``hint`` names (a class or a union of them), else None."""
    if isinstance(hint, type) and issubclass(hint, Event):
        return (hint,)
    if get_origin(hint) in (Union, types.UnionType):
        members = [a for a in get_args(hint) if a is not type(None)]
        if members and all(isinstance(a, type) and issubclass(a, Event) for a in members):
            return tuple(members)
    return None


def _returns(hint: Any, where: str) -> tuple[type[Event], ...]:
    if hint is None or hint is type(None):
        return ()
    found = _event_types(hint)
    if found is not None:
        return found
    raise WorkflowValidationError(
        f"{where}: the return annotation {hint!r} is not an Event type. Annotate the "
        "events the step can return, e.g. `-> MyEvent | StopEvent`, or `-> None`."
    )


def build_spec(
    func: Callable[..., Any],
    options: StepOptions,
    *,
    is_method: bool,
    owner: str | None = None,
    localns: dict[str, Any] | None = None,
) -> StepSpec:
    """Read ``func``'s signature into a StepSpec; raise a clear error if it is not a step."""
    name = func.__name__
    where = f"step '{name}'" + (f" of workflow '{owner}'" if owner else "")
    captured: dict[str, Any] = getattr(func, LOCALS_ATTR, {})
    if captured:
        localns = {**(localns or {}), **captured}
    try:
        hints = typing.get_type_hints(func, include_extras=True, localns=localns)
    except NameError as exc:
        raise _Unresolved(f"{where}: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())
    if is_method:
        params = params[1:]
    event_param: str | None = None
    accepted: tuple[type[Event], ...] = ()
    ctx_param: str | None = None
    state_type: type[Any] | None = None
    resources: list[tuple[str, Resource]] = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in hints:
            raise WorkflowValidationError(
                f"{where}: parameter '{p.name}' has no type annotation. Annotate it with an "
                "Event type, `Context`, or `Annotated[T, Resource(factory)]`."
            )
        hint = hints[p.name]
        if get_origin(hint) is Annotated:
            res = [m for m in hint.__metadata__ if isinstance(m, Resource)]
            if res:
                resources.append((p.name, res[0]))
                continue
            hint = get_args(hint)[0]
        is_ctx, st = _is_context(hint)
        if is_ctx:
            ctx_param, state_type = p.name, st
            continue
        found = _event_types(hint)
        if found is not None:
            if event_param is not None:
                raise WorkflowValidationError(
                    f"{where}: takes two event parameters ('{event_param}' and '{p.name}'). "
                    "A step consumes one event; accept a union (`ev: A | B`) instead."
                )
            event_param, accepted = p.name, found
            continue
        if p.default is not inspect.Parameter.empty:
            continue
        raise WorkflowValidationError(
            f"{where}: parameter '{p.name}: {hint!r}' is not an Event, a Context or a "
            "Resource. Steps take one event parameter, optionally `ctx: Context` and "
            "`Annotated[T, Resource(factory)]` parameters."
        )
    if event_param is None:
        raise WorkflowValidationError(
            f"{where}: has no event parameter. Add one annotated with the Event type it "
            "consumes, e.g. `ev: StartEvent`."
        )
    if options.catch is not None and accepted != (StepFailedEvent,):
        raise WorkflowValidationError(
            f"@catch_error handler '{name}' must take the failure as its event parameter: "
            f"annotate it `ev: StepFailedEvent` (it takes {_names(accepted)})."
        )
    if "return" not in hints:
        raise WorkflowValidationError(
            f"{where}: has no return annotation. Annotate the events it can return, "
            "e.g. `-> StopEvent`, or `-> None` if it only sends events."
        )
    return StepSpec(
        name=name,
        func=func,
        is_method=is_method,
        is_async=inspect.iscoroutinefunction(func),
        event_param=event_param,
        accepted=accepted,
        returns=_returns(hints["return"], where),
        ctx_param=ctx_param,
        state_type=state_type,
        resources=tuple(resources),
        options=options,
    )


def _names(types: tuple[type[Any], ...]) -> str:
    return " | ".join(t.__name__ for t in types)


def _check_options(name: str, num_workers: Any, timeout: Any) -> None:
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise WorkflowValidationError(
            f"step '{name}': num_workers must be an integer >= 1, got {num_workers!r}."
        )
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise WorkflowValidationError(
            f"step '{name}': timeout must be a positive number of seconds or None, got {timeout!r}."
        )


def _caller_locals(depth: int = 3) -> dict[str, Any]:
    """Local names around the ``@step`` line: the class body and the functions enclosing it.

    With ``from __future__ import annotations`` an annotation naming a class defined
    inside a function cannot be resolved later from the function's globals alone.
    """
    frame = inspect.currentframe()
    frames: list[types.FrameType] = []
    here = frame.f_code.co_filename if frame is not None else None
    f = frame.f_back if frame is not None else None
    while f is not None and f.f_code.co_filename == here:
        f = f.f_back
    while f is not None and len(frames) < depth and f.f_locals is not f.f_globals:
        frames.append(f)
        f = f.f_back
    del frame, f
    found: dict[str, Any] = {}
    for fr in reversed(frames):
        found.update(fr.f_locals)
    return found


@overload
def step(func: F, /) -> F: ...
@overload
def step(
    *,
    workflow: type[Workflow] | None = None,
    num_workers: int = 4,
    retry_policy: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Callable[[F], F]: ...
def step(
    func: Any = None,
    /,
    *,
    workflow: type[Workflow] | None = None,
    num_workers: int = 4,
    retry_policy: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Any:
    """Declare a workflow step: ``@step`` or ``@step(num_workers=8, retry_policy=...)``.

    On a free function, name its workflow: ``@step(workflow=MyWorkflow)``.
    """

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise WorkflowValidationError(f"@step decorates functions, not {fn!r}")
        _check_options(fn.__name__, num_workers, timeout)
        if retry_policy is not None and not callable(getattr(retry_policy, "next", None)):
            raise WorkflowValidationError(
                f"step '{fn.__name__}': retry_policy must have a next(elapsed, attempts, "
                f"error) method, got {retry_policy!r}."
            )
        options = StepOptions(num_workers, retry_policy, timeout)
        is_method = workflow is None
        captured = _caller_locals()
        if captured:
            setattr(fn, LOCALS_ATTR, captured)
        try:  # check the signature now when its names resolve; else at workflow build
            build_spec(fn, options, is_method=is_method)
        except _Unresolved:
            pass
        setattr(fn, STEP_ATTR, options)
        if workflow is not None:
            workflow.add_step(fn)
        return fn

    if func is not None:
        return decorate(func)
    return decorate


@overload
def catch_error(func: F, /) -> F: ...
@overload
def catch_error(
    *, for_steps: list[str] | None = None, max_recoveries: int = 1
) -> Callable[[F], F]: ...
def catch_error(
    func: Any = None, /, *, for_steps: list[str] | None = None, max_recoveries: int = 1
) -> Any:
    """Declare a handler for steps that fail for good (after their retries).

    ``@catch_error`` covers every step no other handler names; ``@catch_error(for_steps=
    ["fetch"], max_recoveries=2)`` covers the steps named. The handler takes
    ``ev: StepFailedEvent`` and returns events like a step (a StopEvent ends the run); it
    runs with one worker and no retry, and if it raises, the run fails with its error.
    ``max_recoveries`` bounds how often it recovers one lineage: the events descending
    from one recovery carry its count, and a failure past the budget fails the run.
    """
    if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, int) or (
        max_recoveries < 1
    ):
        raise WorkflowValidationError(
            f"@catch_error: max_recoveries must be an integer >= 1, got {max_recoveries!r}."
        )
    if for_steps is not None and (
        not isinstance(for_steps, list | tuple) or not all(isinstance(n, str) for n in for_steps)
    ):
        raise WorkflowValidationError(
            f"@catch_error: for_steps must be None or a list of step names, got {for_steps!r}."
        )
    catch = Catch(None if for_steps is None else tuple(for_steps), max_recoveries)

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise WorkflowValidationError(f"@catch_error decorates functions, not {fn!r}")
        options = StepOptions(num_workers=1, retry_policy=None, catch=catch)
        captured = _caller_locals()
        if captured:
            setattr(fn, LOCALS_ATTR, captured)
        try:
            build_spec(fn, options, is_method=True)
        except _Unresolved:
            pass
        setattr(fn, STEP_ATTR, options)
        return fn

    if func is not None:
        return decorate(func)
    return decorate


__all__ = ["StepOptions", "StepSpec", "build_spec", "catch_error", "step"]
