"""Workflow: a class of ``@step`` methods; ``run()`` executes it."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from ._core.graph import Graph, StepNode, build_graph
from ._core.state import RunState
from ._runtime.runner import Runner
from ._waits import OPEN, Waits, merge, scan
from .context import Context
from .decorators import STEP_ATTR, StepOptions, StepSpec, _Unresolved, build_spec
from .errors import (
    RunNotFound,
    WorkflowConfigurationError,
    WorkflowRuntimeError,
    WorkflowValidationError,
)
from .events import StartEvent
from .handler import WorkflowHandler
from .resource import ResourceManager
from .serde import JsonSerializer
from .stores.base import Store, open_store
from .views import RunView, view_of

DURABILITY = ("fast", "strict")


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

    @functools.cached_property
    def fingerprint(self) -> str:
        """What a durable run stores to recognise the code it was written with."""
        from ._runtime.restore import fingerprint

        return fingerprint(self.graph)


class Workflow:
    """Subclass it and decorate methods with ``@step``.

    ``timeout`` is the run's limit in seconds of active time (``None`` for none);
    ``num_concurrent_runs`` caps runs of this instance executing at once.
    """

    _piton_added_steps: ClassVar[dict[str, Callable[..., Any]]] = {}

    # Defaults live on the class, so subclasses whose __init__ skips super() still work.
    _timeout: float | None = 45.0
    _disable_validation: bool = False
    _num_concurrent_runs: int | None = None
    _store_arg: Store | None = None
    _snapshot_every: int = 100
    _durability: str = "fast"
    verbose: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._piton_added_steps = {}

    def __init__(
        self,
        timeout: float | None = 45.0,
        disable_validation: bool = False,
        verbose: bool = False,
        num_concurrent_runs: int | None = None,
        store: Store | str | None = None,
        snapshot_every: int = 100,
        durability: str = "fast",
    ) -> None:
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise WorkflowConfigurationError(
                f"timeout must be a positive number of seconds or None, got {timeout!r}."
            )
        if num_concurrent_runs is not None and (
            isinstance(num_concurrent_runs, bool)
            or not isinstance(num_concurrent_runs, int)
            or num_concurrent_runs < 1
        ):
            raise WorkflowConfigurationError(
                f"num_concurrent_runs must be an integer >= 1 or None, got {num_concurrent_runs!r}."
            )
        self._timeout = timeout
        self._disable_validation = disable_validation
        self.verbose = verbose
        if (
            isinstance(snapshot_every, bool)
            or not isinstance(snapshot_every, int)
            or snapshot_every < 1
        ):
            raise WorkflowConfigurationError(
                f"snapshot_every must be an integer >= 1, got {snapshot_every!r}."
            )
        if durability not in DURABILITY:
            raise WorkflowConfigurationError(
                f"durability must be one of {', '.join(map(repr, DURABILITY))}, got "
                f"{durability!r}. 'fast': a step may start while the commit of its input is "
                "on its way to disk; 'strict': it starts only once that commit is durable."
            )
        self._num_concurrent_runs = num_concurrent_runs
        self._snapshot_every = snapshot_every
        self._durability = durability
        self._store_arg = open_store(store) if store is not None else None
        self._compiled()

    # -- steps ----------------------------------------------------------------------

    @classmethod
    def add_step(cls, func: Callable[..., Any]) -> None:
        """Register a free function as a step of this workflow (``@step(workflow=W)``)."""
        name = func.__name__
        existing = cls._step_functions()
        if name in existing and existing[name] is not func:
            raise WorkflowValidationError(
                f"Workflow '{cls.__name__}' already has a step named '{name}'; rename the function."
            )
        cls._piton_added_steps[name] = func
        cls.__dict__.get("_piton_cache", {}).clear()

    @classmethod
    def _step_functions(cls) -> dict[str, Callable[..., Any]]:
        found: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if callable(value) and hasattr(value, STEP_ATTR):
                    found[name] = value
            found.update(vars(klass).get("_piton_added_steps", {}))
        return found

    @property
    def workflow_name(self) -> str:
        return type(self).__name__

    def _compiled(self) -> Compiled:
        cls = type(self)
        cache: dict[Any, Compiled] = cls.__dict__.get("_piton_cache") or {}
        if "_piton_cache" not in cls.__dict__:
            cls._piton_cache = cache  # type: ignore[attr-defined]
        key = bool(self._disable_validation)
        compiled = cache.get(key)
        if compiled is None:
            compiled = cache[key] = _compile(cls, validate=not self._disable_validation)
        return compiled

    # -- per-instance runtime objects (created lazily) ---------------------------------

    def _resources(self) -> ResourceManager:
        manager = self.__dict__.get("_piton_resources")
        if manager is None:
            manager = self.__dict__["_piton_resources"] = ResourceManager()
        return manager

    def _executor(self) -> ThreadPoolExecutor:
        pool = self.__dict__.get("_piton_executor")
        if pool is None:
            workers = sum(s.num_workers for s in self._compiled().specs.values() if not s.is_async)
            pool = self.__dict__["_piton_executor"] = ThreadPoolExecutor(
                max_workers=max(workers, 4), thread_name_prefix=f"piton-{self.workflow_name}"
            )
        return pool

    def _run_semaphore(self) -> asyncio.Semaphore | None:
        if self._num_concurrent_runs is None:
            return None
        loop = asyncio.get_running_loop()
        held = self.__dict__.get("_piton_semaphore")
        if held is None or held[0] is not loop:  # a semaphore works in one event loop only
            held = self.__dict__["_piton_semaphore"] = (
                loop,
                asyncio.Semaphore(self._num_concurrent_runs),
            )
        sem: asyncio.Semaphore = held[1]
        return sem

    @property
    def store(self) -> Store | None:
        """The store runs are checkpointed to: ``store=``, else ``$PITON_STORE``; None in memory."""
        if isinstance(self._store_arg, Store):
            return self._store_arg
        url = os.environ.get("PITON_STORE")
        if not url:
            return None
        cached: tuple[str, Store] | None = self.__dict__.get("_piton_env_store")
        if cached is None or cached[0] != url:
            cached = self.__dict__["_piton_env_store"] = (url, open_store(url))
        return cached[1]

    async def get_run(self, run_id: str) -> RunView:
        """A durable run as its store holds it, without resuming it.

        The run's journal is replayed in memory (no step and no other user code runs), so
        this is safe on a run another process is driving: it shows the last commit. See
        ``piton.views.RunView`` for the fields and the status values.
        """
        store = self.store
        if store is None:
            raise WorkflowConfigurationError(
                f"get_run({run_id!r}) reads a durable run from the workflow's store, and "
                f"workflow '{self.workflow_name}' has none. Pass store=... or set PITON_STORE."
            )
        await store.open()
        record = await store.get(run_id)
        if record is None:
            raise RunNotFound(f"No run '{run_id}' in {store.url}.")
        from ._runtime.restore import rebuild

        loaded = await store.load(run_id)
        state = rebuild(loaded, self, self._compiled(), JsonSerializer())
        return view_of(
            state,
            status=record.status,
            seq=record.seq,
            owner=record.owner,
            updated_at=record.updated_at,
        )

    def _new_state(self, run_id: str, values: Any = None) -> RunState:
        graph = self._compiled().graph
        if values is None:
            values = graph.state_type() if graph.state_type is not None else {}
        return RunState(run_id=run_id, graph=graph, values=values, timeout=self._timeout)

    # -- running --------------------------------------------------------------------

    def run(
        self,
        ctx: Context[Any] | None = None,
        run_id: str | None = None,
        start_event: StartEvent | None = None,
        **kwargs: Any,
    ) -> WorkflowHandler:
        """Start a run and return its handler at once; ``await`` the handler for the result.

        ``ctx`` continues a restored or earlier context: an unfinished snapshot resumes
        (steps that were running run again), a finished one starts a new run that keeps
        its state.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise WorkflowRuntimeError(
                "Workflow.run() needs a running event loop: use `await w.run(...)` inside "
                "async code, or `w.run_sync(...)` from plain code."
            ) from None
        compiled = self._compiled()
        if ctx is None:
            ctx = Context(self)
        elif ctx._workflow is not self and type(ctx._workflow) is not type(self):
            raise WorkflowRuntimeError(
                f"This context belongs to workflow '{ctx._workflow.workflow_name}', not "
                f"'{self.workflow_name}'."
            )
        if ctx._runner is not None and not ctx._runner.state.finished:
            raise WorkflowRuntimeError("This context is already running a workflow.")
        store = self.store
        if store is not None:
            return self._run_durable(store, ctx, run_id, start_event, kwargs, compiled, loop)
        state, start = self._prepare(ctx, run_id, start_event, kwargs, compiled)
        ctx._workflow = self
        ctx._state = None
        handler = WorkflowHandler(run_id=state.run_id, ctx=ctx, loop=loop)
        runner = Runner(self, compiled, state, ctx, handler)
        handler._runner = runner
        handler._task = loop.create_task(runner.start(start))
        return handler

    def _run_durable(
        self,
        store: Store,
        ctx: Context[Any],
        run_id: str | None,
        start_event: StartEvent | None,
        kwargs: dict[str, Any],
        compiled: Compiled,
        loop: asyncio.AbstractEventLoop,
    ) -> WorkflowHandler:
        if run_id is not None:
            live = store.live.get(run_id)
            if live is not None and not live.handler.done():
                shared: WorkflowHandler = live.handler  # this process runs it already: share
                return shared
        try:
            start: StartEvent | None = self._start_event(compiled, start_event, kwargs)
        except WorkflowRuntimeError:
            if start_event is not None or kwargs or run_id is None:
                raise
            start = None  # attaching to an existing run needs no start event
        return self._attach(run_id or uuid.uuid4().hex, ctx=ctx, start=start, loop=loop)

    def _attach(
        self,
        run_id: str,
        *,
        ctx: Context[Any] | None = None,
        start: StartEvent | None = None,
        stay: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> WorkflowHandler:
        from ._runtime.durable import RunDriver

        store = self.store
        assert store is not None
        loop = loop or asyncio.get_running_loop()
        ctx = ctx or Context(self)
        ctx._workflow = self
        handler = WorkflowHandler(run_id=run_id, ctx=ctx, loop=loop)
        driver = RunDriver(self, self._compiled(), store, run_id, ctx, handler, start, stay=stay)
        handler._runner = driver
        store.live[run_id] = driver
        handler._task = loop.create_task(driver.main())
        return handler

    def _prepare(
        self,
        ctx: Context[Any],
        run_id: str | None,
        start_event: StartEvent | None,
        kwargs: dict[str, Any],
        compiled: Compiled,
    ) -> tuple[RunState, StartEvent | None]:
        previous = ctx._runner.state if ctx._runner is not None else ctx._state
        if previous is not None and not previous.finished and previous.status != "new":
            previous.timeout = self._timeout
            if run_id is not None:
                previous.run_id = run_id
            ctx._runner = None
            return previous, None
        values = previous.values if previous is not None else ctx._detached_values
        state = self._new_state(run_id or uuid.uuid4().hex, values)
        ctx._runner = None
        return state, self._start_event(compiled, start_event, kwargs)

    def _start_event(
        self, compiled: Compiled, start_event: StartEvent | None, kwargs: dict[str, Any]
    ) -> StartEvent:
        cls = compiled.graph.start_event
        if start_event is not None:
            if kwargs:
                raise WorkflowRuntimeError(
                    f"run() got both start_event and keyword arguments ({', '.join(kwargs)}); "
                    "pass one or the other."
                )
            if not isinstance(start_event, StartEvent):
                raise WorkflowRuntimeError(
                    f"start_event must be a StartEvent, got {type(start_event).__qualname__}."
                )
            return start_event
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise WorkflowRuntimeError(
                f"Cannot build the start event {cls.__name__} of workflow '{self.workflow_name}' "
                f"from run({', '.join(f'{k}=...' for k in kwargs)}): {exc}"
            ) from exc

    def run_sync(self, **kwargs: Any) -> Any:
        """Run to completion from plain (non-async) code and return the result."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise WorkflowRuntimeError(
                "run_sync() cannot be called from inside a running event loop; use `await w.run()`."
            )

        async def main() -> Any:
            return await self.run(**kwargs)

        return asyncio.run(main())


def _compile(cls: type[Workflow], *, validate: bool) -> Compiled:
    specs: dict[str, StepSpec] = {}
    module = sys.modules.get(cls.__module__)
    localns = dict(vars(module)) if module is not None else {}
    localns.update(vars(cls))
    localns.setdefault(cls.__name__, cls)
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
    state_types = {s.state_type for s in specs.values() if s.state_type is not None}
    if len(state_types) > 1:
        raise WorkflowValidationError(
            f"Workflow '{cls.__name__}': steps declare different state types "
            f"({', '.join(sorted(t.__name__ for t in state_types))}); use one Context[State] type."
        )
    state_type = next(iter(state_types), None)
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
        )
        for name, spec in specs.items()
    }
    graph = build_graph(cls.__name__, nodes, state_type=state_type, validate=validate)
    waits = merge([scan(spec.func, spec.ctx_param, localns) for spec in specs.values()])
    return Compiled(specs=specs, graph=graph, waits=waits)


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


__all__ = ["Compiled", "Workflow"]
