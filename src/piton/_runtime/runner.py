"""Runner: executes the reducer's commands for one run and feeds back what happens."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from piton._core import inputs as i
from piton._core.graph import type_key
from piton._core.reducer import reduce
from piton._core.state import COMPLETED, Execution, RunState
from piton.context import (
    Context,
    StepContext,
    WaitingForEvent,
    raise_if_timed_out,
    retry_info_of,
)
from piton.errors import ContextSerdeError, WorkflowRuntimeError, WorkflowTimeoutError
from piton.events import Event, StopEvent
from piton.retry import RetryInfo

if TYPE_CHECKING:
    from piton.decorators import StepSpec
    from piton.handler import WorkflowHandler
    from piton.workflow import Compiled, Workflow

R = TypeVar("R")


class Runner:
    """Owns a live run: its RunState, step tasks, timers and event stream."""

    def __init__(
        self,
        workflow: Workflow,
        compiled: Compiled,
        state: RunState,
        ctx: Context[Any],
        handler: WorkflowHandler,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.workflow = workflow
        self.compiled = compiled
        self.state = state
        self.ctx = ctx
        self.handler = handler
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.stream: list[Event] = []
        self.done = False
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

    # -- driving the reducer ----------------------------------------------------------

    def feed(self, inp: i.Input) -> None:
        _, cmds = reduce(self.state, inp)
        dispatch = self._dispatch
        for cmd in cmds:
            dispatch[type(cmd)](cmd)

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
        ex = cmd.execution
        self.tasks[ex.id] = self.loop.create_task(
            self._execute(ex), name=f"piton:{ex.attempt.step}"
        )

    def _cancel_step(self, cmd: i.CancelStep) -> None:
        task = self.tasks.pop(cmd.exec_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _publish(self, cmd: i.Publish) -> None:
        self.stream.append(cmd.event)
        self._notify()

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
        """In-memory runs have nothing to commit."""

    def _finish(self, cmd: i.Finish) -> None:
        self.done = True
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        self._notify()
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
        self.call(lambda: self.feed(i.Send(time.time(), event, step)))

    def check_target(self, event: Event, step: str | None) -> None:
        if not isinstance(event, Event):
            raise WorkflowRuntimeError(
                f"send_event() takes an Event, got {type(event).__qualname__}."
            )
        if step is None:
            return
        spec = self.compiled.specs.get(step)
        if spec is None:
            raise WorkflowRuntimeError(
                f"send_event(step={step!r}): workflow '{self.compiled.graph.workflow}' has no "
                f"such step. Steps: {', '.join(sorted(self.compiled.specs))}."
            )
        if type(event) not in spec.accepted:
            raise WorkflowRuntimeError(
                f"send_event(step={step!r}): the step does not accept {type(event).__name__} "
                f"(it accepts {', '.join(t.__name__ for t in spec.accepted)})."
            )

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
            if self._wake is None:
                self._wake = self.loop.create_future()
            await self._wake

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
            self.feed(i.StepFailed(time.time(), ex.id, exc))
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
                    retryable=False,
                )
            )
            return
        self._feed_outcome(ex, i.StepDone(time.time(), ex.id, result, step_run.take_sends()))

    def _feed_outcome(self, ex: Execution, outcome: i.StepDone | i.StepWaits) -> None:
        """Feed a step's outcome; one that cannot be stored fails the step instead."""
        try:
            self.feed(outcome)
        except ContextSerdeError as exc:
            self.feed(i.StepFailed(time.time(), ex.id, exc, retryable=False))

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
            first = type_key(expected[0]) if expected else ""
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
        if waiter_id is None:
            reqs = ",".join(f"{k}={v!r}" for k, v in sorted(requirements.items()))
            waiter_id = f"waiter:{type_key(event_type)}:{reqs}:{self.ex.attempt.envelope.id}"
        resolved = self.ex.attempt.resolved.get(waiter_id)
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
        sends = self.take_sends()
        self.runner.feed(i.Checkpoint(time.time(), self.ex.id, sends))
