"""The static step graph of a workflow, and its validation.

Built once per workflow class from the step specs. The reducer reads routing
tables from it; validation reports every structural mistake with its fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from piton.errors import WorkflowValidationError
from piton.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StepFailedEvent,
    StopEvent,
)


@dataclass(frozen=True)
class Catch:
    """A ``@catch_error`` handler's declaration: the steps it covers (None: every step
    no other handler covers) and how many recoveries one lineage of events may use."""

    for_steps: tuple[str, ...] | None = None
    max_recoveries: int = 1


@dataclass(frozen=True)
class StepNode:
    """What the reducer needs to know of a step."""

    name: str
    accepted: tuple[type[Event], ...]
    returns: tuple[type[Event], ...]
    num_workers: int = 4
    retry_policy: Any = None
    timeout: float | None = None
    catch: Catch | None = None  # set on a @catch_error handler


@dataclass(frozen=True)
class Graph:
    workflow: str
    steps: Mapping[str, StepNode]
    start_event: type[StartEvent] = StartEvent
    state_type: type[Any] | None = None
    routes: Mapping[type[Event], tuple[str, ...]] = field(default_factory=dict)
    event_types: Mapping[str, type[Event]] = field(default_factory=dict)
    # event types a step consumes that no step returns: only a send can bring them, so an
    # idle run of this workflow may be waiting for one (a HumanResponseEvent, say)
    outside: frozenset[type[Event]] = frozenset()
    # step -> (its @catch_error handler, the handler's recovery budget); empty without one
    catchers: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def consumers(self, event_type: type[Event]) -> tuple[str, ...]:
        return self.routes.get(event_type, ())



def fingerprint(graph: Graph) -> str:
    """What a durable run stores to recognise the code it was written with: its steps and
    the event types each consumes (a resume under changed code replays under this graph)."""
    return json.dumps(
        {
            "workflow": graph.workflow,
            "steps": {
                name: {
                    "accepts": sorted(type_key(t) for t in node.accepted),
                    "workers": node.num_workers,
                }
                for name, node in sorted(graph.steps.items())
            },
        },
        sort_keys=True,
    )


def type_key(cls: type[Any]) -> str:
    """The stable name a type is stored under: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def build_graph(
    workflow: str,
    steps: Mapping[str, StepNode],
    *,
    state_type: type[Any] | None = None,
    validate: bool = True,
) -> Graph:
    routes: dict[type[Event], list[str]] = {}
    types: dict[str, type[Event]] = {}
    for base in (StartEvent, StopEvent, InputRequiredEvent, HumanResponseEvent, Event):
        types[type_key(base)] = base
    catchers = _catchers(workflow, steps)
    for node in steps.values():
        for t in node.accepted:
            types[type_key(t)] = t
            if node.catch is None:  # a handler gets its StepFailedEvents by name only
                routes.setdefault(t, []).append(node.name)
        for t in node.returns:
            types[type_key(t)] = t
    starts = sorted({t for t in routes if issubclass(t, StartEvent)}, key=type_key)
    start_event = starts[0] if len(starts) == 1 else StartEvent
    if validate:
        _validate(workflow, steps, routes, starts)
    return Graph(
        workflow=workflow,
        steps=dict(steps),
        start_event=start_event,
        state_type=state_type,
        routes={t: tuple(v) for t, v in routes.items()},
        event_types=types,
        outside=frozenset(
            t
            for t in routes
            if not issubclass(t, StartEvent) and not any(t in s.returns for s in steps.values())
        ),
        catchers=catchers,
    )


def _catchers(workflow: str, steps: Mapping[str, StepNode]) -> dict[str, tuple[str, int]]:
    """Which handler recovers each step: the one naming it, else the wildcard handler.

    Refuses what llama-index-workflows refuses: two wildcard handlers, a name that is no
    step, a handler covering a handler, a step claimed by two handlers.
    """
    handlers = {name: node.catch for name, node in steps.items() if node.catch is not None}
    if not handlers:
        return {}
    where = f"Workflow '{workflow}'"
    wildcards = sorted(name for name, c in handlers.items() if c.for_steps is None)
    if len(wildcards) > 1:
        raise WorkflowValidationError(
            f"{where}: only one @catch_error handler may leave out for_steps (it covers "
            f"every step no other handler names), found {len(wildcards)}: "
            f"{', '.join(wildcards)}. Give all but one of them for_steps=[...]."
        )
    covered: dict[str, tuple[str, int]] = {}
    for name, c in handlers.items():
        if c.max_recoveries < 1:
            raise WorkflowValidationError(
                f"{where}: @catch_error handler '{name}' has max_recoveries="
                f"{c.max_recoveries!r}; it must be an integer >= 1."
            )
        for target in c.for_steps or ():
            if target not in steps:
                raise WorkflowValidationError(
                    f"{where}: @catch_error handler '{name}' names '{target}' in for_steps, "
                    f"but the workflow has no such step (its steps: {', '.join(sorted(steps))})."
                )
            if target in handlers:
                raise WorkflowValidationError(
                    f"{where}: @catch_error handler '{name}' names the handler '{target}' in "
                    "for_steps; a handler that fails fails the run. Name ordinary steps."
                )
            if target in covered:
                raise WorkflowValidationError(
                    f"{where}: step '{target}' is named by two @catch_error handlers, "
                    f"'{covered[target][0]}' and '{name}'. Name it in one of them."
                )
            covered[target] = (name, c.max_recoveries)
    if wildcards:
        budget = handlers[wildcards[0]].max_recoveries
        for name in steps:
            if name not in handlers and name not in covered:
                covered[name] = (wildcards[0], budget)
    return covered


