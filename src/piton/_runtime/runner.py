"""Runner: executes the reducer's commands for one run and feeds back what happens."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from piton._core import inputs as i
from piton._core.graph import type_key
from piton._core.reducer import reduce, retry_decision, send_refusal
from piton._core.state import COMPLETED, FINAL, Execution, RunState
from piton.context import (
    Context,
    StepContext,
    WaitingForEvent,
    raise_if_timed_out,
    retry_info_of,
)
from piton.errors import (
    ContextSerdeError,
    EventNotAccepted,
    TooManyPendingEvents,
    WorkflowRuntimeError,
    WorkflowTimeoutError,
)
from piton.events import Event, StopEvent
from piton.retry import RetryInfo

if TYPE_CHECKING:
    from piton.decorators import StepSpec
    from piton.handler import WorkflowHandler
    from piton.workflow import Compiled, Workflow

R = TypeVar("R")


class Committer(Protocol):
    """How a Runner makes its commit points durable: the one place durability plugs in.

    Commits are numbered (tickets) in the order the reducer asks for them. The Runner
    shows a fact (a non-live publish, the run's end) and, when ``holds_steps``, starts a
    step only once ``durable`` has reached the ticket of the commit that holds it; the
    committer calls ``runner.advance()`` whenever ``durable`` moves on.
    """

    ticket: int  # the last commit asked for
    durable: int  # the last commit that is durable
    holds_steps: bool  # a step waits for the commit that made it runnable
    closed: bool  # the run was let go in this process (parked, lost): inputs are ignored

    def record(self, inp: i.Input) -> None:
        """Before the reducer sees ``inp``: a durable run encodes it (and may refuse it)."""

    def commit(self, entries: tuple[Any, ...]) -> None: ...

    def stream(self, event: Event) -> None:
        """``event`` joins the run's stored stream with the next commit."""

    def after_feed(self) -> None: ...


class InMemory:
    """The committer of an in-memory run: every commit point counts at once."""

    ticket = 0
    durable = 0
    holds_steps = False
    closed = False

    def record(self, inp: i.Input) -> None:
        return None

    def commit(self, entries: tuple[Any, ...]) -> None:
        return None

    def stream(self, event: Event) -> None:
        return None

    def after_feed(self) -> None:
        return None


class Runner:
    """Owns a live run: its RunState, step tasks, timers and event stream."""

    def __init__(
        self,
        workflow: Workflow,
        compiled: Compiled,
        state: RunState,
        ctx: Context[Any],
        handler: WorkflowHandler,
        committer: Committer | None = None,
        stream: list[Event] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.workflow = workflow
        self.compiled = compiled
        self.state = state
        self.ctx = ctx
        self.handler = handler
        self.committer: Committer = committer if committer is not None else InMemory()
        self._durable = committer is not None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.stream: list[Event] = stream if stream is not None else []
        self.done = False
        self.finish: i.Finish | None = None  # the run's end, once the reducer decided it
        self.on_finish: Callable[[i.Finish], None] = self._resolve
        # facts and held steps waiting for their commit, by ticket, in order
        self._outbox: deque[tuple[int, Event]] = deque()
        self._held: deque[tuple[int, i.RunStep]] = deque()
        self._durable_waits: list[tuple[int, asyncio.Future[None]]] = []
        self._wake: asyncio.Future[None] | None = None
        self._collected: list[Event] | None = None
        self._calls: dict[str, Callable[..., Any]] = {
            name: (spec.func.__get__(workflow) if spec.is_method else spec.func)
            for name, spec in compiled.specs.items()
        }
        ctx._runner = self
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            i.RunStep: self._run_step,
            i.CancelStep: self._cancel_step,
            i.Publish: self._publish,
            i.ArmTimer: self._arm,
            i.DisarmTimer: self._disarm,
            i.Collected: self._set_collected,
            i.Commit: self._commit,
            i.Finish: self._finish,
        }

    @property
    def latest(self) -> RunState:
        """The run's state as this process knows it now."""
        return self.state

    @property
    def status(self) -> str:
        """The run's status, as the world may see it (``new`` shows as ``queued``)."""
        status = self.state.status
        return "queued" if status == "new" else status

    # -- driving the reducer ----------------------------------------------------------

    def feed(self, inp: i.Input) -> None:
        committer = self.committer
        if not self._durable:  # in memory: the reducer and its commands, nothing else
            _, cmds = reduce(self.state, inp)
            dispatch = self._dispatch
            for cmd in cmds:
                dispatch[type(cmd)](cmd)
            return
        if committer.closed:
            return
        if self.state.status not in FINAL:
            committer.record(inp)
        _, cmds = reduce(self.state, inp)
        dispatch = self._dispatch
        for cmd in cmds:
            dispatch[type(cmd)](cmd)
        committer.after_feed()

    def advance(self) -> None:
        """The committer made more commits durable: show their facts, start held steps."""
        durable = self.committer.durable
        outbox = self._outbox
        shown = False
        while outbox and outbox[0][0] <= durable:
            self.stream.append(outbox.popleft()[1])
            shown = True
        if shown:
            self._notify()
        held = self._held
        while held and held[0][0] <= durable:
            self._start_task(held.popleft()[1])
        if self.finish is not None and not outbox and self._finish_ticket <= durable:
            finish, self.finish = self.finish, None
            self.on_finish(finish)
        if self._durable_waits:
            waits, self._durable_waits = self._durable_waits, []
            for ticket, future in waits:
                if ticket > durable:
                    self._durable_waits.append((ticket, future))
                elif not future.done():
                    future.set_result(None)

    async def until_durable(self) -> None:
        """Wait until every commit asked for so far is durable (``ctx.checkpoint()``)."""
        ticket = self.committer.ticket
        if ticket <= self.committer.durable:
            return
        future: asyncio.Future[None] = self.loop.create_future()
        self._durable_waits.append((ticket, future))
        await future

    def abandon(self, exc: BaseException) -> None:
        """The run is let go unfinished here (a commit failed, the lease was lost, the
        process leaves): its steps stop, and steps waiting for a commit get ``exc``."""
        self.done = True
        for task in self.tasks.values():
            task.cancel()
        self.drop_timers()
        self._held.clear()
        waits, self._durable_waits = self._durable_waits, []
        for _, future in waits:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a cancelled step may never look
        self._notify()

    def drop_timers(self) -> None:
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()

    def news(self) -> asyncio.Future[None]:
        """A future resolved the next time the run shows an event or ends."""
        if self._wake is None:
            self._wake = self.loop.create_future()
        return self._wake

    def call(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` on the loop thread (sync steps run in worker threads)."""
        if threading.get_ident() == self.thread:
            return fn()
        future = asyncio.run_coroutine_threadsafe(_as_coro(fn), self.loop)
        return future.result()

    async def start(self, start_event: Event | None) -> None:
        try:
            semaphore = self.workflow._run_semaphore()
            if semaphore is None:
                self.feed(i.Begin(time.time(), start_event))
                return
            await semaphore.acquire()
            self.handler.add_done_callback(lambda _: semaphore.release())
            self.feed(i.Begin(time.time(), start_event))
        except Exception as exc:  # never leave the handler pending forever
            if not self.handler.done():
                self.handler.set_exception(exc)

    # -- commands ---------------------------------------------------------------------

    def _run_step(self, cmd: i.RunStep) -> None:
        committer = self.committer
        if committer.holds_steps and committer.ticket > committer.durable:
            self._held.append((committer.ticket, cmd))
        else:
            self._start_task(cmd)

    def _start_task(self, cmd: i.RunStep) -> None:
        ex = cmd.execution
        self.tasks[ex.id] = self.loop.create_task(
            self._execute(ex), name=f"piton:{ex.attempt.step}"
        )

    def _cancel_step(self, cmd: i.CancelStep) -> None:
        if self._held:
            self._held = deque(h for h in self._held if h[1].execution.id != cmd.exec_id)
        task = self.tasks.pop(cmd.exec_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _publish(self, cmd: i.Publish) -> None:
        """Promise 9: a fact is shown once its commit is durable; live writes at once,
        but never ahead of a fact published before them (the stream keeps one order)."""
        committer = self.committer
        committer.stream(cmd.event)
        ticket = 0 if cmd.live else committer.ticket
        if not self._outbox and ticket <= committer.durable:
            self.stream.append(cmd.event)
            self._notify()
        else:
            self._outbox.append((ticket, cmd.event))

    def _notify(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _arm(self, cmd: i.ArmTimer) -> None:
        old = self.timers.pop(cmd.timer_id, None)
        if old is not None:
            old.cancel()
        delay = max(cmd.deadline - time.time(), 0.0)
        self.timers[cmd.timer_id] = self.loop.call_later(delay, self._fire, cmd.timer_id)

    def _fire(self, timer_id: str) -> None:
        self.timers.pop(timer_id, None)
        self.feed(i.TimerFired(time.time(), timer_id))

    def _disarm(self, cmd: i.DisarmTimer) -> None:
        handle = self.timers.pop(cmd.timer_id, None)
        if handle is not None:
            handle.cancel()

    def _set_collected(self, cmd: i.Collected) -> None:
        self._collected = cmd.events

    def _commit(self, cmd: i.Commit) -> None:
        self.committer.commit(cmd.entries)

    def _finish(self, cmd: i.Finish) -> None:
        self.done = True
        self.drop_timers()
        self._notify()
        self.finish, self._finish_ticket = cmd, self.committer.ticket
        self.advance()  # in memory at once; a durable run once its final commit is

    _finish_ticket = 0

    def _resolve(self, cmd: i.Finish) -> None:
        if self.handler.done():
            return
        if cmd.status == COMPLETED:
            ev = cmd.result
            value = ev.result if type(ev) is StopEvent else ev
            self.handler.set_result(value)
        else:
            assert cmd.error is not None
            self.handler.set_exception(cmd.error)

    # -- operations from contexts -----------------------------------------------------------

    def send(self, event: Event, step: str | None) -> None:
        self.check_target(event, step)
        self.call(lambda: self._send(event, step))

    def _send(self, event: Event, step: str | None) -> None:
        refusal = send_refusal(self.state, event, step)
        if refusal is not None:
            raise TooManyPendingEvents(refusal)
        self.feed(i.Send(time.time(), event, step))

    def check_target(self, event: Event, step: str | None) -> None:
        check_target(self.compiled, event, step)

    def stream_write(self, event: Event) -> None:
        self.call(lambda: self.feed(i.StreamWrite(time.time(), event)))

    def set_state(self, path: str, value: Any) -> None:
        self.call(lambda: self.feed(i.SetState(time.time(), path, value)))

    def replace_state(self, value: Any) -> None:
        self.call(lambda: self.feed(i.ReplaceState(time.time(), value)))

    def listener_gone(self) -> None:
        """The handler was cancelled: nobody is left to receive the result of a memory run."""
        self.cancel()

    def cancel(self) -> None:
        if not self.state.finished:
            self.call(lambda: self.feed(i.Cancel(time.time())))

    async def events(self, cursor: int = 0) -> AsyncIterator[Event]:
        while True:
            while cursor < len(self.stream):
                ev = self.stream[cursor]
                cursor += 1
                yield ev
                if isinstance(ev, StopEvent):
                    return
            if self.done:
                return
            await self.news()

    # -- running one step ------------------------------------------------------------------

    async def _execute(self, ex: Execution) -> None:
        spec = self.compiled.specs[ex.attempt.step]
        step_run = StepRun(self, ex)
        try:
            result = await self._call(spec, ex, step_run)
        except WaitingForEvent as w:
            self._done(ex.id)
            self._feed_outcome(
                ex,
                i.StepWaits(
                    time.time(),
                    ex.id,
                    w.waiter_id,
                    w.event_type,
                    w.requirements,
                    w.waiter_event,
                    w.timeout,
                    step_run.take_sends(),
                ),
            )
            return
        except asyncio.CancelledError:
            self._done(ex.id)
            if ex.id in self.state.running:  # cancelled from outside the run: let go
                raise
            return
        except Exception as exc:
            self._done(ex.id)
            self._failed(ex, exc)
            return
        self._done(ex.id)
        if result is not None and not isinstance(result, Event):
            self.feed(
                i.StepFailed(
                    time.time(),
                    ex.id,
                    WorkflowRuntimeError(
                        f"Step '{spec.name}' of workflow '{self.compiled.graph.workflow}' "
                        f"returned {result!r} (a {type(result).__qualname__}); a step must "
                        "return an Event or None."
                    ),
                )
            )
            return
        self._feed_outcome(ex, i.StepDone(time.time(), ex.id, result, step_run.take_sends()))

    def _feed_outcome(self, ex: Execution, outcome: i.StepDone | i.StepWaits) -> None:
        """Feed a step's outcome; one that cannot be stored fails the step instead."""
        try:
            self.feed(outcome)
        except ContextSerdeError as exc:
            self.feed(i.StepFailed(time.time(), ex.id, exc))

    def _failed(self, ex: Execution, exc: Exception) -> None:
        """Decide now whether to retry (the policy is user code) and record the decision."""
        at = time.time()
        try:
            delay = retry_decision(self.state, ex.id, exc, at)
        except Exception as policy_error:  # noqa: BLE001 - a broken policy ends the retries
            exc.add_note(f"piton: the retry policy of step '{ex.attempt.step}' raised {policy_error!r}")
            delay = None
        self.feed(i.StepFailed(at, ex.id, exc, delay))

    def _done(self, exec_id: str) -> None:
        self.tasks.pop(exec_id, None)

    async def _call(self, spec: StepSpec, ex: Execution, step_run: StepRun) -> Any:
        kwargs: dict[str, Any] = {spec.event_param: ex.attempt.envelope.event}
        if spec.ctx_param is not None:
            kwargs[spec.ctx_param] = step_run.ctx
        if spec.resources:
            resources = self.workflow._resources()
            for name, resource in spec.resources:
                kwargs[name] = await resources.get(resource)
        fn = self._calls[spec.name]
        timeout = spec.options.timeout
        if spec.is_async:
            if timeout is None:
                return await fn(**kwargs)
            return await self._timed(spec, fn(**kwargs))
        call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
        future = self.loop.run_in_executor(self.workflow._executor(), call)
        if timeout is None:
            return await future
        return await self._timed(spec, future)

    async def _timed(self, spec: StepSpec, body: Awaitable[Any]) -> Any:
        """Await a step body under its ``timeout=``; a TimeoutError of its own passes as is."""
        scope = asyncio.timeout(spec.options.timeout)
        try:
            async with scope:
                return await body
        except TimeoutError as exc:
            if not scope.expired():
                raise
            raise WorkflowTimeoutError(
                f"Step '{spec.name}' of workflow '{self.compiled.graph.workflow}' timed out "
                f"after {spec.options.timeout} seconds."
            ) from exc


def check_target(compiled: Compiled, event: Event, step: str | None) -> None:
    """Refuse a send that no run of this workflow could take, naming what is wrong."""
    if not isinstance(event, Event):
        raise WorkflowRuntimeError(
            f"send_event() takes an Event, got {type(event).__qualname__}."
        )
    if step is None:
        if not compiled.waits.open and type(event) not in compiled.known_events:
            raise EventNotAccepted(
                f"send_event({type(event).__name__}(...)): workflow "
                f"'{compiled.graph.workflow}' does not know this event type: no step consumes "
                "it, returns it or waits for it with ctx.wait_for_event(). Send an event a "
                "step accepts, add a step that accepts it, or name the type in a "
                "wait_for_event() call."
            )
        return
    spec = compiled.specs.get(step)
    if spec is None:
        raise WorkflowRuntimeError(
            f"send_event(step={step!r}): workflow '{compiled.graph.workflow}' has no "
            f"such step. Steps: {', '.join(sorted(compiled.specs))}."
        )
    if type(event) not in spec.accepted:
        raise WorkflowRuntimeError(
            f"send_event(step={step!r}): the step does not accept {type(event).__name__} "
            f"(it accepts {', '.join(t.__name__ for t in spec.accepted)})."
        )


async def _as_coro(fn: Callable[[], R]) -> R:
    return fn()


class StepRun:
    """One execution of a step, as seen from inside it (``ctx`` forwards here)."""

    __slots__ = ("count", "ctx", "ex", "runner", "sends", "sleeps", "written")

    def __init__(self, runner: Runner, ex: Execution) -> None:
        self.runner = runner
        self.ex = ex
        self.sends: list[tuple[int, Any, str | None]] = []
        self.count = 0
        self.sleeps = 0
        self.written = 0
        self.ctx: StepContext[Any] = StepContext(runner.ctx, self)

    def send(self, event: Event, step: str | None) -> None:
        self.runner.check_target(event, step)
        self.sends.append((self.count, event, step))
        self.count += 1

    def stream_write(self, event: Event) -> None:
        index, self.written = self.written, self.written + 1
        ex_id = self.ex.id
        runner = self.runner
        runner.call(lambda: runner.feed(i.StreamWrite(time.time(), event, ex_id, index)))

    def take_sends(self) -> tuple[tuple[int, Any, str | None], ...]:
        sends = tuple(self.sends)
        self.sends.clear()
        return sends

    def collect(
        self, ev: Event, expected: list[type[Event]], buffer_id: str | None
    ) -> list[Event] | None:
        if buffer_id is None:  # cheap to derive: collect_events runs once per event
            first = expected[0].__qualname__ if expected else ""  # not __main__-bound
            buffer_id = f"{self.ex.attempt.step}:{first}*{len(expected)}"
        bid = buffer_id

        def go() -> list[Event] | None:
            runner = self.runner
            runner._collected = None
            runner.feed(i.Collect(time.time(), self.ex.id, ev, expected, bid))
            return runner._collected

        return self.runner.call(go)

    async def wait_for_event(
        self,
        event_type: type[Any],
        waiter_event: Event | None,
        waiter_id: str | None,
        requirements: dict[str, Any] | None,
        timeout: float | None,
    ) -> Any:
        requirements = dict(requirements or {})
        resolved_by = self.ex.attempt.resolved
        if waiter_id is None:
            # named by the type's qualname, not its module: a run started by `python app.py`
            # (module __main__) resumes in a worker that imports `app`
            reqs = ",".join(f"{k}={v!r}" for k, v in sorted(requirements.items()))
            at = self.ex.attempt.envelope.id
            waiter_id = f"waiter:{event_type.__qualname__}:{reqs}:{at}"
            legacy = f"waiter:{type_key(event_type)}:{reqs}:{at}"  # piton 0.1 runs
            if legacy in resolved_by and waiter_id not in resolved_by:
                waiter_id = legacy
        resolved = resolved_by.get(waiter_id)
        if resolved is None:
            raise WaitingForEvent(waiter_id, event_type, requirements, waiter_event, timeout)
        raise_if_timed_out(resolved, event_type, waiter_id)
        return resolved

    async def sleep(self, seconds: float, sleep_id: str | None) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise WorkflowRuntimeError(
                f"ctx.sleep() needs a number of seconds >= 0, got {seconds!r}."
            )
        if sleep_id is None:
            sleep_id = f"sleep:{self.sleeps}:{self.ex.attempt.envelope.id}"
            self.sleeps += 1
        if sleep_id in self.ex.attempt.resolved:
            return
        raise WaitingForEvent(sleep_id, None, {}, None, float(seconds))

    def retry_info(self) -> RetryInfo:
        a = self.ex.attempt
        return retry_info_of(
            a.retry_number, a.first_at, a.last_error, a.last_failed_at, time.time()
        )

    async def checkpoint(self) -> None:
        """Commit the state and sends so far; return once that commit is durable."""
        sends = self.take_sends()
        self.runner.feed(i.Checkpoint(time.time(), self.ex.id, sends))
        await self.runner.until_durable()
