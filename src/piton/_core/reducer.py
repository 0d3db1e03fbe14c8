"""The reducer: ``reduce(state, input) -> (state, commands)``.

Every rule of a run lives here: routing, worker slots, retries, waiters, collect
buffers, timeouts, cancellation and the end of a run. It is deterministic and does
no I/O; for speed it updates ``state`` in place and returns it (copy it first when
the old value is needed). The asyncio shell in ``piton._runtime`` executes the
commands and turns what happens into new inputs.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from piton.errors import (
    TooManyPendingEvents,
    WorkflowCancelledByUser,
    WorkflowRuntimeError,
    WorkflowTimeoutError,
)
from piton.events import (
    InputRequiredEvent,
    StepFailedEvent,
    StopEvent,
    WorkflowCancelledEvent,
    WorkflowFailedEvent,
    WorkflowTimedOutEvent,
)

from . import inputs as i
from .inputs import Command
from .paths import set_path
from .state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    NEW,
    PARKED,
    RUN_TIMER,
    RUNNING,
    TIMED_OUT,
    Attempt,
    CollectBuffer,
    Envelope,
    Execution,
    RunState,
    Waiter,
    WaitTimedOut,
)
from .status import RunStatus

Cmds = list[Command]


def reduce(state: RunState, inp: i.Input) -> tuple[RunState, Cmds]:
    """Apply one input to ``state``; return it with the commands to execute."""
    cmds: Cmds = []
    if state.finished:  # only the state store stays writable; nothing is journaled
        if isinstance(inp, i.SetState | i.ReplaceState):
            _HANDLERS[type(inp)](state, inp, cmds)
        return state, cmds
    if not isinstance(inp, i.Begin):
        _count_active(state, inp.at)
    _HANDLERS[type(inp)](state, inp, cmds)
    if state.durable:
        state.journal.append(inp)
        if inp.commits or state.finished:
            entries = tuple(state.journal)
            state.journal.clear()
            # the commit goes before the commands that reveal its effects
            cmds.insert(0, i.Commit(entries))
    return state, cmds


# --- starting and resuming -------------------------------------------------------------


def _begin(state: RunState, inp: i.Begin, cmds: Cmds) -> None:
    resuming = state.status != NEW
    state.status = RUNNING
    # after a crash or a restore, the time since the last input was not active time
    state.active_since = inp.at
    if state.timeout is not None:
        remaining = max(state.timeout - state.active_elapsed, 0.0)
        state.deadlines[RUN_TIMER] = inp.at + remaining
    for timer_id, deadline in state.deadlines.items():
        cmds.append(i.ArmTimer(timer_id, deadline))
    if resuming:
        _requeue_running(state)
        for step, queue in state.queues.items():
            _fill_slots(state, step, queue, inp.at, cmds)
    if inp.start_event is not None:
        _route(state, Envelope(state.next_id("e"), inp.start_event), inp.at, cmds)


def _requeue_running(state: RunState) -> None:
    """Work that was running when the run stopped (a crash, a snapshot) runs again, first."""
    for ex in reversed(list(state.running.values())):
        state.queues.setdefault(ex.attempt.step, deque()).appendleft(ex.attempt)
    state.running.clear()
    state.busy.clear()


def _count_active(state: RunState, at: float) -> None:
    """The run's clock: active time accrues up to each input the run applies.

    Counting at every input (not only at Park) keeps ``active_elapsed`` current in the
    journal and in snapshots, so a crashed or restored run keeps the time it had used.
    """
    since = state.active_since
    if since is not None and at > since:
        state.active_elapsed += at - since
        state.active_since = at


def _park(state: RunState, inp: i.Park, cmds: Cmds) -> None:
    """An idle durable run is parked, unless nothing could ever wake it: then it fails
    now instead of waiting forever (promise 11: no run without a timer or a waiter)."""
    if not can_be_woken(state):
        _finish(
            state,
            FAILED,
            cmds,
            error=WorkflowRuntimeError(
                f"Run '{state.run_id}' of workflow '{state.graph.workflow}' stopped with nothing "
                "left to do: no step is running or queued, nothing waits for an event or a "
                "timer, and no step returned a StopEvent. Make the last step return "
                "StopEvent(result=...)."
            ),
        )
        return
    state.active_since = None  # the clock stops; reduce() counted it up to inp.at
    state.status = PARKED
    state.deadlines.pop(RUN_TIMER, None)


def can_be_woken(state: RunState) -> bool:
    """Something can still move the run: work of its own, a waiter, a timer other than the
    run's own, or a step that consumes events only a send can bring."""
    if state.waiters or state.graph.outside or not state.is_idle():
        return True
    return any(timer_id != RUN_TIMER for timer_id in state.deadlines)


