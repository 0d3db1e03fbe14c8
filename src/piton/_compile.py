"""Compilation: a Workflow class -> its step specs and graph; an instance -> its Engine.

A class compiles once (cached on the class, per validation setting). Each instance gets
one :class:`~piton._runtime.engine.Engine`: the compiled graph, its steps bound to the
instance, the resource cache and a frozen run configuration. The runtime reads only that.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ._core.graph import Graph, StepNode, build_graph
from ._runtime.engine import Engine, RunConfig, RunLink, StepCall
from ._waits import OPEN, Waits, merge, scan
from .decorators import STEP_ATTR, StepOptions, StepSpec, _Unresolved, build_spec
from .errors import StartStopEventError, WorkflowValidationError
from .events import StartEvent, StopEvent
from .resource import ResourceManager

if TYPE_CHECKING:
    from .workflow import Workflow


@dataclass(frozen=True)
class Compiled:
    """A workflow class's steps and graph, built once and cached."""

    specs: dict[str, StepSpec]
    graph: Graph
    waits: Waits = OPEN  # the event types steps wait for (read from their source)

    @functools.cached_property
    def known_events(self) -> frozenset[type[Any]]:
        """Event types a send may carry: consumed, returned or waited for by a step."""
        return frozenset(self.graph.event_types.values()) | self.waits.types


def build_engine(
    workflow: Workflow, compiled: Compiled, config: RunConfig, new_link: Callable[[], RunLink]
) -> Engine:
    """The Engine of one workflow instance: its steps bound to it, its own resources."""
    steps = {
        name: StepCall(
            name=name,
            fn=spec.func.__get__(workflow) if spec.is_method else spec.func,
            is_async=spec.is_async,
            event_param=spec.event_param,
            accepted=spec.accepted,
            ctx_param=spec.ctx_param,
            resources=spec.resources,
            timeout=spec.options.timeout,
            num_workers=spec.num_workers,
        )
        for name, spec in compiled.specs.items()
    }
    return Engine(
        graph=compiled.graph,
        steps=steps,
        config=config,
        resources=ResourceManager(),
        known_events=compiled.known_events,
        new_link=new_link,
        accepts_any_event=compiled.waits.open,
    )


def _namespace(cls: type[Workflow]) -> dict[str, Any]:
    """The names a step annotation of ``cls`` may use: its module's and its own."""
    module = sys.modules.get(cls.__module__)
    localns = dict(vars(module)) if module is not None else {}
    localns.update(vars(cls))
    localns.setdefault(cls.__name__, cls)
    return localns


def check_annotations(cls: type[Workflow]) -> None:
    """At class definition: raise if a step annotation names something that cannot be
    defined later, as llama-index-workflows reports it when the class is defined.

    A name the class's module assigns further down (an event class defined after the
    workflow, while the module is still being imported) is left for the build to
    resolve, as before."""
    localns: dict[str, Any] | None = None
    added = _added(cls)
    _check_wildcards(cls)
    for func in cls._step_functions().values():
        options: StepOptions = getattr(func, STEP_ATTR)
        if localns is None:
            localns = _namespace(cls)
        try:
            build_spec(
                func, options, is_method=func not in added, owner=cls.__name__, localns=localns
            )
        except _Unresolved as exc:
            name = getattr(exc.__cause__, "name", None)
            if name is None or _may_be_defined_later(cls.__module__, name):
                continue
            raise WorkflowValidationError(
                f"{exc}, and nothing defines it. Import or define '{name}' before the "
                "workflow class, or fix the annotation."
            ) from exc
        except WorkflowValidationError:
            continue  # a signature error: @step reports those, and the build again


def _check_wildcards(cls: type[Workflow]) -> None:
    """Two @catch_error handlers without for_steps are refused when the class is defined."""
    wildcards = sorted(
        name
        for name, func in cls._step_functions().items()
        if (catch := getattr(func, STEP_ATTR).catch) is not None and catch.for_steps is None
    )
    if len(wildcards) > 1:
        raise WorkflowValidationError(
            f"Workflow '{cls.__name__}': only one @catch_error handler may leave out "
            f"for_steps (it covers every step no other handler names), found "
            f"{len(wildcards)}: {', '.join(wildcards)}. Give all but one of them for_steps=[...]."
        )


def _may_be_defined_later(module_name: str, name: str) -> bool:
    """Whether the module ``module_name`` is still running its body (it is being imported,
    or it is the script) and that body assigns or imports ``name`` somewhere."""
    frame: FrameType | None = sys._getframe(1)
    try:
        while frame is not None:
            if (
                frame.f_code.co_name == "<module>"
                and frame.f_globals.get("__name__") == module_name
            ):
                return name in frame.f_code.co_names
            frame = frame.f_back
    finally:
        del frame
    return False