def _names(types: Any) -> str:
    return ", ".join(sorted(t.__name__ for t in types))


def _validate(
    workflow: str,
    steps: Mapping[str, StepNode],
    routes: Mapping[type[Event], list[str]],
    starts: list[type[StartEvent]],
) -> None:
    where = f"Workflow '{workflow}'"
    if not steps:
        raise WorkflowValidationError(f"{where} has no steps. Decorate its methods with @step.")
    if not starts:
        raise WorkflowValidationError(
            f"{where}: no step accepts a StartEvent, so a run could never begin. Give one "
            "step an event parameter annotated `ev: StartEvent` (or a StartEvent subclass)."
        )
    if len(starts) > 1:
        raise WorkflowValidationError(
            f"{where}: steps accept different StartEvent types ({_names(starts)}); a "
            "workflow has exactly one start event type."
        )
    produced = {t for s in steps.values() for t in s.returns}
    if not any(issubclass(t, StopEvent) for t in produced):
        raise WorkflowValidationError(
            f"{where}: no step returns a StopEvent, so a run could never finish. Annotate "
            "the last step `-> StopEvent` and return `StopEvent(result=...)`."
        )
    stop_consumers = sorted(n for t, ns in routes.items() if issubclass(t, StopEvent) for n in ns)
    if stop_consumers:
        raise WorkflowValidationError(
            f"{where}: step(s) {', '.join(stop_consumers)} accept a StopEvent, but a "
            "StopEvent ends the run. Accept a different event type."
        )
    boundary_in = (StartEvent, HumanResponseEvent, InputRequiredEvent, StepFailedEvent)
    never_produced = {t for t in routes if not issubclass(t, boundary_in) and t not in produced}
    if never_produced:
        raise WorkflowValidationError(
            f"{where}: events consumed but never produced: {_names(never_produced)}. Add them "
            "to the return annotation of the step that returns or sends them "
            "(e.g. `-> MyEvent | None`), or remove the step that waits for them."
        )
    boundary_out = (StopEvent, InputRequiredEvent, HumanResponseEvent)
    never_consumed = {t for t in produced if not issubclass(t, boundary_out) and t not in routes}
    if never_consumed:
        raise WorkflowValidationError(
            f"{where}: events produced but never consumed: {_names(never_consumed)}. Add a "
            "step that accepts them, or remove them from the return annotations."
        )
    unreachable = _unreachable(steps, routes)
    if unreachable:
        raise WorkflowValidationError(
            f"{where}: unreachable steps: {', '.join(unreachable)}. No chain of events from "
            "the StartEvent (or a HumanResponseEvent) leads to them; connect them or remove them."
        )


def _unreachable(
    steps: Mapping[str, StepNode], routes: Mapping[type[Event], list[str]]
) -> list[str]:
    roots: set[type[Event]] = {
        t for t in routes if issubclass(t, StartEvent | HumanResponseEvent | InputRequiredEvent)
    }
    # a @catch_error handler is reached by a failure, not by an event of the graph
    seen_steps: set[str] = {name for name, node in steps.items() if node.catch is not None}
    roots |= {t for name in seen_steps for t in steps[name].returns}
    frontier: list[type[Event]] = list(roots)
    seen_types: set[type[Event]] = set(roots)
    while frontier:
        t = frontier.pop()
        for name in routes.get(t, ()):
            if name in seen_steps:
                continue
            seen_steps.add(name)
            for out in steps[name].returns:
                if out not in seen_types:
                    seen_types.add(out)
                    frontier.append(out)
    return sorted(set(steps) - seen_steps)


__all__ = ["Catch", "Graph", "StepNode", "build_graph", "type_key"]
