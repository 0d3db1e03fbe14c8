"""Runner: executes the reducer's commands for one run and feeds back what happens."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from piton._core import inputs as i
from piton._core.reducer import reduce, retry_decision, send_refusal
from piton._core.state import COMPLETED, FINAL, Execution, RunState, shown_status
from piton._core.status import RunStatus
from piton._runtime.clock import Timer
from piton._runtime.engine import DONE, Done, Engine, RunLink, StepCall
from piton._runtime.steps import StepRun, WaitingForEvent
from piton.errors import (
    ContextSerdeError,
    TooManyPendingEvents,
    WorkflowRuntimeError,
    WorkflowTimeoutError,
)
from piton.events import Event, StopEvent
from piton.telemetry import RunTrace, start_run

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
        engine: Engine,
        state: RunState,
        link: RunLink,
        committer: Committer | None = None,
        outcome: asyncio.Future[Any] | None = None,
        stream: list[Event] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.engine = engine
        self.clock = engine.clock
        self.state = state
        self.link = link
        # the run's result or error; a durable run's driver shares its own across runners
        self.outcome = outcome if outcome is not None else self.loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.committer: Committer = committer if committer is not None else InMemory()
        self._durable = committer is not None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.timers: dict[str, Timer] = {}
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
        # a memory run waiting for a num_concurrent_runs slot: what reached it, in order
        self._unbegun: list[i.Input] | None = None
        # a worker that shuts down lets the steps running now finish, and starts no other:
        # the run's next owner starts them (they are in the journal as running)
        self.draining = False
        # the OpenTelemetry span of this execution of the run (None: telemetry is off)
        self.tel: RunTrace | None = None
        link.run = self
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
    def status(self) -> RunStatus:
        """The run's status, as the world may see it (``new`` shows as ``queued``)."""
        return shown_status(self.state.status)

    # -- driving the reducer ----------------------------------------------------------

    def feed(self, inp: i.Input) -> None:
        committer = self.committer
        if not self._durable:  # in memory: the reducer and its commands, nothing else
            if self._unbegun is not None and type(inp) is not i.Begin:
                self._unbegun.append(inp)  # waiting for a run slot: after the Begin
                return
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

    def start(self, start_event: Event | None) -> None:
        """Begin an in-memory run on the running loop: at once, or once
        ``num_concurrent_runs`` lets it run.

        Whatever reaches the run before its Begin (a send to a restored context, a state
        write) is fed after it, in order."""
        try:
            semaphore = self.engine.run_semaphore()
            if semaphore is None:
                self.tel = start_run(self.engine.name, self.state.run_id)
                self.feed(i.Begin(self.clock.now(), start_event))
                return
        except Exception as exc:  # never leave the caller waiting forever
            self.outcome.set_exception(exc)
            return
        self._unbegun = []
        self.task = self.loop.create_task(self._start_when_free(semaphore, start_event))

    async def _start_when_free(self, semaphore: asyncio.Semaphore, start: Event | None) -> None:
        try:
            await semaphore.acquire()
            self.outcome.add_done_callback(lambda _: semaphore.release())
            early, self._unbegun = self._unbegun or [], None
            self.tel = start_run(self.engine.name, self.state.run_id)
            self.feed(i.Begin(self.clock.now(), start))
            for inp in early:
                self.feed(inp)
        except Exception as exc:  # never leave the caller waiting forever
            if not self.outcome.done():
                self.outcome.set_exception(exc)

    # -- commands ---------------------------------------------------------------------

    def _run_step(self, cmd: i.RunStep) -> None:
        committer = self.committer
        if committer.holds_steps and committer.ticket > committer.durable:
            self._held.append((committer.ticket, cmd))
        else:
            self._start_task(cmd)

    def _start_task(self, cmd: i.RunStep) -> None:
        if self.draining:
            return
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
        delay = max(cmd.deadline - self.clock.now(), 0.0)
        self.timers[cmd.timer_id] = self.clock.call_later(delay, self._fire, cmd.timer_id)

    def _fire(self, timer_id: str) -> None:
        self.timers.pop(timer_id, None)
        self.feed(i.TimerFired(self.clock.now(), timer_id))

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
        if self.tel is not None and not self._durable:  # a durable run's driver ends it
            self.tel.end(cmd.status, cmd.error)
        self.drop_timers()
        self._notify()
        self.finish, self._finish_ticket = cmd, self.committer.ticket
        self.advance()  # in memory at once; a durable run once its final commit is

    _finish_ticket = 0

    def _resolve(self, cmd: i.Finish) -> None:
        if self.outcome.done():
            return
        if cmd.status == COMPLETED:
            ev = cmd.result
            value = ev.result if type(ev) is StopEvent else ev
            self.outcome.set_result(value)
        else:
            assert cmd.error is not None
            self.outcome.set_exception(cmd.error)

    # -- operations from contexts (any thread) ---------------------------------------------

    def send(self, event: Event, step: str | None) -> None:
        self.engine.check_target(event, step)
        self.call(lambda: self._send(event, step))

    def _send(self, event: Event, step: str | None) -> None:
        refusal = send_refusal(self.state, event, step)
        if refusal is not None:
            raise TooManyPendingEvents(refusal)
        self.feed(i.Send(self.clock.now(), event, step))

    def stream_write(self, event: Event) -> None:
        self.call(lambda: self.feed(i.StreamWrite(self.clock.now(), event)))

    def set_state(self, path: str, value: Any) -> None:
        self.call(lambda: self.feed(i.SetState(self.clock.now(), path, value)))

    def replace_state(self, value: Any) -> None:
        self.call(lambda: self.feed(i.ReplaceState(self.clock.now(), value)))

    def cancel(self) -> None:
        if not self.state.finished:
            self.call(lambda: self.feed(i.Cancel(self.clock.now())))

    def collect(self, inp: i.Collect) -> list[Event] | None:
        """Feed a ``collect_events`` call; the events, once all expected are in."""
        self._collected = None
        self.feed(inp)
        collected, self._collected = self._collected, None
        return collected

    # -- RunControl: what the handler of an in-memory run asks ---------------------------

    def send_event(self, event: Event, step: str | None) -> Done:
        self.send(event, step)
        return DONE

    def cancel_run(self) -> Done:
        self.cancel()
        return DONE

    def listener_gone(self) -> None:
        """The handler was cancelled: nobody is left to receive the result of a memory run."""
        self.cancel()

    def handler_added(self) -> None:
        return None

    def handler_dropped(self) -> None:
        return None  # a memory run goes on, as an asyncio task does when nobody awaits it

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
        step = self.engine.steps[ex.attempt.step]
        step_run = StepRun(self, ex)
        clock = self.clock
        began = clock.now()
        tel = self.tel
        span: Any = None
        if tel is not None:
            span = tel.step_started(step.name, ex.attempt.retry_number + 1, ex.id)
        fed: i.StepDone | i.StepFailed | i.StepWaits
        try:
            if tel is None:
                result = await self._call(step, ex, step_run)
            else:
                result = await tel.inside(span, self._call(step, ex, step_run))
        except WaitingForEvent as w:
            self._done(ex.id)
            at = clock.now()
            fed = self._feed_outcome(
                ex,
                i.StepWaits(
                    at,
                    ex.id,
                    w.waiter_id,
                    w.event_type,
                    w.requirements,
                    w.waiter_event,
                    w.timeout,
                    step_run.take_sends(),
                    step.name,
                    round(at - began, 6),
                ),
                began,
            )
        except asyncio.CancelledError:
            self._done(ex.id)
            if tel is not None:
                tel.step_ended(span, None)
            if ex.id in self.state.running:  # cancelled from outside the run: let go
                raise
            return
        except Exception as exc:
            self._done(ex.id)
            fed = self._failed(ex, exc, began)
        else:
            self._done(ex.id)
            at = clock.now()
            if result is not None and not isinstance(result, Event):
                fed = i.StepFailed(
                    at,
                    ex.id,
                    WorkflowRuntimeError(
                        f"Step '{step.name}' of workflow '{self.engine.name}' returned "
                        f"{result!r} (a {type(result).__qualname__}); a step must return an "
                        "Event or None."
                    ),
                    None,
                    step.name,
                    round(at - began, 6),
                )
                self.feed(fed)
            else:
                fed = self._feed_outcome(
                    ex,
                    i.StepDone(
                        at, ex.id, result, step_run.take_sends(), step.name, round(at - began, 6)
                    ),
                    began,
                )
        if tel is not None:
            tel.step_ended(span, fed)

    def _feed_outcome(
        self, ex: Execution, outcome: i.StepDone | i.StepWaits, began: float
    ) -> i.StepDone | i.StepWaits | i.StepFailed:
        """Feed a step's outcome; one that cannot be stored fails the step instead.
        Returns what was fed."""
        try:
            self.feed(outcome)
        except ContextSerdeError as exc:
            at = self.clock.now()
            failed = i.StepFailed(at, ex.id, exc, None, outcome.step, round(at - began, 6))
            self.feed(failed)
            return failed
        return outcome

    def _failed(self, ex: Execution, exc: Exception, began: float) -> i.StepFailed:
        """Decide now whether to retry (the policy is user code) and record the decision."""
        at = self.clock.now()
        name = ex.attempt.step
        try:
            delay = retry_decision(self.state, ex.id, exc, at)
        except Exception as policy_error:  # noqa: BLE001 - a broken policy ends the retries
            exc.add_note(f"piton: the retry policy of step '{name}' raised {policy_error!r}")
            delay = None
        failed = i.StepFailed(at, ex.id, exc, delay, name, round(at - began, 6))
        self.feed(failed)
        return failed

    def _done(self, exec_id: str) -> None:
        self.tasks.pop(exec_id, None)

    async def _call(self, step: StepCall, ex: Execution, step_run: StepRun) -> Any:
        kwargs: dict[str, Any] = {step.event_param: ex.attempt.envelope.event}
        if step.ctx_param is not None:
            kwargs[step.ctx_param] = step_run.ctx
        if step.resources:
            resources = self.engine.resources
            for name, resource in step.resources:
                kwargs[name] = await resources.get(resource)
        fn = step.fn
        if step.is_async:
            if step.timeout is None:
                return await fn(**kwargs)
            return await self._timed(step, fn(**kwargs))
        call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
        future = self.loop.run_in_executor(self.engine.executor(), call)
        if step.timeout is None:
            return await future
        return await self._timed(step, future)

    async def _timed(self, step: StepCall, body: Awaitable[Any]) -> Any:
        """Await a step body under its ``timeout=``; a TimeoutError of its own passes as is."""
        scope = asyncio.timeout(step.timeout)
        try:
            async with scope:
                return await body
        except TimeoutError as exc:
            if not scope.expired():
                raise
            raise WorkflowTimeoutError(
                f"Step '{step.name}' of workflow '{self.engine.name}' timed out after "
                f"{step.timeout} seconds."
            ) from exc


async def _as_coro(fn: Callable[[], R]) -> R:
    return fn()
