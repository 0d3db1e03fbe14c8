"""Engine: what the runtime needs of one workflow instance, handed over as plain data.

The public ``Workflow`` compiles its class once and builds one ``Engine`` per instance:
the step graph, one :class:`StepCall` per step (the bound function and how to call it),
the thread pool for sync steps, the resource cache, the run semaphore and a frozen
:class:`RunConfig`. The runtime reads nothing else of the workflow, so it imports no
public module; the public modules talk to runs through the small types below:

- :class:`RunLink` is the runtime's side of a user's ``Context``: which run it shows now
  and how to make a step's view of it;
- :class:`RunControl` is what a ``WorkflowHandler`` asks of a run, in memory or durable.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from piton._core.graph import Graph, fingerprint
from piton._core.state import RunState
from piton._core.status import RunStatus
from piton._runtime.clock import SYSTEM_CLOCK, Clock
from piton.errors import EventNotAccepted, WorkflowRuntimeError
from piton.events import Event
from piton.retry import RetryInfo
from piton.serde import JsonSerializer

Durability = Literal["fast", "strict"]
DURABILITY: tuple[Durability, ...] = ("fast", "strict")


@dataclass(frozen=True)
class RunConfig:
    """How the runs of one workflow instance behave; fixed when the instance is made."""

    timeout: float | None = 45.0  # seconds of active time a run may take; None: no limit
    durability: Durability = "fast"
    snapshot_every: int = 100  # a durable run writes a snapshot every this many commits
    num_concurrent_runs: int | None = None  # runs of this instance executing at once
    clock: Clock = SYSTEM_CLOCK


@dataclass(frozen=True)
class StepCall:
    """How to call one step: read from its signature when the workflow class compiles."""

    name: str
    fn: Callable[..., Any]  # bound to the workflow instance when it is a method
    is_async: bool
    event_param: str
    accepted: tuple[type[Event], ...]
    ctx_param: str | None = None
    resources: tuple[tuple[str, Any], ...] = ()  # (parameter, Resource) pairs
    timeout: float | None = None
    num_workers: int = 4


class Resources(Protocol):
    async def get(self, resource: Any) -> Any: ...


@dataclass(eq=False)
class RunLink:
    """The runtime's side of a user's ``Context``.

    A Context shows one run at a time: the Runner driving it (``run``), else the state it
    was left with (``state``: restored, parked, ended), else the state values set on a
    context that never ran (``values``). Step contexts share their run's link.
    """

    serializer: JsonSerializer
    for_step: Callable[[StepControl], Any]  # the ``ctx`` a step receives
    run: LiveRun | None = None
    state: RunState | None = None
    values: Any = None
    lock: asyncio.Lock | None = None  # edit_state(): one editor at a time, across steps
    owner: Any = None  # the public object this link belongs to (a Context): opaque here

    def current(self) -> RunState | None:
        return self.run.state if self.run is not None else self.state

    def let_go(self, state: RunState) -> None:
        """The run stops being driven here; the context keeps showing its last state."""
        self.state, self.run = state, None


class LiveRun(Protocol):
    """What a ``Context`` asks of the run it shows (a ``Runner``); callable from any
    thread (sync steps run in worker threads)."""

    state: RunState
    done: bool

    def send(self, event: Event, step: str | None) -> None: ...

    def stream_write(self, event: Event) -> None: ...

    def set_state(self, path: str, value: Any) -> None: ...

    def replace_state(self, value: Any) -> None: ...

    def call(self, fn: Callable[[], Any]) -> Any: ...


class StepControl(Protocol):
    """What a step's ``ctx`` forwards to (its execution's ``StepRun``)."""

    def send(self, event: Event, step: str | None) -> None: ...

    def stream_write(self, event: Event) -> None: ...

    def collect(
        self, ev: Event, expected: list[type[Event]], buffer_id: str | None
    ) -> list[Event] | None: ...

    async def wait_for_event(
        self,
        event_type: type[Any],
        waiter_event: Event | None,
        waiter_id: str | None,
        requirements: dict[str, Any] | None,
        timeout: float | None,
    ) -> Any: ...

    async def sleep(self, seconds: float, sleep_id: str | None) -> None: ...

    def retry_info(self) -> RetryInfo: ...

    async def checkpoint(self) -> None: ...


class RunControl(Protocol):
    """What a handler asks of a run, whatever drives it (a memory Runner, a RunDriver)."""

    stream: list[Event]
    outcome: asyncio.Future[Any]  # the run's result, or its error

    @property
    def status(self) -> RunStatus: ...

    @property
    def latest(self) -> RunState | None: ...

    def events(self, cursor: int = 0) -> AsyncIterator[Event]: ...

    def send_event(self, event: Event, step: str | None) -> Awaitable[None]: ...

    def cancel_run(self) -> Awaitable[None]: ...

    def listener_gone(self) -> None: ...

    def handler_added(self) -> None:
        """A handler follows the run."""

    def handler_dropped(self) -> None:
        """A handler that followed the run was garbage-collected (nobody can await it)."""


class Done:
    """An awaitable for an operation that already happened (forgetting ``await`` is harmless)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