def waiting_count(state: RunState) -> int:
    """What a store records as the run's waiters: its waiters, plus one when a step waits
    for events only a send can bring (so a parked run of such a workflow is not stuck)."""
    return len(state.waiters) + (1 if state.graph.outside else 0)


# --- routing ---------------------------------------------------------------------------


def _route(state: RunState, env: Envelope, at: float, cmds: Cmds, *, sent: bool = False) -> None:
    """Deliver one event: end the run, wake waiters, and queue it for its consumers.

    A ``sent`` event (``send_event``, from a step or from outside) that no step and no
    waiter takes now is kept for the first waiter that matches it later (promise 10).
    """
    ev = env.event
    if isinstance(ev, StopEvent):
        cmds.append(i.Publish(ev))
        _finish(state, COMPLETED, cmds, result=ev)
        return
    if isinstance(ev, InputRequiredEvent):
        cmds.append(i.Publish(ev))
    if env.target is not None:
        _enqueue(state, Attempt(env.target, env), at, cmds)
        return
    woken = _wake_waiters(state, ev, at, cmds) if state.waiters else ()
    consumers = state.graph.consumers(type(ev))
    for step in consumers:
        if step not in woken:
            _enqueue(state, Attempt(step, env), at, cmds)
    if sent and not woken and not consumers and not isinstance(ev, InputRequiredEvent):
        _keep(state, env, cmds)


def _keep(state: RunState, env: Envelope, cmds: Cmds) -> None:
    if len(state.kept) < state.max_kept:
        state.kept.append(env)
        return
    # only an inbox event can get here: a live send is refused first (send_refusal)
    _finish(state, FAILED, cmds, error=TooManyPendingEvents(_too_many(state)))


def _too_many(state: RunState) -> str:
    return (
        f"Run '{state.run_id}' of workflow '{state.graph.workflow}' already keeps "
        f"{state.max_kept} sent events that no step and no waiter has taken; it refuses more. "
        "Send events the run waits for, or let it take the ones it keeps first."
    )


def send_refusal(state: RunState, event: Any, target: str | None) -> str | None:
    """Why a live run must refuse this send now (it would have to keep one event too
    many), or None. The runtime asks before feeding ``Send``, so the sender gets the error."""
    if target is not None or len(state.kept) < state.max_kept:
        return None
    if state.graph.consumers(type(event)) or isinstance(event, InputRequiredEvent | StopEvent):
        return None
    if any(_matches(w, event) for w in state.waiters.values()):
        return None
    return _too_many(state)


def _matches(waiter: Waiter, ev: Any) -> bool:
    if waiter.event_type is None or type(ev) is not waiter.event_type:
        return False
    return all(getattr(ev, k, None) == v for k, v in waiter.requirements.items())


def _wake_waiters(state: RunState, ev: Any, at: float, cmds: Cmds) -> set[str]:
    woken: set[str] = set()
    for key, waiter in list(state.waiters.items()):
        if not _matches(waiter, ev):
            continue
        del state.waiters[key]
        _disarm(state, _waiter_timer(key), cmds)
        waiter.attempt.resolved[waiter.id] = ev
        woken.add(waiter.attempt.step)
        _enqueue(state, waiter.attempt, at, cmds)
    return woken


def _enqueue(state: RunState, attempt: Attempt, at: float, cmds: Cmds) -> None:
    step = attempt.step
    if state.busy.get(step, 0) < state.graph.steps[step].num_workers:
        _start(state, attempt, at, cmds)
    else:
        state.queues.setdefault(step, deque()).append(attempt)


def _start(state: RunState, attempt: Attempt, at: float, cmds: Cmds) -> None:
    step = attempt.step
    state.busy[step] = state.busy.get(step, 0) + 1
    if attempt.first_at is None:
        attempt.first_at = at
    ex = Execution(state.next_id("x"), attempt, at)
    state.running[ex.id] = ex
    cmds.append(i.RunStep(ex))


def _fill_slots(state: RunState, step: str, queue: deque[Attempt], at: float, cmds: Cmds) -> None:
    limit = state.graph.steps[step].num_workers
    while queue and state.busy.get(step, 0) < limit:
        _start(state, queue.popleft(), at, cmds)


def _release(state: RunState, exec_id: str, at: float, cmds: Cmds) -> Execution | None:
    """Free the worker slot of a finished execution and start queued work in it."""
    ex = state.running.pop(exec_id, None)
    if ex is None:
        return None
    step = ex.attempt.step
    state.busy[step] -= 1
    queue = state.queues.get(step)
    if queue:
        _fill_slots(state, step, queue, at, cmds)
    return ex