def _most_derived_state(workflow: str, specs: dict[str, StepSpec]) -> type[Any] | None:
    """The run's state type: the most derived of the steps' ``Context[T]`` types (as in
    llama-index-workflows); types not in one line of subclasses are an error."""
    declared: dict[type[Any], str] = {}  # type -> the first step declaring it
    for name, spec in specs.items():
        if spec.state_type is not None:
            declared.setdefault(spec.state_type, name)
    if len(declared) <= 1:
        return next(iter(declared), None)
    for candidate in declared:
        if all(isinstance(t, type) and issubclass(candidate, t) for t in declared):
            return candidate
    a, b = next((a, b) for a in declared for b in declared if not _related(a, b))
    raise WorkflowValidationError(
        f"Workflow '{workflow}': steps declare unrelated state types: Context[{a.__name__}] "
        f"in step '{declared[a]}' and Context[{b.__name__}] in step '{declared[b]}'. A run "
        "has one state: use one model, or make one a subclass of the other (the most "
        "derived is the run's state type)."
    )


def _related(a: type[Any], b: type[Any]) -> bool:
    return isinstance(a, type) and isinstance(b, type) and (issubclass(a, b) or issubclass(b, a))


def compile_workflow(cls: type[Workflow], *, validate: bool) -> Compiled:
    """Read the steps of ``cls`` (and steps added to it) into specs, a graph and waits."""
    specs: dict[str, StepSpec] = {}
    localns = _namespace(cls)
    added = _added(cls)
    for name, func in cls._step_functions().items():
        options: StepOptions = getattr(func, STEP_ATTR)
        is_method = func not in added
        try:
            spec = build_spec(
                func, options, is_method=is_method, owner=cls.__name__, localns=localns
            )
        except _Unresolved as exc:
            raise WorkflowValidationError(
                f"{exc}. Define the types a step's annotations name before the workflow runs."
            ) from exc
        specs[name] = spec
    state_type = _most_derived_state(cls.__name__, specs)
    if state_type is not None:
        _check_state_type(cls.__name__, state_type)
    nodes = {
        name: StepNode(
            name=name,
            accepted=spec.accepted,
            returns=spec.returns,
            num_workers=spec.num_workers,
            retry_policy=spec.options.retry_policy,
            timeout=spec.options.timeout,
            catch=spec.options.catch,
        )
        for name, spec in specs.items()
    }
    if validate:
        _check_start_and_stop(cls.__name__, specs)
    graph = build_graph(cls.__name__, nodes, state_type=state_type, validate=validate)
    waits = merge([scan(spec.func, spec.ctx_param, localns) for spec in specs.values()])
    return Compiled(specs=specs, graph=graph, waits=waits)


def _check_start_and_stop(workflow: str, specs: dict[str, StepSpec]) -> None:
    """Exactly one StartEvent type taken and one StopEvent type returned, as
    llama-index-workflows requires (it raises WorkflowConfigurationError for these)."""
    where = f"Workflow '{workflow}'"
    if not specs:
        raise StartStopEventError(
            f"{where} has no steps. Decorate its methods with @step, or register free "
            "functions with @step(workflow=...)."
        )
    starts = {t for s in specs.values() for t in s.accepted if issubclass(t, StartEvent)}
    stops = {t for s in specs.values() for t in s.returns if issubclass(t, StopEvent)}
    if not starts:
        raise StartStopEventError(
            f"{where}: no step accepts a StartEvent, so a run could never begin. Give one "
            "step an event parameter annotated `ev: StartEvent` (or a StartEvent subclass)."
        )
    if len(starts) > 1:
        raise StartStopEventError(
            f"{where}: steps accept different StartEvent types ({_names(starts)}); a "
            "workflow has exactly one start event type."
        )
    if not stops:
        raise StartStopEventError(
            f"{where}: no step returns a StopEvent, so a run could never finish. Annotate "
            "the last step `-> StopEvent` and return `StopEvent(result=...)`."
        )
    if len(stops) > 1:
        raise StartStopEventError(
            f"{where}: steps return different StopEvent types ({_names(stops)}); a workflow "
            "has exactly one stop event type. Return the same one from every step that ends "
            "the run (a StopEvent subclass with fields for a typed result)."
        )


def _names(types: set[type[Any]]) -> str:
    return ", ".join(sorted(t.__name__ for t in types))


def _check_state_type(workflow: str, state_type: type[Any]) -> None:
    if not (isinstance(state_type, type) and issubclass(state_type, BaseModel)):
        raise WorkflowValidationError(
            f"Workflow '{workflow}': Context[{getattr(state_type, '__name__', state_type)}] needs "
            "a pydantic BaseModel subclass as its state type."
        )
    try:
        state_type()
    except ValidationError as exc:
        raise WorkflowValidationError(
            f"Workflow '{workflow}': the state model {state_type.__name__} must be constructible "
            f"without arguments (give every field a default): {exc}"
        ) from exc


def _added(cls: type[Workflow]) -> set[Callable[..., Any]]:
    return {f for klass in cls.__mro__ for f in vars(klass).get("_piton_added_steps", {}).values()}


__all__ = ["Compiled", "build_engine", "check_annotations", "compile_workflow"]