DONE = Done()


class Engine:
    """One workflow instance as the runtime sees it."""

    def __init__(
        self,
        *,
        graph: Graph,
        steps: Mapping[str, StepCall],
        config: RunConfig,
        resources: Resources,
        known_events: frozenset[type[Any]],
        new_link: Callable[[], RunLink],
        accepts_any_event: bool = False,
    ) -> None:
        self.graph = graph
        self.name = graph.workflow
        self.steps = dict(steps)
        self.config = config
        self.clock = config.clock
        self.resources = resources
        self.known_events = known_events  # event types a send may carry
        self.accepts_any_event = accepts_any_event  # a waited-for type could not be read
        self.new_link = new_link  # a fresh context, for a run a worker takes up
        self._executor: ThreadPoolExecutor | None = None
        self._semaphore: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.graph)

    # -- per-instance runtime objects, made when first needed ---------------------------------

    def executor(self) -> ThreadPoolExecutor:
        """The thread pool sync steps run in."""
        if self._executor is None:
            workers = sum(s.num_workers for s in self.steps.values() if not s.is_async)
            self._executor = ThreadPoolExecutor(
                max_workers=max(workers, 4), thread_name_prefix=f"piton-{self.name}"
            )
        return self._executor

    def run_semaphore(self) -> asyncio.Semaphore | None:
        limit = self.config.num_concurrent_runs
        if limit is None:
            return None
        loop = asyncio.get_running_loop()
        held = self._semaphore
        if held is None or held[0] is not loop:  # a semaphore works in one event loop only
            held = self._semaphore = (loop, asyncio.Semaphore(limit))
        return held[1]

    def initial_values(self) -> Any:
        state_type = self.graph.state_type
        return state_type() if state_type is not None else {}

    def new_state(self, run_id: str, values: Any = None) -> RunState:
        if values is None:
            values = self.initial_values()
        return RunState(
            run_id=run_id, graph=self.graph, values=values, timeout=self.config.timeout
        )

    def check_target(self, event: Event, step: str | None) -> None:
        """Refuse a send that no run of this workflow could take, naming what is wrong."""
        if not isinstance(event, Event):
            raise WorkflowRuntimeError(
                f"send_event() takes an Event, got {type(event).__qualname__}."
            )
        if step is None:
            if not self.accepts_any_event and type(event) not in self.known_events:
                raise EventNotAccepted(
                    f"send_event({type(event).__name__}(...)): workflow '{self.name}' does "
                    "not know this event type: no step consumes it, returns it or waits for "
                    "it with ctx.wait_for_event(). Send an event a step accepts, add a step "
                    "that accepts it, or name the type in a wait_for_event() call."
                )
            return
        call = self.steps.get(step)
        if call is None:
            raise WorkflowRuntimeError(
                f"send_event(step={step!r}): workflow '{self.name}' has no such step. "
                f"Steps: {', '.join(sorted(self.steps))}."
            )
        if type(event) not in call.accepted:
            raise WorkflowRuntimeError(
                f"send_event(step={step!r}): the step does not accept {type(event).__name__} "
                f"(it accepts {', '.join(t.__name__ for t in call.accepted)})."
            )


__all__ = [
    "DONE",
    "DURABILITY",
    "Durability",
    "Engine",
    "RunConfig",
    "RunControl",
    "LiveRun",
    "RunLink",
    "StepCall",
    "StepControl",
]
