"""Property tests for the pure reducer: random interleavings checked against invariants.

A hypothesis state machine plays the environment of runs. It keeps the executions the
reducer asked for (``RunStep``) and answers them in random order: done (with sends and a
result the step's return types allow), failed, waiting, checkpointing or collecting. It
also sends outside events, fires armed timers on a fake clock (plain floats), edits the
state, parks and resumes a run, crashes the process and recovers a durable run from its
journal, and cancels. When a run ends, the next one starts. Every event carries a unique
``tag`` so it can be followed through queues, worker slots, waiters, retries and collect
buffers. After every step (some checks after every input) the machine checks that:

- no event is delivered twice to a step: a (step, event) pair runs again only as a
  retry, a waiter's resume or after a crash, and never while it is running;
- no event is lost: a routed event stays queued, running, waiting or delayed until the
  step finishes with it, and a collected event stays buffered until one batch takes it;
- an attempt's repeated sends (same index) are dropped, and its new ones are routed;
- worker slots match the running executions, never exceed ``num_workers`` and are
  never idle while work is queued; armed timers match the run's deadlines;
- a waiter wakes only for an event that meets its requirements; each event is
  published at most once;
- the run's timeout counts active time: it stops while parked, and a crashed run keeps
  the time it had used (up to its last committed input);
- a run ends with exactly one ``Finish`` and nothing runs after it;
- a durable run commits every input it applied, in order, and replaying the commits
  into a fresh RunState rebuilds the same state.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from piton._core import inputs as i
from piton._core.graph import Graph, StepNode, build_graph
from piton._core.reducer import reduce, retry_decision
from piton._core.state import (
    PARKED,
    RUN_TIMER,
    RUNNING,
    Attempt,
    Execution,
    RunState,
    WaitTimedOut,
)
from piton.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    WorkflowCancelledEvent,
    WorkflowFailedEvent,
    WorkflowTimedOutEvent,
)
from piton.retry import (
    retry_policy,
    stop_after_attempt,
    wait_fixed,
    wait_random,
)


class Work(Event):
    pass


class Result(Event):
    pass


class Note(Event):
    pass


class Mid(Event):
    pass


class Ask(Event):
    pass


# --- the workflows under test ------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How the fake environment runs a step: ``emit``, ``collect`` or ``wait``."""

    kind: str = "emit"
    batch: int = 0  # collect: events per batch
    waits: int = 0  # wait: wait_for_event calls, one after the other
    sleeps: bool = False  # wait: ctx.sleep() first


@dataclass(frozen=True)
class Case:
    name: str
    graph: Graph
    behaviours: Mapping[str, Behaviour] = field(default_factory=dict)

    def behaviour(self, step: str) -> Behaviour:
        return self.behaviours.get(step, Behaviour())


def _case(name: str, nodes: list[StepNode], behaviours: dict[str, Behaviour]) -> Case:
    return Case(name, build_graph(name, {n.name: n for n in nodes}), behaviours)


FANOUT = _case(
    "fanout",
    [
        StepNode("start", (StartEvent,), (Work, Result), num_workers=1),
        StepNode(
            "worker",
            (Work,),
            (Result,),
            num_workers=2,
            retry_policy=retry_policy(wait=wait_random(0, 2), stop=stop_after_attempt(3)),
        ),
        StepNode("audit", (Work,), (Note,), num_workers=1),  # a second consumer of Work
        StepNode("note", (Note,), (), num_workers=3),
        StepNode(
            "collect",
            (Result,),
            (StopEvent,),
            num_workers=2,
            retry_policy=retry_policy(wait=wait_random(0, 1), stop=stop_after_attempt(6)),
        ),
    ],
    {"collect": Behaviour("collect", batch=2)},
)

CHAIN = _case(
    "chain",
    [
        StepNode("start", (StartEvent,), (Mid,), num_workers=1),
        StepNode(
            "a",
            (Mid,),
            (Result,),
            num_workers=2,
            retry_policy=retry_policy(wait=wait_fixed(0), stop=stop_after_attempt(3)),
        ),
        StepNode(
            "b",
            (Result,),
            (StopEvent, Note),
            num_workers=1,
            retry_policy=retry_policy(wait=wait_fixed(1.5), stop=stop_after_attempt(3)),
        ),
        StepNode("note", (Note,), (), num_workers=1),
    ],
    {"b": Behaviour("wait", sleeps=True)},
)