def _deliver_sends(
    state: RunState, attempt: Attempt, sends: i.Sends, at: float, cmds: Cmds
) -> None:
    """Route a step's sends once each: a re-run's repeats (same index) are dropped."""
    key = attempt.key
    done = state.delivered.get(key, 0)
    for index, event, target in sends:
        if index < done:
            continue
        done = index + 1
        state.delivered[key] = done
        env = Envelope(state.next_id("e"), event, target, attempt.envelope.recoveries)
        _route(state, env, at, cmds, sent=True)
        if state.finished:
            return


# --- step outcomes -----------------------------------------------------------------------


def _step_done(state: RunState, inp: i.StepDone, cmds: Cmds) -> None:
    ex = _release(state, inp.exec_id, inp.at, cmds)
    if ex is None:
        return
    attempt = ex.attempt
    _deliver_sends(state, attempt, inp.sends, inp.at, cmds)
    state.delivered.pop(attempt.key, None)
    state.streamed.pop(_stream_key(attempt), None)
    _forget_collector(state, attempt.key)
    if inp.result is not None and not state.finished:
        env = Envelope(state.next_id("e"), inp.result, None, attempt.envelope.recoveries)
        _route(state, env, inp.at, cmds)


def _step_failed(state: RunState, inp: i.StepFailed, cmds: Cmds) -> None:
    ex = _release(state, inp.exec_id, inp.at, cmds)
    if ex is None:
        return
    attempt = ex.attempt
    state.streamed.pop(_stream_key(attempt), None)
    delay = inp.retry_in
    if delay is None:
        if state.graph.catchers and _recover(state, attempt, inp, cmds):
            return
        first = attempt.first_at if attempt.first_at is not None else inp.at
        failed = WorkflowFailedEvent(
            step_name=attempt.step,
            exception=inp.error,
            attempts=attempt.retry_number + 1,
            elapsed_seconds=inp.at - first,
        )
        _finish(state, FAILED, cmds, error=inp.error, stop=failed)
        return
    retry = Attempt(
        step=attempt.step,
        envelope=attempt.envelope,
        retry_number=attempt.retry_number + 1,
        first_at=attempt.first_at,
        last_error=inp.error,
        last_failed_at=inp.at,
        resolved=attempt.resolved,
    )
    if delay <= 0:
        _enqueue(state, retry, inp.at, cmds)
        return
    timer_id = state.next_id("retry:")
    state.delayed[timer_id] = retry
    _arm(state, timer_id, inp.at + delay, cmds)


def _recover(state: RunState, attempt: Attempt, inp: i.StepFailed, cmds: Cmds) -> bool:
    """Hand a step's final failure to its @catch_error handler, if the lineage's budget
    allows; False to fail the run.

    Everything decided here comes from the state and the journaled ``StepFailed`` (its
    ``at`` and error), so a replay recovers the same way without calling user code.
    """
    catcher = state.graph.catchers.get(attempt.step)
    if catcher is None:
        return False
    handler, budget = catcher
    used = attempt.envelope.recoveries or {}
    count = used.get(handler, 0) + 1
    if count > budget:
        return False
    first = attempt.first_at if attempt.first_at is not None else inp.at
    failed = StepFailedEvent(
        step_name=attempt.step,
        input_event=attempt.envelope.event,
        exception=inp.error,
        attempts=attempt.retry_number + 1,
        elapsed_seconds=inp.at - first,
        failed_at=datetime.fromtimestamp(inp.at, tz=UTC),
    )
    state.delivered.pop(attempt.key, None)  # the attempt is over, as after StepDone
    _forget_collector(state, attempt.key)
    env = Envelope(state.next_id("e"), failed, handler, {**used, handler: count})
    _route(state, env, inp.at, cmds)
    return True


def retry_decision(state: RunState, exec_id: str, error: BaseException, at: float) -> float | None:
    """Seconds until a failed execution is retried, or None to give up.

    The live run asks this (it calls the step's retry policy, user code) and records the
    answer in ``StepFailed.retry_in``; replaying the journal applies the recorded answer
    and never calls the policy again (promise 11).
    """
    ex = state.running.get(exec_id)
    if ex is None:
        return None
    attempt = ex.attempt
    policy = state.graph.steps[attempt.step].retry_policy
    if policy is None:
        return None
    failures = attempt.retry_number + 1
    elapsed = at - (attempt.first_at if attempt.first_at is not None else at)
    seed = zlib.crc32(f"{state.run_id}/{attempt.envelope.id}/{failures}".encode())
    delay = policy.next(elapsed, failures, error, seed=seed)
    return None if delay is None else max(float(delay), 0.0)


