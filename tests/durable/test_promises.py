"""The durability promises (DESIGN.md section 2), one user-level test per situation the
issue "Durable runs keep every promise: nothing lost, nothing stuck" reports.

Each situation runs as real processes (tests/durable/model/promise_child.py) on SQLite,
PostgreSQL and Redis, each test in a store of its own; processes are SIGKILLed where the
situation has them. Every wait is bounded, so a run that hangs fails its test.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model import flows
from model.children import Child
from model.files import read_lines
from model.fixtures import fresh_store, made_stores  # noqa: F401 - a fixture
from model.targets import KINDS, query

pytestmark = pytest.mark.slow


@pytest.fixture(params=KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_store(request.param, request, tmp_path)


class Processes:
    """Spawns the situation's processes; kills any left at the end of the test."""

    def __init__(self, url: str, effects: Path) -> None:
        self.url, self.effects = url, effects
        self.all: list[Child] = []

    def spawn(self, mode: str, flow: str, run_id: str, block: str = "", **opts: Any) -> Child:
        env = {"PITON_MODEL_EFFECTS": str(self.effects), "PITON_MODEL_BLOCK": block}
        child = Child({"mode": mode, "flow": flow, "url": self.url, "run_id": run_id, **opts}, env)
        self.all.append(child)
        return child

    def wait_for_line(self, line: str, child: Child, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while line not in read_lines(self.effects):
            if child.proc.poll() is not None:
                raise AssertionError(f"the process exited before {line!r}{child.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} within {timeout} s{child.stderr()}")
            time.sleep(0.01)


@pytest.fixture
def procs(store_url: str, tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(store_url, tmp_path / "effects.txt")
    yield processes
    for child in processes.all:
        child.close()


def _stream_types(stream: list[str]) -> list[str]:
    """The class names of a run's stored stream events."""
    names = []
    for text in stream:
        try:
            names.append(str(json.loads(text).get("type", "")).rsplit(".", 1)[-1])
        except (ValueError, AttributeError):
            names.append(text)
    return names


def _load(url: str, run_id: str) -> Any:
    return query(url, lambda store: store.load(run_id))


# -- 1. the seed's document loop --------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("durability", ["fast", "strict"])
def test_doc_loop_killed_at_the_sixth_document_never_converts_the_first_five_again(
    procs: Processes, durability: str
) -> None:
    first = procs.spawn("run", "DocLoop", "docs", block="doc-6", durability=durability)
    procs.wait_for_line("convert:6", first)
    first.kill()

    second = procs.spawn("run", "DocLoop", "docs", durability=durability, timeout=30)
    assert second.record("result", 60) == {"result": list(range(1, flows.DOCS + 1))}
    counts = Counter(read_lines(procs.effects))
    again = {line: n for line, n in counts.items() if n > 1 and line != "convert:6"}
    assert not again, f"documents converted again after resuming ({durability}): {again}"
    assert 1 <= counts["convert:6"] <= 2, counts
    assert all(counts[f"convert:{d}"] == 1 for d in range(7, flows.DOCS + 1)), counts


# -- 2. a human's answer is never lost -----------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("asker_exit", "sender_exit", "trials"),
    [("clean", "clean", 5), ("sigkill", "clean", 3), ("clean", "sigkill", 3)],
)
def test_answer_sent_from_a_process_that_exits_reaches_the_run(
    procs: Processes, asker_exit: str, sender_exit: str, trials: int
) -> None:
    """A asks and exits; B sends the answer and exits 0.5 s later (or is SIGKILLed the
    moment ``await send_event`` returned); C gets the result."""
    for trial in range(trials):
        run_id, answer = f"ask-{trial}", f"ada-{trial}"
        a = procs.spawn("ask", "AskFlow", run_id, kill=asker_exit == "sigkill")
        assert a.record("asked", 30) == {"asked": "name?"}
        a.wait(30)
        b = procs.spawn(
            "send",
            "AskFlow",
            run_id,
            event="Answer",
            text=answer,
            linger=0.5,
            kill_after_send=sender_exit == "sigkill",
        )
        assert b.record("sent", 30) == {"sent": answer}
        b.wait(30)
        c = procs.spawn("run", "AskFlow", run_id, timeout=10)
        got = _outcome(c)
        assert got == {"result": f"answer: {answer}"}, (
            f"trial {trial + 1}/{trials} (A exits {asker_exit}, B {sender_exit}): the answer B sent before "
            f"exiting never reached the run: C got {got}; stored: {_record(procs.url, run_id)}"
        )


def _outcome(child: Child, timeout: float = 60) -> dict[str, Any]:
    """A process's report on the run's end: its result, error or timeout."""
    return child.record_any(("result", "error", "timeout"), timeout)


def _record(url: str, run_id: str) -> Any:
    return query(url, lambda store: store.get(run_id))


@pytest.mark.timeout(180)
def test_answer_sent_right_after_attaching_to_a_parked_run_reaches_it(procs: Processes) -> None:
    """A's run parks at its waiter while A still listens; A is SIGKILLed; B attaches and
    sends the answer at once, then awaits the result (found by the model checker, seed 2)."""
    for trial, delay in enumerate([0.0, 0.01, 0.02, 0.04, 0.08, 0.15]):
        run_id, answer = f"parked-{trial}", f"cy-{trial}"
        a = procs.spawn("ask", "AskFlow", run_id, kill_when_parked=True)
        assert a.record("asked", 30) == {"asked": "name?"}
        a.wait(30)
        b = procs.spawn(
            "send", "AskFlow", run_id, event="Answer", text=answer, send_after=delay,
            result_within=10,
        )  # fmt: skip
        got = _outcome(b)
        assert got == {"result": f"answer: {answer}"}, (
            f"sent {delay} s after attaching, the answer was lost: {got}; "
            f"stored: {_record(procs.url, run_id)}"
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memory", *KINDS])
async def test_event_sent_while_the_step_works_reaches_its_later_waiter(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """llama-index-workflows keeps an event sent before the waiter exists; so must piton."""
    url = fresh_store(kind, request, tmp_path)
    w = flows.WorkThenWait() if kind == "memory" else flows.WorkThenWait(store=url)
    handler = w.run(run_id="work-then-wait") if kind != "memory" else w.run()
    await asyncio.sleep(0.05)  # the step is sleeping: no waiter yet
    await handler.send_event(flows.Answer(text="early"))
    try:
        result = await asyncio.wait_for(handler, 10)
    except TimeoutError as exc:  # the waiter's own timeout (5 s) or ours
        raise AssertionError(f"{kind}: the event sent during the work was dropped") from exc
    assert result == "answer: early"


@pytest.mark.timeout(120)
def test_event_no_one_takes_is_kept_for_a_later_waiter(procs: Processes) -> None:
    """A Note sent to a parked run that only waits for an Answer is handed to the later
    waiter for Notes, after its sender's process is gone."""
    a = procs.spawn("ask", "KeepFlow", "keep")
    assert a.record("asked", 30) == {"asked": "go?"}
    a.wait(30)
    b = procs.spawn("send", "KeepFlow", "keep", event="Note", text="kept", linger=0.5)
    assert b.record("sent", 30) == {"sent": "kept"}
    b.wait(30)
    c = procs.spawn("send", "KeepFlow", "keep", event="Answer", text="go", result_within=15)
    got = _outcome(c)
    assert got == {"result": "note: kept"}, (
        f"the Note sent while no waiter took it was not kept for the later waiter: {got}; "
        f"stored: {_record(procs.url, 'keep')}"
    )


# -- 3. a run never hangs after a retry back-off ----------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("resumer", ["run", "worker"])
@pytest.mark.parametrize("leave", ["sigkill", "clean"])
def test_run_left_during_a_retry_back_off_finishes_when_resumed(
    procs: Processes, leave: str, resumer: str
) -> None:
    """The step's exception has a keyword-only constructor argument; the process leaves
    during the 1 s back-off; another process (or a Worker) must finish the run."""
    first = procs.spawn(
        "run", "RetryFlow", "retry", leave_after="attempt-0" if leave == "clean" else ""
    )
    procs.wait_for_line("attempt-0", first)
    time.sleep(0.3)  # the failure is committed; the back-off runs
    if leave == "sigkill":
        first.kill()
    else:
        first.wait(30)
    assert "attempt-1" not in read_lines(procs.effects), "the back-off was not 1 s"

    second = procs.spawn(resumer, "RetryFlow", "retry", timeout=20)
    got = _outcome(second)
    assert got == {"result": "ok after 1 retry"}, (
        f"after leaving ({leave}) during the back-off, {resumer} did not finish the run: "
        f"{got}; stored: {_record(procs.url, 'retry')}"
    )
    counts = Counter(read_lines(procs.effects))
    assert counts["attempt-1"] == 1 and counts["attempt-0"] <= 2, counts


# -- 4. leaving is clean (promise 12) --------------------------------------------------------------

LEASE = 30.0  # waiting for a lease this long to expire clearly fails the test


@pytest.mark.timeout(120)
@pytest.mark.parametrize("leave", ["loop-ends", "sigterm"])
def test_process_that_leaves_hands_back_its_runs_at_once(procs: Processes, leave: str) -> None:
    """The first process pretends to live on another host, so only a released lease (not
    its death) lets another process take the run before the 30 s lease expires."""
    first = procs.spawn(
        "run",
        "SlowFlow",
        "leave",
        block="slow",
        lease=LEASE,
        host="elsewhere.invalid",
        leave_after="slow:start" if leave == "loop-ends" else "",
        linger_after_loop=120,
    )
    procs.wait_for_line("slow:start", first)
    if leave == "sigterm":
        time.sleep(0.2)
        first.signal(signal.SIGTERM)
        first.wait(20)
    else:
        assert first.record("loop_ended", 20) == {"loop_ended": True}
    started = time.monotonic()
    second = procs.spawn("run", "SlowFlow", "leave", lease=LEASE, timeout=LEASE - 5)
    got = _outcome(second, timeout=LEASE + 20)
    took = time.monotonic() - started
    assert got == {"result": "slow done"} and took < 10, (
        f"after the first process left ({leave}), another took {took:.1f} s to finish the run "
        f"({got}); a lease of {LEASE:.0f} s was not handed back: {_record(procs.url, 'leave')}"
    )


# -- 5. no fact leaves a run before it is durable (promise 9) ----------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("durability", ["fast", "strict"])
@pytest.mark.parametrize("fact", ["Ask", "StopEvent", "WorkflowFailedEvent"])
def test_what_a_listener_sees_is_already_in_the_store(
    procs: Processes, fact: str, durability: str
) -> None:
    """The listener SIGKILLs its own process the moment it sees the fact; the store, read
    afterwards by another process, must already hold it."""
    flow = {"Ask": "AskFlow", "StopEvent": "QuickFlow", "WorkflowFailedEvent": "FailFlow"}[fact]
    for trial in range(3):
        run_id = f"seen-{trial}"
        child = procs.spawn("listen-kill", flow, run_id, targets=[fact], durability=durability)
        assert child.record("saw", 30) == {"saw": fact}
        child.wait(30)
        loaded = _load(procs.url, run_id)
        stored = _stream_types(loaded.stream)
        where = f"trial {trial + 1} ({durability}): stored stream {stored}, record {loaded.record}"
        assert fact in stored, f"a listener saw {fact} before it was durable; {where}"
        if fact == "StopEvent":
            assert loaded.record.status == "completed" and loaded.record.result, where
        if fact == "WorkflowFailedEvent":
            assert loaded.record.status == "failed" and loaded.record.error, where
        if fact == "Ask":  # the run is durably waiting: an answer from elsewhere finishes it
            answer = procs.spawn("send", flow, run_id, event="Answer", text="bo", result_within=15)
            assert _outcome(answer) == {"result": "answer: bo"}, where