HUMAN = _case(
    "human",
    [
        StepNode("start", (StartEvent,), (Ask,), num_workers=1),
        StepNode(
            "ask",
            (Ask,),
            (StopEvent, Note),
            num_workers=2,
            retry_policy=retry_policy(wait=wait_fixed(1), stop=stop_after_attempt(2)),
        ),
        StepNode("listener", (HumanResponseEvent,), (Note,), num_workers=1),
        StepNode("note", (Note,), (), num_workers=2),
    ],
    {"ask": Behaviour("wait", waits=2)},
)

FANIN = _case(
    "fanin",
    [
        StepNode("start", (StartEvent,), (Result,), num_workers=1),
        StepNode(
            "collect",
            (Result,),
            (StopEvent,),
            num_workers=2,
            retry_policy=retry_policy(wait=wait_random(0, 1), stop=stop_after_attempt(6)),
        ),
    ],
    {"collect": Behaviour("collect", batch=2)},
)

CASES = {c.name: c for c in (FANOUT, FANIN, CHAIN, HUMAN)}

Pair = tuple[str, str]  # (step, envelope id): one event delivered to one step


def tag_of(ev: Any) -> str:
    tag = ev.get("tag") if isinstance(ev, Event) else None
    assert isinstance(tag, str), f"untagged event {ev!r}"
    return tag


def pair_of(a: Attempt) -> Pair:
    return (a.step, a.envelope.id)


def held_attempts(state: RunState) -> list[Attempt]:
    """Every attempt the run holds: queued, running, waiting or due for a retry."""
    found = [a for q in state.queues.values() for a in q]
    found += [ex.attempt for ex in state.running.values()]
    found += [w.attempt for w in state.waiters.values()]
    found += list(state.delayed.values())
    return found


def replayed(state: RunState, entries: list[i.Input]) -> RunState:
    fresh = RunState(state.run_id, state.graph, durable=True, timeout=state.timeout)
    for inp in entries:
        reduce(fresh, inp)
    return fresh


# --- the environment -----------------------------------------------------------------

RUN_OPTIONS = {
    "case": st.sampled_from(sorted(CASES)),
    "durable": st.booleans(),
    "timeout": st.sampled_from([None, 60.0]),
    "fixed_waiter_ids": st.booleans(),
}