def _step_waits(state: RunState, inp: i.StepWaits, cmds: Cmds) -> None:
    ex = _release(state, inp.exec_id, inp.at, cmds)
    if ex is None:
        return
    attempt = ex.attempt
    key = f"{attempt.key}/{inp.waiter_id}"  # per attempt: a fixed waiter_id may repeat
    known = key in state.waiters
    deadline = None if inp.timeout is None else inp.at + inp.timeout
    if known:
        deadline = state.waiters[key].deadline
    waiter = Waiter(inp.waiter_id, attempt, inp.event_type, inp.requirements, deadline)
    kept = None if known else _take_kept(state, waiter)
    if kept is not None:  # it came before the step asked: answer at once, ask nobody
        attempt.resolved[inp.waiter_id] = kept.event
        _enqueue(state, attempt, inp.at, cmds)
    else:
        state.waiters[key] = waiter
        if not known:
            if inp.waiter_event is not None:
                cmds.append(i.Publish(inp.waiter_event))
            if deadline is not None:
                _arm(state, _waiter_timer(key), deadline, cmds)
    _deliver_sends(state, attempt, inp.sends, inp.at, cmds)


def _take_kept(state: RunState, waiter: Waiter) -> Envelope | None:
    for n, env in enumerate(state.kept):
        if _matches(waiter, env.event):
            del state.kept[n]
            return env
    return None


def _checkpoint(state: RunState, inp: i.Checkpoint, cmds: Cmds) -> None:
    ex = state.running.get(inp.exec_id)
    if ex is not None:
        _deliver_sends(state, ex.attempt, inp.sends, inp.at, cmds)


# --- outside events, state, streams ---------------------------------------------------


def _send(state: RunState, inp: i.Send, cmds: Cmds) -> None:
    _route(state, Envelope(state.next_id("e"), inp.event, inp.target), inp.at, cmds, sent=True)


def _set_state(state: RunState, inp: i.SetState, cmds: Cmds) -> None:
    state.values = set_path(state.values, inp.path, inp.value)


def _replace_state(state: RunState, inp: i.ReplaceState, cmds: Cmds) -> None:
    state.values = inp.value


def _stream_write(state: RunState, inp: i.StreamWrite, cmds: Cmds) -> None:
    ex = state.running.get(inp.exec_id) if inp.exec_id else None
    if ex is not None:  # a re-run after wait_for_event or a crash repeats earlier writes
        key = _stream_key(ex.attempt)
        if inp.index < state.streamed.get(key, 0):
            return
        state.streamed[key] = inp.index + 1
    cmds.append(i.Publish(inp.event, live=True))


def _stream_key(attempt: Attempt) -> str:
    """Stream writes are numbered per retry: a retry's writes are new, a re-run's are not."""
    return f"{attempt.key}#{attempt.retry_number}"


def _collect(state: RunState, inp: i.Collect, cmds: Cmds) -> None:
    ex = state.running.get(inp.exec_id)
    owner = ex.attempt.key if ex is not None else inp.exec_id
    buf = state.buffers.get(inp.buffer_id)
    if buf is None:
        buf = state.buffers[inp.buffer_id] = CollectBuffer()
    batch = buf.claimed.get(owner)
    if batch is not None:  # a retry of the attempt that completed this batch
        cmds.append(i.Collected([event for _, event in batch]))
        return
    if owner not in buf.seen:
        buf.seen.add(owner)
        buf.pending.setdefault(type(inp.event), []).append((owner, inp.event))
    if sum(map(len, buf.pending.values())) < len(inp.expected):  # cheap: not enough yet
        cmds.append(i.Collected(None))
        return
    runs = expected_runs(inp.expected)
    need: dict[type[Any], int] = {}
    for event_type, count in runs:
        need[event_type] = need.get(event_type, 0) + count
    if any(len(buf.pending.get(t, ())) < n for t, n in need.items()):
        cmds.append(i.Collected(None))
        return
    taken: dict[type[Any], list[tuple[str, Any]]] = {}
    for t, n in need.items():
        queue = buf.pending[t]
        taken[t] = queue[:n]
        del queue[:n]
    ordered: list[tuple[str, Any]] = []
    for event_type, count in runs:
        ordered.extend(taken[event_type][:count])
        del taken[event_type][:count]
    buf.claimed[owner] = ordered
    cmds.append(i.Collected([event for _, event in ordered]))


