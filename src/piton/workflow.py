"""Workflow: a class of ``@step`` methods; ``run()`` executes it."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Literal, get_args

from pydantic import ValidationError

from ._compile import Compiled, build_engine, check_annotations, compile_workflow
from ._compile import _check_start_and_stop as check_start_and_stop
from ._compile import _namespace as compile_namespace
from ._core.graph import _unreachable as unreachable_steps
from ._core.state import MAX_PENDING_EVENTS, RunState
from ._runtime.clock import SYSTEM_CLOCK, Clock
from ._runtime.durable import CANCEL_MESSAGE, RunDriver, in_flight
from ._runtime.engine import DURABILITY, Engine, RunConfig, RunLink
from ._runtime.live import live_runs
from ._runtime.restore import rebuild
from ._runtime.runner import Runner
from .context import Context, link_of, prepare_run
from .decorators import LOCALS_ATTR, STEP_ATTR
from .errors import (
    InvalidStartEvent,
    RunNotFound,
    WorkflowConfigurationError,
    WorkflowRuntimeError,
    WorkflowValidationError,
)
from .events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StepFailedEvent,
    StopEvent,
)
from .handler import WorkflowHandler
from .resource import bind_step_types, check_configs, check_factories
from .serde import JsonSerializer
from .stores.base import RunRecord, Store, open_store
from .views import RunView, view_of

GraphCheck = Literal["reachability", "terminal_event", "dead_end"]
GRAPH_CHECKS: frozenset[str] = frozenset(get_args(GraphCheck))


class Workflow:
    """Subclass it and decorate methods with ``@step``.

    ``timeout`` is the run's limit in seconds of active time (``None`` for none);
    ``num_concurrent_runs`` caps runs of this instance executing at once. ``clock`` is
    where runs read time (``piton.testing.FakeClock`` in tests); the real clock by default.
    ``workflow_name`` names the workflow where its durable runs are stored (the class
    name by default). ``skip_graph_checks`` turns off graph checks by name:
    ``"reachability"`` (unreachable steps), ``"terminal_event"`` (events produced but
    never consumed) and ``"dead_end"`` (accepted for llama-index-workflows code: piton
    has no dead-end check).
    """

    _piton_added_steps: ClassVar[dict[str, Callable[..., Any]]] = {}

    # Defaults live on the class, so subclasses whose __init__ skips super() still work.
    _config: RunConfig = RunConfig()
    _disable_validation: bool = False
    _store_arg: Store | None = None
    _workflow_name: str | None = None
    _skip_graph_checks: frozenset[str] = frozenset()
    verbose: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._piton_added_steps = {}
        check_annotations(cls)  # a name no step annotation can ever resolve: report it now

    def __init__(
        self,
        timeout: float | None = 45.0,
        disable_validation: bool = False,
        verbose: bool = False,
        num_concurrent_runs: int | None = None,
        store: Store | str | None = None,
        snapshot_every: int = 100,
        durability: str = "fast",
        clock: Clock | None = None,
        workflow_name: str | None = None,
        skip_graph_checks: set[GraphCheck] | None = None,
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
        self._disable_validation = disable_validation
        self.verbose = verbose
        if workflow_name is not None and (not isinstance(workflow_name, str) or not workflow_name):
            raise WorkflowConfigurationError(
                f"workflow_name must be a non-empty string or None, got {workflow_name!r}."
            )
        self._workflow_name = workflow_name
        skip = frozenset(skip_graph_checks or ())
        if skip - GRAPH_CHECKS:
            raise WorkflowValidationError(
                f"Unknown graph check names: {', '.join(sorted(skip - GRAPH_CHECKS))}. "
                f"Valid names are: {', '.join(sorted(GRAPH_CHECKS))}."
            )
        self._skip_graph_checks = skip
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
        self._config = RunConfig(
            timeout=timeout,
            durability="strict" if durability == "strict" else "fast",
            snapshot_every=snapshot_every,
            num_concurrent_runs=num_concurrent_runs,
            clock=clock if clock is not None else SYSTEM_CLOCK,
        )
        self._store_arg = open_store(store) if store is not None else None
        self._compiled()

    # -- steps ----------------------------------------------------------------------

    @classmethod
    def add_step(cls, func: Callable[..., Any]) -> None:
        """Register a free function as a step of this workflow (``@step(workflow=W)``)."""
        name = getattr(func, "__name__", repr(func))
        if not hasattr(func, STEP_ATTR):
            raise WorkflowValidationError(
                f"Step function {name} is missing the `@step` decorator: add_step() of "
                f"workflow '{cls.__name__}' takes steps. Decorate it with "
                f"`@step(workflow={cls.__name__})`, which also adds it."
            )
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
        """The name durable runs of this workflow are stored, listed and matched under:
        ``workflow_name=`` if given, else the class name (llama-index-workflows defaults
        to ``module.QualName``; piton keeps the class name so stored runs stay found)."""
        return self._workflow_name or type(self).__name__

    @property
    def events(self) -> list[type[Event]]:
        """Every event type the workflow's steps accept or return."""
        specs = self._compiled().specs.values()
        found = {t for s in specs for t in (*s.accepted, *s.returns) if issubclass(t, Event)}
        return sorted(found, key=lambda t: (t.__module__, t.__qualname__))

    def _compiled(self, *, validate: bool | None = None) -> Compiled:
        cls = type(self)
        cache: dict[Any, Compiled] = cls.__dict__.get("_piton_cache") or {}
        if "_piton_cache" not in cls.__dict__:
            cls._piton_cache = cache  # type: ignore[attr-defined]
        check = not self._disable_validation if validate is None else validate
        skip = self._skip_graph_checks if check else frozenset()
        key: Any = check if not skip else (check, skip)
        compiled = cache.get(key)
        if compiled is None:
            if skip:  # the checks not skipped, here: compile_workflow runs them all
                compiled = compile_workflow(cls, validate=False)
                check_graph(cls.__name__, compiled, skip)
            else:
                compiled = compile_workflow(cls, validate=check)
            localns = compile_namespace(cls)
            for spec in compiled.specs.values():  # the models ResourceConfig reads into
                captured = getattr(spec.func, LOCALS_ATTR, {})
                bind_step_types(spec.func, spec.resources, {**localns, **captured})
            cache[key] = compiled
        return compiled

    def validate(
        self, *, validate_resource_configs: bool = True, validate_resources: bool = False
    ) -> bool:
        """Check the workflow now, even with ``disable_validation=True``, and return whether
        it uses human-in-the-loop events (a step returns an ``InputRequiredEvent`` or
        takes a ``HumanResponseEvent``). Raises ``WorkflowValidationError`` naming what
        is wrong.

        ``validate_resource_configs`` (default True) loads every ``ResourceConfig`` file
        (those factories depend on too) into its model; ``validate_resources`` (default
        False: factories may need the network or secrets) also creates every resource,
        which finds dependency cycles. Those are made on an event loop of their own (in a
        thread when called from async code) and not kept for runs.
        """
        compiled = self._compiled(validate=True)
        resources = [
            (name, param, res)
            for name, spec in compiled.specs.items()
            for param, res in spec.resources
        ]
        errors: list[str] = []
        if validate_resource_configs:
            errors += check_configs(resources)
        if validate_resources:
            errors += check_factories(resources)
        if errors:
            raise WorkflowValidationError(
                f"Workflow '{self.workflow_name}': resource validation failed:\n"
                + "\n".join(f"  - {e}" for e in errors)
            )
        specs = compiled.specs.values()
        return any(issubclass(t, InputRequiredEvent) for s in specs for t in s.returns) or any(
            issubclass(t, HumanResponseEvent) for s in specs for t in s.accepted
        )

    def _engine(self) -> Engine:
        """This instance as the runtime sees it (made once, on first use)."""
        engine: Engine | None = self.__dict__.get("_piton_engine")
        if engine is None:
            engine = self.__dict__["_piton_engine"] = build_engine(
                self, self._compiled(), self._config, self._new_link
            )
            engine.name = self.workflow_name  # where durable runs are stored and matched
        return engine

    def _new_link(self) -> RunLink:
        return link_of(Context(self))

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
        loaded = await store.load(run_id)
        state = rebuild(loaded, self._engine(), JsonSerializer())
        return view_of(
            state,
            status=record.status,
            seq=record.seq,
            owner=record.owner,
            updated_at=record.updated_at,
        )

    async def start(
        self, run_id: str | None = None, start_event: StartEvent | None = None, **kwargs: Any
    ) -> str:
        """Queue a run in the store for a worker to execute, and return its id at once.

        The run is written with status ``queued`` and its start event; nothing of it runs
        in this process. Any ``piton.Worker`` (or ``piton worker``) for this store and
        workflow picks it up. Idempotent by ``run_id``: queueing an id that exists
        changes nothing and returns it. ``w.run(run_id=...)`` attaches to the run from
        any process, to await its result, stream its events, send to it or cancel it.
        """
        store = self.store
        if store is None:
            raise WorkflowConfigurationError(
                f"start() queues a run in the workflow's store for a worker, and workflow "
                f"'{self.workflow_name}' has none. Pass store=... or set PITON_STORE, or use "
                "run() to execute the run in this process."
            )
        compiled = self._compiled()
        start = self._start_event(compiled, start_event, kwargs)
        engine = self._engine()
        text = JsonSerializer().dumps(start, f"start event {type(start).__name__}")
        run_id = run_id or uuid.uuid4().hex
        record = RunRecord(
            run_id=run_id,
            workflow=engine.name,
            status="queued",
            fingerprint=engine.fingerprint,
            start=text,
        )
        await store.open()
        if not await store.create(record, [], []):
            existing = await store.get(run_id)
            if existing is not None and existing.workflow != engine.name:
                raise WorkflowRuntimeError(
                    f"Run '{run_id}' exists in {store.url} and belongs to workflow "
                    f"'{existing.workflow}', not '{engine.name}'. Use another run_id."
                )
        return run_id

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the durable run ``run_id`` to finish, wherever it runs, and return its
        result (or raise its error), as ``await handler`` would. Unlike ``run(run_id=)``,
        this never executes the run here: a submitter waits for its workers this way.
        ``timeout`` (seconds) raises ``TimeoutError`` and leaves the run as it is."""
        store = self.store
        if store is None:
            raise WorkflowConfigurationError(
                f"result({run_id!r}) reads a durable run from the workflow's store, and "
                f"workflow '{self.workflow_name}' has none. Pass store=... or set PITON_STORE."
            )
        driver = RunDriver.follow(self._engine(), store, run_id, link_of(Context(self)))
        try:
            return await asyncio.wait_for(asyncio.shield(driver.outcome), timeout)
        finally:
            if driver.task is not None and not driver.task.done():
                driver.task.cancel()

    async def send_event(self, run_id: str, event: Event, step: str | None = None) -> None:
        """Send ``event`` to the durable run ``run_id``, from any process, without attaching
        to the run: the event lands in the run's inbox (durably, when this returns), and
        whoever runs the run takes it: a worker, or the caller awaiting it.
        ``step`` names the one step that may take it."""
        await self._to_inbox(run_id, "send_event", event, step)

    async def cancel_run(self, run_id: str) -> None:
        """Ask the durable run ``run_id`` to stop, from any process; it ends ``cancelled``
        once its owner (or the next worker) takes the request."""
        await self._to_inbox(run_id, "cancel_run", None, None)

    async def _to_inbox(
        self, run_id: str, what: str, event: Event | None, step: str | None
    ) -> None:
        store = self.store
        if store is None:
            raise WorkflowConfigurationError(
                f"{what}({run_id!r}) reaches a durable run through the workflow's store, and "
                f"workflow '{self.workflow_name}' has none. Pass store=... or set PITON_STORE "
                "(a run in memory is reached through its handler)."
            )
        engine = self._engine()
        if event is not None:
            if not isinstance(event, Event):
                raise WorkflowRuntimeError(
                    f"send_event() sends an Event, got {type(event).__qualname__}."
                )
            engine.check_target(event, step)
        live = live_runs(store).get(run_id)
        if live is not None and live.followable():  # this process drives it: tell it there
            await (live.cancel_run() if event is None else live.send_event(event, step))
            return
        await store.open()
        record = await store.get(run_id)
        if record is None:
            raise RunNotFound(f"No run '{run_id}' in {store.url}.")
        if record.workflow != engine.name:
            raise WorkflowRuntimeError(
                f"Run '{run_id}' belongs to workflow '{record.workflow}', not '{engine.name}'."
            )
        if record.finished:
            raise WorkflowRuntimeError(
                f"Run '{run_id}' has finished ({record.status}); it takes no more events."
            )
        if event is None:
            text = CANCEL_MESSAGE
        else:
            text = JsonSerializer().dumps(event, f"event {type(event).__name__}")
        await store.deliver(run_id, text, step, limit=MAX_PENDING_EVENTS)

    def _new_state(self, run_id: str, values: Any = None) -> RunState:
        return self._engine().new_state(run_id, values)

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
            asyncio.get_running_loop()
        except RuntimeError:
            raise WorkflowRuntimeError(
                "Workflow.run() needs a running event loop: use `await w.run(...)` inside "
                "async code, or `w.run_sync(...)` from plain code."
            ) from None
        compiled = self._compiled()
        if ctx is None:
            ctx = Context(self)
        link = prepare_run(ctx, self)
        store = self.store
        if store is not None:
            return self._run_durable(store, ctx, run_id, start_event, kwargs, compiled)
        state, start = self._prepare(link, run_id, start_event, kwargs, compiled)
        runner = Runner(self._engine(), state, link)
        runner.start(start)
        return WorkflowHandler(run_id=state.run_id, ctx=ctx, control=runner)

    def _run_durable(
        self,
        store: Store,
        ctx: Context[Any],
        run_id: str | None,
        start_event: StartEvent | None,
        kwargs: dict[str, Any],
        compiled: Compiled,
    ) -> WorkflowHandler:
        if run_id is not None:
            live = live_runs(store).get(run_id)
            if live is not None and live.followable():
                # this process drives the run already: follow that driver, never a second
                live.listen()
                owner = live.link.owner
                follow = owner if isinstance(owner, Context) else ctx
                return WorkflowHandler(run_id=run_id, ctx=follow, control=live)
        link = link_of(ctx)
        start: StartEvent | None = None
        if start_event is not None or kwargs or in_flight(link) is None:
            try:
                start = self._start_event(compiled, start_event, kwargs)
            except WorkflowRuntimeError:
                if start_event is not None or kwargs or run_id is None:
                    raise
                # attaching to an existing run needs no start event
        # else: a restored context's unfinished run goes on, as a new durable run
        run_id = run_id or uuid.uuid4().hex
        driver = RunDriver.launch(self._engine(), store, run_id, link, start)
        return WorkflowHandler(run_id=run_id, ctx=ctx, control=driver)

    def _prepare(
        self,
        link: RunLink,
        run_id: str | None,
        start_event: StartEvent | None,
        kwargs: dict[str, Any],
        compiled: Compiled,
    ) -> tuple[RunState, StartEvent | None]:
        """The state a memory run starts from: a restored unfinished run goes on; else a
        new run, keeping the state values of an earlier run or set on the context."""
        previous = link.current()
        if previous is not None and not previous.finished and previous.status != "new":
            previous.timeout = self._config.timeout
            if run_id is not None:
                previous.run_id = run_id
            link.run = link.state = None
            return previous, None
        start = self._start_event(compiled, start_event, kwargs)  # bad input: ctx unchanged
        values = previous.values if previous is not None else link.values
        state = self._new_state(run_id or uuid.uuid4().hex, values)
        link.run = link.state = None
        return state, start

    def _start_event(
        self, compiled: Compiled, start_event: StartEvent | None, kwargs: dict[str, Any]
    ) -> StartEvent:
        cls = compiled.graph.start_event
        if start_event is not None:
            if not isinstance(start_event, StartEvent):
                raise InvalidStartEvent(
                    f"The 'start_event' argument must be an instance of 'StartEvent', got "
                    f"{type(start_event).__qualname__}. Pass an instance of {cls.__name__} "
                    f"(workflow '{self.workflow_name}'), or keyword arguments to build one."
                )
            if kwargs:
                raise WorkflowRuntimeError(
                    f"run() got both start_event and keyword arguments ({', '.join(kwargs)}); "
                    "pass one or the other."
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


def check_graph(workflow: str, compiled: Compiled, skip: frozenset[str]) -> None:
    """The graph checks of ``build_graph``, less those in ``skip`` (``skip_graph_checks=``)."""
    check_start_and_stop(workflow, compiled.specs)
    where = f"Workflow '{workflow}'"
    routes = compiled.graph.routes
    produced = {t for s in compiled.specs.values() for t in s.returns}
    stop_takers = sorted(n for t, ns in routes.items() if issubclass(t, StopEvent) for n in ns)
    if stop_takers:
        raise WorkflowValidationError(
            f"{where}: step(s) {', '.join(stop_takers)} accept a StopEvent, but a "
            "StopEvent ends the run. Accept a different event type."
        )
    outside = (StartEvent, HumanResponseEvent, InputRequiredEvent, StepFailedEvent)
    never_produced = {t for t in routes if not issubclass(t, outside) and t not in produced}
    if never_produced:
        raise WorkflowValidationError(
            f"{where}: events consumed but never produced: {_names(never_produced)}. Add them "
            "to the return annotation of the step that returns or sends them."
        )
    if "terminal_event" not in skip:
        ends = (StopEvent, InputRequiredEvent, HumanResponseEvent)
        dangling = {t for t in produced if not issubclass(t, ends) and t not in routes}
        if dangling:
            raise WorkflowValidationError(
                f"{where}: events produced but never consumed: {_names(dangling)}. Add a step "
                "that accepts them, or skip_graph_checks={'terminal_event'}."
            )
    if "reachability" not in skip:
        lost = unreachable_steps(compiled.graph.steps, {t: list(v) for t, v in routes.items()})
        if lost:
            raise WorkflowValidationError(
                f"{where}: unreachable steps: {', '.join(lost)}. No chain of events from the "
                "StartEvent (or a HumanResponseEvent) leads to them; connect them, remove "
                "them, or skip_graph_checks={'reachability'}."
            )


def _names(types: set[type[Any]]) -> str:
    return ", ".join(sorted(t.__name__ for t in types))


__all__ = ["DURABILITY", "GRAPH_CHECKS", "Compiled", "GraphCheck", "Workflow"]