class ReducerMachine(RuleBasedStateMachine):
    """Drives ``reduce`` directly and plays every step, timer, process and caller."""

    case: Case
    state: RunState

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0
        self.serial = 0

    @initialize(**RUN_OPTIONS)
    def first_run(
        self, case: str, durable: bool, timeout: float | None, fixed_waiter_ids: bool
    ) -> None:
        self.start_run(case, durable, timeout, fixed_waiter_ids)

    @precondition(lambda self: self.state.finished)
    @rule(**RUN_OPTIONS)
    def next_run(
        self, case: str, durable: bool, timeout: float | None, fixed_waiter_ids: bool
    ) -> None:
        self.end_run()
        self.start_run(case, durable, timeout, fixed_waiter_ids)

    def start_run(self, case: str, durable: bool, timeout: float | None, fixed: bool) -> None:
        self.case = CASES[case]
        self.state = RunState(
            f"run-{self.serial}", self.case.graph, durable=durable, timeout=timeout
        )
        self.fixed_waiter_ids = fixed
        # what the environment saw
        self.applied: list[i.Input] = []  # inputs that reached a handler
        self.committed: list[i.Input] = []
        self.outstanding: dict[str, Execution] = {}  # RunStep not answered yet
        self.cursor: dict[str, int] = {}  # exec id -> its next send index
        self.armed: dict[str, float] = {}
        self.finishes: list[i.Finish] = []
        self.collected: list[Any] | None = None
        # what the invariants track
        self.scripts: dict[Pair, list[tuple[Any, str | None]]] = {}  # sends delivered
        self.last_outcome: dict[Pair, tuple[str, int]] = {}  # (outcome, retry_number)
        self.consumed: set[Pair] = set()
        self.live: set[Pair] = set()
        self.tag_env: dict[str, str] = {}  # event tag -> the one envelope it may have
        self.fresh: list[tuple[Any, str | None]] = []  # events the next input must route
        self.collect_added: set[str] = set()
        self.batch_of: dict[str, Pair] = {}  # collected tag -> the attempt given it
        self.published: set[str] = set()
        self.requirements: dict[tuple[Pair, str], dict[str, Any]] = {}  # of each wait
        self.apply(i.Begin(self.now, StartEvent(tag=self.new_tag("start"))))
        # the run's clock runs while a process holds the run, stops while it is parked
        self.run_deadline = None if timeout is None else self.now + timeout

    def end_run(self) -> None:
        hypothesis.event(f"{self.case.name}: {self.state.status}")
        if not self.state.finished:
            self.apply(i.Cancel(self.tick()))
        assert len(self.finishes) == 1 and self.state.finished
        self.journal_replays()
        # a finished run ignores everything but state edits, and journals nothing
        self.apply(i.Send(self.tick(), Note(tag=self.new_tag("late"))))
        for exec_id in self.cursor:
            self.apply(i.StepDone(self.tick(), exec_id, StopEvent(tag="late")))
        self.apply(i.ReplaceState(self.tick(), {"late": True}))
        self.apply(i.SetState(self.tick(), "y.z", 1))
        assert self.state.values == {"late": True, "y": {"z": 1}} and not self.state.journal

    def teardown(self) -> None:
        if hasattr(self, "state"):
            self.end_run()

    # -- feeding the reducer ------------------------------------------------------------

    def tick(self, dt: float = 0.25) -> float:
        self.now += dt
        return self.now

    def new_tag(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def apply(self, inp: i.Input) -> list[i.Command]:
        was_finished = self.state.finished
        _, cmds = reduce(self.state, inp)
        if was_finished:
            assert cmds == [], f"a finished run reacted to {inp!r}: {cmds!r}"
        else:
            self.applied.append(inp)
        for n, cmd in enumerate(cmds):
            self.on_command(cmd, first=n == 0)
        self.check_routing()
        self.fresh = []
        return cmds

    def on_command(self, cmd: i.Command, *, first: bool) -> None:
        if isinstance(cmd, i.Commit):
            assert first, "a Commit must come before the commands that reveal its effects"
            self.committed.extend(cmd.entries)
        elif isinstance(cmd, i.RunStep):
            self.on_run_step(cmd.execution)
        elif isinstance(cmd, i.CancelStep):
            assert self.outstanding.pop(cmd.exec_id, None) is not None, cmd
        elif isinstance(cmd, i.ArmTimer):
            self.armed[cmd.timer_id] = cmd.deadline
        elif isinstance(cmd, i.DisarmTimer):
            assert self.armed.pop(cmd.timer_id, None) is not None, f"disarmed unarmed {cmd}"
        elif isinstance(cmd, i.Publish) and isinstance(
            cmd.event, WorkflowFailedEvent | WorkflowTimedOutEvent | WorkflowCancelledEvent
        ):  # a failure's closing event: once, just before the Finish
            assert not self.finishes and "closing" not in self.published, cmd
            self.published.add("closing")
        elif isinstance(cmd, i.Publish):
            tag = tag_of(cmd.event)
            assert tag not in self.published, f"{tag} published twice"
            self.published.add(tag)
        elif isinstance(cmd, i.Collected):
            self.collected = cmd.events
        elif isinstance(cmd, i.Finish):
            self.finishes.append(cmd)
            assert len(self.finishes) == 1, f"second Finish: {self.finishes}"

    def on_run_step(self, ex: Execution) -> None:
        assert not self.finishes, f"RunStep after Finish: {ex.id}"
        pair = pair_of(ex.attempt)
        assert pair not in self.consumed, f"{pair} delivered again after the step finished it"
        assert all(pair_of(o.attempt) != pair for o in self.outstanding.values()), (
            f"{pair} is running twice at once"
        )
        previous = self.last_outcome.get(pair)
        if previous is None:
            assert ex.attempt.retry_number == 0
        else:
            outcome, retry_number = previous
            assert outcome in ("failed", "waits", "crashed"), f"{pair} re-run after {outcome}"
            hypothesis.event(f"re-run after {outcome}")
            expected = retry_number + 1 if outcome == "failed" else retry_number
            assert ex.attempt.retry_number == expected, (pair, outcome, ex.attempt.retry_number)
        self.outstanding[ex.id] = ex
        self.cursor[ex.id] = 0

    def take(self, exec_id: str, outcome: str) -> Execution:
        """The environment answers an execution: it is no longer outstanding."""
        ex = self.outstanding.pop(exec_id)
        pair = pair_of(ex.attempt)
        self.last_outcome[pair] = (outcome, ex.attempt.retry_number)
        if outcome == "done":
            self.consumed.add(pair)
        return ex

    # -- what a step does -------------------------------------------------------------

    def make_event(self, cls: type[Event], data: st.DataObject, prefix: str) -> Event:
        tag = self.new_tag(prefix)
        if cls is StopEvent:
            return StopEvent(result=tag, tag=tag)
        if cls is HumanResponseEvent:
            return HumanResponseEvent(tag=tag, to=data.draw(st.integers(0, 1), label="to"))
        return cls(tag=tag)

    def make_sends(self, ex: Execution, data: st.DataObject) -> i.Sends:
        """The sends of one stretch of an execution; a re-run first repeats earlier ones."""
        script = self.scripts.setdefault(pair_of(ex.attempt), [])
        kinds = [t for t in self.case.graph.steps[ex.attempt.step].returns if t is not StopEvent]
        count = data.draw(st.integers(0, 3 if kinds else 0), label="sends")
        sends: list[tuple[int, Any, str | None]] = []
        for _ in range(count):
            index = self.cursor[ex.id]
            self.cursor[ex.id] = index + 1
            if index < len(script):  # what an earlier run of the attempt sent: a repeat
                hypothesis.event("repeated send")
                ev, target = script[index]
            else:
                ev = self.make_event(data.draw(st.sampled_from(kinds)), data, "s")
                consumers = self.case.graph.consumers(type(ev))
                target = data.draw(st.sampled_from([None, *consumers]), label="target")
                script.append((ev, target))
                self.fresh.append((ev, target))
            sends.append((index, ev, target))
        return tuple(sends)

    def make_result(self, ex: Execution, data: st.DataObject) -> Any:
        returns = self.case.graph.steps[ex.attempt.step].returns
        cls = data.draw(st.sampled_from([None, *returns]), label="result")
        if cls is None:
            return None
        ev = self.make_event(cls, data, "r")
        self.fresh.append((ev, None))
        return ev

    def emit(self, ex: Execution, data: st.DataObject) -> None:
        """Return, perhaps after a checkpoint; or checkpoint and then fail (and retry)."""
        if data.draw(st.integers(0, 2), label="checkpoint first") == 2:
            self.apply(i.Checkpoint(self.tick(), ex.id, self.make_sends(ex, data)))
            if self.case.graph.steps[ex.attempt.step].retry_policy and data.draw(st.booleans()):
                self.take(ex.id, "failed")
                at, error = self.tick(), RuntimeError(f"boom {ex.id}")
                delay = retry_decision(self.state, ex.id, error, at)  # what a live run records
                self.apply(i.StepFailed(at, ex.id, error, delay))
                return
        self.done(ex, data)

    def done(self, ex: Execution, data: st.DataObject, result: Any = None) -> None:
        self.take(ex.id, "done")
        sends = self.make_sends(ex, data)
        if result is None:
            result = self.make_result(ex, data)
        self.apply(i.StepDone(self.tick(), ex.id, result, sends))

    def collect(self, ex: Execution, data: st.DataObject) -> None:
        n = self.case.behaviour(ex.attempt.step).batch
        ev = ex.attempt.envelope.event
        self.collected = None
        self.collect_added.add(tag_of(ev))
        self.apply(i.Collect(self.tick(), ex.id, ev, [type(ev)] * n, f"{ex.attempt.step}:{n}"))
        batch = self.collected
        if batch is not None:
            hypothesis.event("collect: batch" + (" to a retry" if ex.attempt.retry_number else ""))
            assert len(batch) == n
            for got in batch:
                owner = self.batch_of.setdefault(tag_of(got), pair_of(ex.attempt))
                assert owner == pair_of(ex.attempt), f"{tag_of(got)} collected twice"
        if data.draw(st.booleans(), label="collect then fail"):
            self.take(ex.id, "failed")
            self.apply(i.StepFailed(self.tick(), ex.id, RuntimeError(f"boom {ex.id}")))
        elif batch is not None and data.draw(st.integers(0, 3), label="stop") == 3:
            self.done(ex, data, self.make_event(StopEvent, data, "r"))
        else:
            self.take(ex.id, "done")
            self.apply(i.StepDone(self.tick(), ex.id, None, self.make_sends(ex, data)))

    def wait(self, ex: Execution, data: st.DataObject) -> None:
        behaviour = self.case.behaviour(ex.attempt.step)
        sleep_id = f"sleep:0:{ex.attempt.envelope.id}"
        if behaviour.sleeps and sleep_id not in ex.attempt.resolved:
            self.take(ex.id, "waits")
            sends = self.make_sends(ex, data)
            self.apply(i.StepWaits(self.tick(), ex.id, sleep_id, None, {}, None, 2.0, sends))
            return
        for k in range(behaviour.waits):
            waiter_id = f"fixed-{k}" if self.fixed_waiter_ids else f"w{k}:{ex.attempt.envelope.id}"
            resolved = ex.attempt.resolved.get(waiter_id)
            if isinstance(resolved, WaitTimedOut):  # wait_for_event raises in the step
                self.take(ex.id, "failed")
                self.apply(i.StepFailed(self.tick(), ex.id, TimeoutError(waiter_id)))
                return
            if resolved is None:
                self.take(ex.id, "waits")
                sends = self.make_sends(ex, data)
                to = data.draw(st.sampled_from([None, 0, 1]), label="requires")
                requires = {} if to is None else {"to": to}
                self.requirements[(pair_of(ex.attempt), waiter_id)] = requires
                self.apply(
                    i.StepWaits(
                        self.tick(),
                        ex.id,
                        waiter_id,
                        HumanResponseEvent,
                        requires,
                        InputRequiredEvent(tag=self.new_tag("q")),
                        data.draw(st.sampled_from([None, 5.0]), label="wait timeout"),
                        sends,
                    )
                )
                return
            hypothesis.event("waiter resumed with an event")
            assert isinstance(resolved, HumanResponseEvent)
            for name, value in self.requirements[(pair_of(ex.attempt), waiter_id)].items():
                assert resolved.get(name) == value, f"{waiter_id} woken by {resolved!r}"
        self.done(ex, data)

    # -- rules ----------------------------------------------------------------------------

    def pick(self, data: st.DataObject, among: list[str] | None = None) -> Execution:
        ids = sorted(self.outstanding) if among is None else among
        return self.outstanding[data.draw(st.sampled_from(ids), label="execution")]

    # Rules are named so that the busiest sorts first: hypothesis favours early rules.
    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def answer_steps(self, data: st.DataObject) -> None:
        """A few executions return (or collect, or wait), in random order."""
        for _ in range(data.draw(st.integers(1, 4), label="answers")):
            if not self.outstanding:
                return
            ex = self.pick(data)
            kind = self.case.behaviour(ex.attempt.step).kind
            if kind == "collect":
                self.collect(ex, data)
            elif kind == "wait":
                self.wait(ex, data)
            else:
                self.emit(ex, data)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def fail_step(self, data: st.DataObject) -> None:
        """Mostly a failure the step's retry policy takes; now and then a fatal one."""
        fatal = data.draw(st.integers(0, 7), label="fatal") == 7
        steps = self.case.graph.steps
        ids = sorted(
            x for x, ex in self.outstanding.items() if fatal or steps[ex.attempt.step].retry_policy
        )
        if ids:
            ex = self.take(self.pick(data, ids).id, "failed")
            self.apply(i.StepFailed(self.tick(), ex.id, RuntimeError(f"boom {ex.id}"), not fatal))

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def checkpoint(self, data: st.DataObject) -> None:
        ex = self.pick(data)
        self.apply(i.Checkpoint(self.tick(), ex.id, self.make_sends(ex, data)))

    @precondition(lambda self: self.state.status == RUNNING)
    @rule(data=st.data())
    def send_external(self, data: st.DataObject) -> None:
        kinds = sorted({HumanResponseEvent, *self.case.graph.routes}, key=lambda t: t.__name__)
        ev = self.make_event(data.draw(st.sampled_from(kinds)), data, "x")
        target = data.draw(st.sampled_from([None, *self.case.graph.consumers(type(ev))]))
        self.fresh.append((ev, target))
        self.apply(i.Send(self.tick(), ev, target))

    @rule(data=st.data(), dt=st.sampled_from([0.5, 3.0, 30.0]))
    def time_passes(self, data: st.DataObject, dt: float) -> None:
        """The clock moves on, or a due timer fires (the run's own timer only rarely)."""
        ids = sorted(self.armed) if self.state.status == RUNNING else []
        if RUN_TIMER in ids and data.draw(st.integers(0, 9), label="run timeout") != 9:
            ids.remove(RUN_TIMER)
        if not ids or data.draw(st.integers(0, 3), label="just time") == 3:
            self.tick(dt)
            return
        timer_id = data.draw(st.sampled_from(ids), label="timer")
        deadline = self.armed.pop(timer_id)
        self.now = max(self.now, deadline) + data.draw(st.sampled_from([0.0, 0.5]))
        self.apply(i.TimerFired(self.now, timer_id))

    @precondition(lambda self: not self.state.finished)
    @rule(data=st.data())
    def touch_state(self, data: st.DataObject) -> None:
        what = data.draw(st.sampled_from(["set", "replace", "stream"]))
        if what == "set":
            path = data.draw(st.sampled_from(["x", "y.z", "y.w"]))
            self.apply(i.SetState(self.tick(), path, data.draw(st.integers(0, 9))))
        elif what == "replace":
            self.apply(i.ReplaceState(self.tick(), {"x": data.draw(st.integers(0, 9))}))
        else:
            self.apply(i.StreamWrite(self.tick(), Note(tag=self.new_tag("w"))))

    @precondition(lambda self: not self.state.finished)
    @rule(data=st.data())
    def disrupt(self, data: st.DataObject) -> None:
        """Park and resume an idle run, crash and recover a durable one, or cancel."""
        s = self.state
        options = ["cancel"]
        if s.status == RUNNING and s.is_idle():
            options.append("park")
        if s.durable and not s.finished:
            options.append("crash")
        what = data.draw(st.sampled_from(options), label="disruption")
        if what == "park":
            hypothesis.event("parked")
            parked_at = self.tick()
            self.apply(i.Park(parked_at))
            self.armed.clear()  # the process lets go of the run, and of its timers
            self.tick(data.draw(st.sampled_from([1.0, 100.0])))
            if self.run_deadline is not None:
                self.run_deadline = self.now + max(self.run_deadline - parked_at, 0.0)
            self.apply(i.Begin(self.now))
        elif what == "crash":  # another process replays the journal and resumes the run
            hypothesis.event("crashed and recovered")
            for exec_id in list(self.outstanding):
                self.take(exec_id, "crashed")
            self.armed.clear()
            self.state = replayed(self.state, self.committed)
            self.applied = list(self.committed)
            self.tick(data.draw(st.sampled_from([0.5, 20.0]), label="down for"))
            if self.run_deadline is not None:  # the clock ran until the last committed input
                used_until = self.committed[-1].at
                self.run_deadline = self.now + max(self.run_deadline - used_until, 0.0)
            self.apply(i.Begin(self.now))
        elif data.draw(st.integers(0, 2), label="cancel") == 2:
            self.apply(i.Cancel(self.tick()))

    # -- invariants -------------------------------------------------------------------------

    def check_routing(self) -> None:
        """Each envelope holds one tagged event; each new event reached all its steps."""
        held: dict[str, set[str]] = {}
        for a in held_attempts(self.state):
            tag = tag_of(a.envelope.event)
            first = self.tag_env.setdefault(tag, a.envelope.id)
            assert first == a.envelope.id, f"{tag} was delivered twice ({first}, {a.envelope.id})"
            held.setdefault(tag, set()).add(a.step)
            for value in a.resolved.values():
                if isinstance(value, Event):
                    held.setdefault(tag_of(value), set()).add(a.step)
        if self.state.finished:
            return
        for ev, target in self.fresh:
            wanted = {target} if target else set(self.case.graph.consumers(type(ev)))
            missing = wanted - held.get(tag_of(ev), set())
            assert not missing, f"{tag_of(ev)} was never delivered to {sorted(missing)}"

    @invariant()
    def no_event_lost_or_doubled(self) -> None:
        if self.state.finished:
            return
        pairs = Counter(pair_of(a) for a in held_attempts(self.state))
        doubled = [p for p, n in pairs.items() if n > 1]
        assert not doubled, f"held twice: {doubled}"
        self.live |= set(pairs)
        lost = self.live - self.consumed - set(pairs)
        assert not lost, f"events lost: {sorted(lost)}"

    @invariant()
    def collected_events_kept_once(self) -> None:
        if self.state.finished:
            return
        buffers = self.state.buffers.values()
        pending = [tag_of(ev) for b in buffers for q in b.pending.values() for _, ev in q]
        assert len(pending) == len(set(pending)), f"buffered twice: {pending}"
        again = set(pending) & set(self.batch_of)
        assert not again, f"collected events back in a buffer: {again}"
        lost = self.collect_added - set(pending) - set(self.batch_of)
        assert not lost, f"collected events lost: {lost}"

    @invariant()
    def worker_slots(self) -> None:
        s = self.state
        if s.finished:
            assert not self.outstanding and not s.running and not any(s.busy.values())
            return
        assert set(s.running) == set(self.outstanding)
        for name, node in s.graph.steps.items():
            running = sum(1 for ex in s.running.values() if ex.attempt.step == name)
            assert s.busy.get(name, 0) == running <= node.num_workers, (name, s.busy, running)
            if s.queues.get(name):
                assert running == node.num_workers, f"{name} has work queued and a free slot"

    @invariant()
    def timers_match_deadlines(self) -> None:
        s = self.state
        if s.finished:
            assert not self.armed and not s.deadlines
            return
        if s.status == PARKED:
            return
        assert self.armed == s.deadlines
        assert set(s.delayed) <= set(s.deadlines)
        assert (RUN_TIMER in s.deadlines) == (s.timeout is not None)
        if self.run_deadline is not None:
            assert s.deadlines[RUN_TIMER] == pytest.approx(self.run_deadline)

    @invariant()
    def one_finish(self) -> None:
        assert len(self.finishes) == (1 if self.state.finished else 0)
        if self.finishes:
            assert self.finishes[0].status == self.state.status

    @invariant()
    def journal_replays(self) -> None:
        s = self.state
        if not s.durable:
            assert not self.committed and not s.journal
            return
        assert self.committed + s.journal == self.applied
        if s.journal:
            return  # compare at commit points only
        fresh = replayed(s, self.committed)
        if not s.finished:  # after the end, state edits are not journaled
            assert fresh.values == s.values, "replay differs in values"
        for name in ("status", "queues", "running", "busy", "waiters", "delayed"):
            assert getattr(fresh, name) == getattr(s, name), f"replay differs in {name}"
        for name in ("deadlines", "buffers", "delivered", "counter", "result"):
            assert getattr(fresh, name) == getattr(s, name), f"replay differs in {name}"
        assert repr(fresh.error) == repr(s.error)  # the reducer makes its own errors anew


# Deterministic by default (the same 200 interleavings every run, about 5 s). For a
# longer random search: PITON_PROPERTY_EXAMPLES=5000 pytest tests/core/test_reducer_properties.py
_EXPLORE = int(os.environ.get("PITON_PROPERTY_EXAMPLES", "0"))
MACHINE_SETTINGS = settings(
    max_examples=_EXPLORE or 200,
    stateful_step_count=80,
    deadline=None,
    derandomize=not _EXPLORE,
    database=None if not _EXPLORE else settings.default.database,
    report_multiple_bugs=False,
)


@pytest.mark.timeout(900)  # passing takes seconds; shrinking a failure can take minutes
def test_random_interleavings_keep_the_invariants() -> None:
    run_state_machine_as_test(ReducerMachine, settings=MACHINE_SETTINGS)


# --- regressions: bugs the machine found -----------------------------------------------


def _fail(state: RunState, at: float, exec_id: str, error: BaseException) -> Any:
    """Feed a step failure as a live run does: with the retry decision it recorded."""
    return reduce(
        state, i.StepFailed(at, exec_id, error, retry_decision(state, exec_id, error, at))
    )


def _start(state: RunState) -> list[Execution]:
    _, cmds = reduce(state, i.Begin(0.0, StartEvent()))
    return [c.execution for c in cmds if isinstance(c, i.RunStep)]


def _runs(cmds: list[i.Command]) -> dict[str, Execution]:
    return {c.execution.attempt.step: c.execution for c in cmds if isinstance(c, i.RunStep)}


def _routed(state: RunState, step: str) -> list[Any]:
    return [a.envelope.event for a in held_attempts(state) if a.step == step]


def test_two_steps_consuming_one_event_count_their_sends_apart() -> None:
    """``worker`` and ``audit`` both take the same Work; their send indexes are their own."""
    state = RunState("r", FANOUT.graph)
    (start,) = _start(state)
    _, cmds = reduce(state, i.StepDone(1.0, start.id, Work()))
    worker, audit = _runs(cmds)["worker"], _runs(cmds)["audit"]
    reduce(state, i.Checkpoint(2.0, worker.id, ((0, Result(n=1), None),)))
    _, cmds = _fail(state, 3.0, worker.id, RuntimeError("flaky"))
    (retry,) = [c.timer_id for c in cmds if isinstance(c, i.ArmTimer)]
    # audit's first send is index 0 too: it must still be routed
    reduce(state, i.StepDone(4.0, audit.id, None, ((0, Note(n=1), None),)))
    assert _routed(state, "note") == [Note(n=1)]
    # and audit finishing must not make the worker's retry deliver its send again
    _, cmds = reduce(state, i.TimerFired(10.0, retry))
    worker = _runs(cmds)["worker"]
    reduce(state, i.StepDone(11.0, worker.id, None, ((0, Result(n=1), None),)))
    assert _routed(state, "collect") == [Result(n=1)]


def test_concurrent_attempts_with_a_fixed_waiter_id_both_wait() -> None:
    """Two ``ask`` attempts wait under one user-given waiter_id: neither is dropped."""
    state = RunState("r", HUMAN.graph)
    (start,) = _start(state)
    _, cmds = reduce(state, i.StepDone(1.0, start.id, Ask(n=2), ((0, Ask(n=1), None),)))
    asks = [c.execution for c in cmds if isinstance(c, i.RunStep)]
    assert len(asks) == 2
    for n, ex in enumerate(asks):
        reduce(state, i.StepWaits(2.0 + n, ex.id, "answer", HumanResponseEvent))
    assert len(state.waiters) == 2
    _, cmds = reduce(state, i.Send(5.0, HumanResponseEvent(text="yes")))
    woken = [c.execution.attempt.envelope.event for c in cmds if isinstance(c, i.RunStep)]
    assert sorted(ev.n for ev in woken if isinstance(ev, Ask)) == [1, 2]


def test_a_collect_retry_does_not_add_its_event_again_after_the_batch_is_taken() -> None:
    """An attempt fails after buffering its event; another attempt takes the batch and
    finishes; the retry's collect must not put the event into a second batch."""
    graph = build_graph(
        "fan-in",
        {
            "start": StepNode("start", (StartEvent,), (Result,)),
            "collect": StepNode(
                "collect",
                (Result,),
                (StopEvent,),
                num_workers=2,
                retry_policy=retry_policy(wait=wait_fixed(1), stop=stop_after_attempt(3)),
            ),
        },
    )
    state = RunState("r", graph)
    (start,) = _start(state)
    sends = ((0, Result(n=1), None), (1, Result(n=2), None))
    _, cmds = reduce(state, i.StepDone(1.0, start.id, None, sends))
    first, second = [c.execution for c in cmds if isinstance(c, i.RunStep)]
    expected = [Result, Result]
    _, cmds = reduce(state, i.Collect(2.0, first.id, Result(n=1), expected, "b"))
    assert cmds == [i.Collected(None)]
    _, cmds = _fail(state, 3.0, first.id, RuntimeError("after collect"))
    (timer,) = [c for c in cmds if isinstance(c, i.ArmTimer)]
    _, cmds = reduce(state, i.Collect(4.0, second.id, Result(n=2), expected, "b"))
    assert cmds == [i.Collected([Result(n=1), Result(n=2)])]
    reduce(state, i.StepDone(5.0, second.id, None))
    _, cmds = reduce(state, i.TimerFired(timer.deadline, timer.timer_id))
    retry = _runs(cmds)["collect"]
    assert retry.attempt.retry_number == 1
    _, cmds = reduce(state, i.Collect(6.0, retry.id, Result(n=1), expected, "b"))
    assert cmds == [i.Collected(None)]
    assert not any(q for b in state.buffers.values() for q in b.pending.values())
    reduce(state, i.StepDone(7.0, retry.id, None))
    assert state.buffers == {}


def test_a_recovered_run_keeps_the_active_time_it_had_used() -> None:
    """A run that crashed after 50 of its 60 s, recovered from its journal, has 10 s left
    (the time it was down does not count); before, each recovery granted a fresh 60 s."""
    state = RunState("r", CHAIN.graph, durable=True, timeout=60.0)
    journal: list[i.Input] = []

    def feed(run: RunState, inp: i.Input) -> list[i.Command]:
        cmds = reduce(run, inp)[1]
        journal.extend(e for c in cmds if isinstance(c, i.Commit) for e in c.entries)
        return cmds

    (start,) = _runs(feed(state, i.Begin(0.0, StartEvent()))).values()
    feed(state, i.StepDone(50.0, start.id, Mid()))
    recovered = replayed(state, journal)  # the process died at about t=50
    cmds = feed(recovered, i.Begin(500.0))
    assert i.ArmTimer(RUN_TIMER, 510.0) in cmds
    feed(recovered, i.Park(505.0))  # parking stops the clock: 5 s left
    cmds = feed(recovered, i.Begin(1_000.0))
    assert i.ArmTimer(RUN_TIMER, 1_005.0) in cmds


def test_a_snapshot_keeps_the_run_clock_going_for_the_journal_tail() -> None:
    """Rebuilt from a mid-run snapshot plus the entries after it, a run has used the same
    active time as one rebuilt from its whole journal."""
    from piton._run_codec import decode_run, encode_run
    from piton.serde import JsonSerializer

    state = RunState("r", CHAIN.graph, durable=True, timeout=60.0)
    (start,) = _runs(reduce(state, i.Begin(0.0, StartEvent()))[1]).values()
    (a,) = _runs(reduce(state, i.StepDone(20.0, start.id, Mid()))[1]).values()
    ser = JsonSerializer()
    snapshot = encode_run(state, ser, keep_running=True)
    tail = i.Checkpoint(45.0, a.id)
    reduce(state, tail)
    restored = decode_run(snapshot, CHAIN.graph, ser)
    reduce(restored, tail)
    assert restored.active_elapsed == state.active_elapsed == 45.0