def expected_runs(expected: Sequence[type[Any]]) -> list[tuple[type[Any], int]]:
    """``[A, A, B]`` -> ``[(A, 2), (B, 1)]``."""
    if expected and expected.count(expected[0]) == len(expected):  # the common fan-in
        return [(expected[0], len(expected))]
    return [(t, sum(1 for _ in group)) for t, group in groupby(expected)]


def _forget_collector(state: RunState, owner: str) -> None:
    """A finished attempt never collects again: drop its claim and its ``seen`` mark.

    A buffer goes once nothing is pending or claimed and no live attempt has added to
    it; while one has (it may be retrying), the buffer keeps its mark so that the
    retry does not add the same event again.
    """
    for key, buf in list(state.buffers.items()):
        buf.claimed.pop(owner, None)
        buf.seen.discard(owner)
        if not buf.claimed and not buf.seen and not any(buf.pending.values()):
            del state.buffers[key]


# --- timers ---------------------------------------------------------------------------


def _waiter_timer(key: str) -> str:
    return f"wait:{key}"


def _arm(state: RunState, timer_id: str, deadline: float, cmds: Cmds) -> None:
    state.deadlines[timer_id] = deadline
    cmds.append(i.ArmTimer(timer_id, deadline))


def _disarm(state: RunState, timer_id: str, cmds: Cmds) -> None:
    if state.deadlines.pop(timer_id, None) is not None:
        cmds.append(i.DisarmTimer(timer_id))


def _timer_fired(state: RunState, inp: i.TimerFired, cmds: Cmds) -> None:
    if state.deadlines.pop(inp.timer_id, None) is None:
        return  # disarmed meanwhile
    if inp.timer_id == RUN_TIMER:
        active = sorted({ex.attempt.step for ex in state.running.values()})
        _finish(
            state,
            TIMED_OUT,
            cmds,
            error=WorkflowTimeoutError(
                f"Run '{state.run_id}' of workflow '{state.graph.workflow}' timed out after "
                f"{state.timeout} seconds. Pass a larger timeout= (or None) to the workflow."
            ),
            stop=WorkflowTimedOutEvent(timeout=state.timeout, active_steps=active),
        )
        return
    retry = state.delayed.pop(inp.timer_id, None)
    if retry is not None:
        _enqueue(state, retry, inp.at, cmds)
        return
    key = inp.timer_id.removeprefix("wait:")
    waiter = state.waiters.pop(key, None)
    if waiter is not None:
        waiter.attempt.resolved[waiter.id] = WaitTimedOut(
            None if waiter.deadline is None else waiter.deadline
        )
        _enqueue(state, waiter.attempt, inp.at, cmds)


# --- the end ---------------------------------------------------------------------------


def _cancel(state: RunState, inp: i.Cancel, cmds: Cmds) -> None:
    _finish(
        state,
        CANCELLED,
        cmds,
        error=WorkflowCancelledByUser(f"Run '{state.run_id}' was cancelled by the user."),
        stop=WorkflowCancelledEvent(),
    )


def _finish(
    state: RunState,
    status: RunStatus,
    cmds: Cmds,
    *,
    result: Any = None,
    error: BaseException | None = None,
    stop: StopEvent | None = None,
) -> None:
    """End the run; ``stop`` (a failure's StopEvent) is published last on the stream."""
    state.status = status
    state.result = result
    state.error = error
    for exec_id in state.running:
        cmds.append(i.CancelStep(exec_id))
    for timer_id in state.deadlines:
        cmds.append(i.DisarmTimer(timer_id))
    state.running.clear()
    state.busy.clear()
    state.queues.clear()
    state.waiters.clear()
    state.delayed.clear()
    state.deadlines.clear()
    state.delivered.clear()
    if stop is not None:
        cmds.append(i.Publish(stop))
    cmds.append(i.Finish(status, result, error))


_HANDLERS: dict[type[Any], Callable[[RunState, Any, Cmds], None]] = {
    i.Begin: _begin,
    i.StepDone: _step_done,
    i.StepFailed: _step_failed,
    i.StepWaits: _step_waits,
    i.Checkpoint: _checkpoint,
    i.Send: _send,
    i.SetState: _set_state,
    i.ReplaceState: _replace_state,
    i.Collect: _collect,
    i.StreamWrite: _stream_write,
    i.TimerFired: _timer_fired,
    i.Cancel: _cancel,
    i.Park: _park,
}
if _HANDLERS.keys() != set(i.INPUTS):  # inputs.Input is the one list of input kinds
    raise TypeError("reduce() needs one handler per kind of input in piton._core.inputs.Input")

__all__ = [
    "can_be_woken",
    "reduce",
    "retry_decision",
    "send_refusal",
    "set_path",
    "waiting_count",
]
