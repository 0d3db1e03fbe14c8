"""The durability promises 9-12 at the engine's level, on the memory store and in memory.

Promise 9: facts reach listeners only once durable; ``ctx.checkpoint()`` returns once its
commit is. Promise 10: an event nothing takes is kept for a later waiter. Promise 11:
replay never calls user code (retry decisions are journal entries). The user-level
versions with real processes and SIGKILL are in test_promises.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from piton import (
    Context,
    Event,
    EventNotAccepted,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    TooManyPendingEvents,
    Workflow,
    WorkflowRuntimeError,
    retry_policy,
    step,
)
from piton._core.state import MAX_PENDING_EVENTS
from piton.retry import retry_if_exception_type, stop_after_attempt, wait_fixed
from piton.stores.base import Store
from piton.stores.memory import MemoryStore


class Ask(InputRequiredEvent):
    question: str = "?"


class Answer(Event):
    text: str


class Stray(Event):
    n: int


class Wait(Workflow):
    """Works a little, then waits for an Answer: an Answer sent during the work must count."""

    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await asyncio.sleep(ev.get("work", 0.0))
        answer = await ctx.wait_for_event(Answer, waiter_event=Ask(question="name?"))
        return StopEvent(result=answer.text)


async def test_an_event_sent_during_the_work_before_a_wait_is_kept_for_it() -> None:
    handler = Wait(timeout=5).run(work=0.2)
    await asyncio.sleep(0.05)
    handler.send_event(Answer(text="early"))
    assert await asyncio.wait_for(handler, 3) == "early"


async def test_kept_events_show_in_the_context_and_to_dict() -> None:
    class Slow(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await asyncio.sleep(0.3)
            answer = await ctx.wait_for_event(Answer)
            return StopEvent(result=answer.text)

    handler = Slow(timeout=5).run()
    await asyncio.sleep(0.05)
    handler.send_event(Answer(text="kept"))
    await asyncio.sleep(0.05)
    kept = handler.ctx.kept_events()
    assert [type(e) for e in kept] == [Answer] and kept[0].text == "kept"
    data = handler.ctx.to_dict()
    assert "kept" in data and "kept" in json.loads(data["kept"])[0]["event"]["data"]["text"]
    assert await asyncio.wait_for(handler, 3) == "kept"
    assert handler.ctx.kept_events() == []


async def test_a_kept_answer_is_not_asked_for_again() -> None:
    """A waiter whose event came first resolves at once: nobody is asked (no Ask shown)."""
    handler = Wait(timeout=5).run(work=0.2)
    handler.send_event(Answer(text="first"))
    seen = [ev async for ev in handler.stream_events()]
    assert await handler == "first"
    assert not any(isinstance(ev, Ask) for ev in seen)


async def test_past_the_bound_the_sender_gets_a_clear_error() -> None:
    class Hold(Workflow):
        @step
        async def hold(self, ev: StartEvent, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(Answer, requirements={"text": "go"})
            return StopEvent(result=answer.text)

    handler = Hold(timeout=10).run()
    await asyncio.sleep(0.05)
    for n in range(MAX_PENDING_EVENTS):
        handler.send_event(Answer(text=f"not yet {n}"))  # no waiter matches: kept
    with pytest.raises(TooManyPendingEvents, match=str(MAX_PENDING_EVENTS)):
        handler.send_event(Answer(text="one too many"))
    handler.send_event(Answer(text="go"))  # what a waiter takes is never refused
    assert await asyncio.wait_for(handler, 5) == "go"
    assert len(handler.ctx.kept_events()) == MAX_PENDING_EVENTS


async def test_an_event_type_the_workflow_does_not_know_is_refused() -> None:
    handler = Wait(timeout=5).run()
    await asyncio.sleep(0.05)
    with pytest.raises(EventNotAccepted, match="Stray"):
        handler.send_event(Stray(n=1))
    handler.send_event(Answer(text="known"))  # named in the step's wait_for_event()
    assert await asyncio.wait_for(handler, 3) == "known"


async def test_a_workflow_whose_waits_piton_cannot_read_accepts_every_event() -> None:
    async def ask_somebody(ctx: Context, kind: type[Event]) -> Any:
        return await ctx.wait_for_event(kind)

    class Indirect(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            answer = await ask_somebody(ctx, Stray)  # ctx leaves the step: cannot be read
            return StopEvent(result=answer.n)

    handler = Indirect(timeout=5).run()
    await asyncio.sleep(0.05)
    handler.send_event(Stray(n=5))
    assert await asyncio.wait_for(handler, 3) == 5


# --- durable: output commit, checkpoint, kept events ---------------------------------------


class Slowed(MemoryStore):
    """A memory store whose commits take a while, so 'before the commit' is observable."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.committed: list[Any] = []

    async def commit(self, request: Any) -> None:
        await asyncio.sleep(self.delay)
        await super().commit(request)
        self.committed.append(request)

    async def create(
        self, record: Any, entries: list[str], stream: list[str], *, snapshot: str | None = None
    ) -> bool:
        await asyncio.sleep(self.delay)
        return await super().create(record, entries, stream, snapshot=snapshot)


async def _stored_stream(store: Store, run_id: str) -> list[str]:
    return (await store.load(run_id)).stream


@pytest.mark.parametrize("durability", ["fast", "strict"])
async def test_a_listener_sees_the_ask_only_once_its_waiter_is_durable(durability: str) -> None:
    store = Slowed(0.05)
    handler = Wait(store=store, durability=durability).run(run_id="r1")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            # at this moment the store must already hold the waiter and the Ask
            stored = await _stored_stream(store, "r1")
            assert any("Ask" in text for text in stored), stored
            break
    record = await store.get("r1")
    assert record is not None and record.waiters >= 1
    handler.send_event(Answer(text="ok"))
    assert await asyncio.wait_for(handler, 5) == "ok"


@pytest.mark.parametrize("durability", ["fast", "strict"])
async def test_the_result_reaches_the_caller_only_once_it_is_durable(durability: str) -> None:
    store = Slowed(0.05)

    class Quick(Workflow):
        @step
        async def go(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result="done")

    result = await Quick(store=store, durability=durability).run(run_id="q")
    record = await store.get("q")
    assert result == "done" and record is not None and record.status == "completed"


@pytest.mark.parametrize("durability", ["fast", "strict"])
async def test_checkpoint_returns_once_its_commit_is_durable(durability: str) -> None:
    store = Slowed(0.05)
    seen: list[list[int]] = []

    class Docs(Workflow):
        @step
        async def convert(self, ev: StartEvent, ctx: Context) -> StopEvent:
            done = await ctx.store.get("converted_ids", default=[])
            for doc_id in ev.ids:
                if doc_id in done:
                    continue
                done.append(doc_id)
                await ctx.store.set("converted_ids", done)
                await ctx.checkpoint()
                # durable now: a fresh read of the store shows this document
                loaded = await store.load("docs")
                entries = [json.loads(text) for _, text in loaded.entries]
                sets = [e for e in entries if e["k"] == "SetState"]
                seen.append(sets[-1]["value"] if sets else [])
            return StopEvent(result=done)

    result = await Docs(store=store, durability=durability).run(run_id="docs", ids=[1, 2, 3])
    assert result == [1, 2, 3]
    assert seen == [[1], [1, 2], [1, 2, 3]]


async def test_an_event_sent_to_a_parked_run_is_kept_durably_for_a_later_waiter() -> None:
    """Stray comes to a parked run that waits for something else: it is kept, in the
    store, and given to the wait that asks for it later."""

    class Two(Workflow):
        @step
        async def first(self, ev: StartEvent, ctx: Context) -> StopEvent:
            a = await ctx.wait_for_event(Answer, waiter_id="a")
            s = await ctx.wait_for_event(Stray, waiter_id="s")
            return StopEvent(result=f"{a.text}/{s.n}")

    store = MemoryStore()
    w = Two(store=store)
    handler = w.run(run_id="two")
    await _until_status(store, "two", "parked")
    handler.cancel()  # the caller goes away; the run stays parked
    late = w.run(run_id="two")
    await late.send_event(Stray(n=7))  # nothing waits for a Stray yet
    await asyncio.sleep(0.2)
    await late.send_event(Answer(text="hi"))
    assert await asyncio.wait_for(late, 5) == "hi/7"


async def _until_status(store: Store, run_id: str, status: str) -> None:
    for _ in range(200):
        record = await store.get(run_id)
        if record is not None and record.status == status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never became {status}")


# --- replay never calls user code -----------------------------------------------------------


class Coded(Exception):
    def __init__(self, msg: str, *, code: int) -> None:
        super().__init__(msg)
        self.code = code


POLICY_CALLS: list[int] = []


class _Counting(retry_if_exception_type):
    def __call__(self, error: BaseException) -> bool:
        POLICY_CALLS.append(1)
        return super().__call__(error)


async def test_replay_applies_recorded_retry_decisions_and_never_calls_the_policy() -> None:
    attempts: list[int] = []

    class Flaky(Workflow):
        @step(
            retry_policy=retry_policy(
                retry=_Counting((Coded,)), wait=wait_fixed(0.5), stop=stop_after_attempt(3)
            )
        )
        async def go(self, ev: StartEvent, ctx: Context) -> StopEvent:
            attempts.append(ctx.retry_info().retry_number)
            if len(attempts) == 1:
                raise Coded("first", code=3)
            return StopEvent(result="ok")

    store = MemoryStore()
    w = Flaky(store=store)
    handler = w.run(run_id="f")
    await _until_status(store, "f", "parked")  # parked during the back-off
    handler.cancel()
    calls = len(POLICY_CALLS)
    assert calls == 1
    # a new attach rebuilds the run from its journal: the policy is not asked again
    assert await asyncio.wait_for(w.run(run_id="f"), 5) == "ok"
    assert len(POLICY_CALLS) == calls
    assert attempts == [0, 1]


async def test_a_run_with_nothing_left_to_wake_it_fails_instead_of_parking_forever() -> None:
    class Idle(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Stray | None:
            ctx.send_event(Stray(n=1))
            return None

        @step
        async def stray(self, ev: Stray) -> StopEvent | None:
            return None

    store = MemoryStore()
    with pytest.raises(WorkflowRuntimeError, match="nothing left to do"):
        await asyncio.wait_for(Idle(store=store).run(run_id="idle"), 5)
    record = await store.get("idle")
    assert record is not None and record.status == "failed"


# --- where a run stands -----------------------------------------------------------------------


async def test_the_handler_tells_that_a_run_parked_and_what_it_waits_for() -> None:
    store = MemoryStore()
    handler = Wait(store=store).run(run_id="w1")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            break
    await _until_status(store, "w1", "parked")
    for _ in range(100):
        if handler.status == "parked":
            break
        await asyncio.sleep(0.01)
    assert handler.status == "parked"
    (waiting,) = handler.waiting_for
    assert waiting.step == "ask" and waiting.event_type == "Answer" and waiting.deadline
    handler.send_event(Answer(text="x"))
    assert await asyncio.wait_for(handler, 5) == "x"
    assert handler.status == "completed" and handler.waiting_for == []


async def test_in_memory_status_and_waiting_for() -> None:
    handler = Wait(timeout=5).run()
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            break
    assert handler.status == "running"
    assert [w.event_type for w in handler.waiting_for] == ["Answer"]
    handler.send_event(Answer(text="y"))
    assert await handler == "y" and handler.status == "completed"


async def test_get_run_reads_a_durable_run_without_resuming_it() -> None:
    store = MemoryStore()
    w = Wait(store=store)
    handler = w.run(run_id="g1")
    await _until_status(store, "g1", "parked")
    handler.cancel()
    calls_before = len(POLICY_CALLS)
    view = await Wait(store=store).get_run("g1")
    assert view.status == "parked" and not view.finished
    assert [x.event_type for x in view.waiting] == ["Answer"] and view.owner is None
    assert view.seq >= 2 and len(POLICY_CALLS) == calls_before
    record = await store.get("g1")
    assert record is not None and record.status == "parked"  # still parked: not resumed
    await w.run(run_id="g1").send_event(Answer(text="z"))
    assert await asyncio.wait_for(w.run(run_id="g1"), 5) == "z"
    done = await w.get_run("g1")
    assert done.status == "completed" and done.result == "z" and done.finished


@pytest.mark.allow_stuck_runs
def test_the_stuck_run_check_names_a_parked_run_nothing_can_wake() -> None:
    from piton._runtime.stuck import recording_stores, stuck_report
    from piton.stores.base import CommitRequest, RunRecord

    async def make(store: MemoryStore) -> None:
        await store.open()  # the check looks at stores a test opened
        record = RunRecord(run_id="lost", workflow="W", status="running", owner="o", epoch=1)
        await store.create(record, ["e1"], [])
        await store.commit(
            CommitRequest("lost", 1, 1, ["park"], status="parked", release=True, waiters=0)
        )
        record = RunRecord(run_id="fine", workflow="W", status="running", owner="o", epoch=1)
        await store.create(record, ["e1"], [])
        await store.commit(
            CommitRequest("fine", 1, 1, ["park"], status="parked", release=True, waiters=1)
        )

    with recording_stores() as seen:
        store = MemoryStore()
        asyncio.run(make(store))
    assert store in seen
    report = stuck_report(list(seen))
    assert report is not None and "lost (W)" in report and "fine" not in report


async def test_a_rebuilt_run_that_disagrees_with_its_record_fails_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The journal ends the run (here: a Cancel entry) while the store's record says it is
    parked: the run fails with RunStateMismatch, logged, instead of waiting for nothing."""
    from piton import RunStateMismatch
    from piton._core import inputs as i
    from piton._journal_codec import encode_input
    from piton.serde import JsonSerializer
    from piton.stores.base import CommitRequest

    store = MemoryStore()
    w = Wait(store=store)
    first = w.run(run_id="m1")
    await _until_status(store, "m1", "parked")
    first.cancel()
    record = await store.get("m1")
    assert record is not None
    epoch = await store.claim("m1", "someone/1/1", 30.0)
    assert epoch is not None
    entry = encode_input(i.Cancel(1.0), JsonSerializer())
    await store.commit(
        CommitRequest("m1", epoch, record.seq, [entry], status="parked", release=True, waiters=1)
    )
    with caplog.at_level("ERROR", logger="piton.run"), pytest.raises(RunStateMismatch, match="m1"):
        await asyncio.wait_for(w.run(run_id="m1"), 5)
    assert "m1" in caplog.text
    stored = await store.get("m1")
    assert stored is not None and stored.status == "failed" and stored.owner is None


async def test_an_inbox_event_that_cannot_be_read_fails_the_load_and_stays_stored() -> None:
    from piton import JournalCorrupted

    store = MemoryStore()
    w = Wait(store=store)
    first = w.run(run_id="ib")
    await _until_status(store, "ib", "parked")
    first.cancel()
    await store.deliver("ib", '{"__piton__": "model", "type": "nowhere.Gone", "data": {}}')
    with pytest.raises(JournalCorrupted, match=r"Run 'ib': inbox event \d+"):
        await asyncio.wait_for(w.run(run_id="ib"), 5)
    record = await store.get("ib")
    assert record is not None and record.inbox == 1 and record.owner is None
    other = w.run(run_id="other")  # the other runs go on
    async for ev in other.stream_events():
        if isinstance(ev, Ask):
            break
    other.send_event(Answer(text="fine"))
    assert await asyncio.wait_for(other, 5) == "fine"


async def test_an_event_sent_while_a_run_id_is_being_created_reaches_the_existing_run() -> None:
    """w.run(run_id=X, **start) first tries to create X; when X exists already (another
    process made it), an event sent meanwhile must reach the existing run, not the state
    of the creation that failed. Found by the model checker (seed 4)."""
    store = Slowed(0.1)
    w = Wait(store=store)
    first = w.run(run_id="x1")
    await _until_status(store, "x1", "parked")
    first.cancel()
    await asyncio.sleep(0.05)
    again = w.run(run_id="x1", work=0.0)  # start arguments: a creation attempt first
    await asyncio.sleep(0.02)  # the slow create is in flight
    sent = again.send_event(Answer(text="not lost"))
    await sent
    assert await asyncio.wait_for(again, 5) == "not lost"


@pytest.mark.parametrize("fingerprint", ["[1, 2]", '{"steps": {"ask": 7}}', "[" * 5000])
async def test_a_damaged_fingerprint_fails_only_that_run(fingerprint: str) -> None:
    from piton import JournalCorrupted

    store = MemoryStore()
    w = Wait(store=store)
    first = w.run(run_id="fp")
    await _until_status(store, "fp", "parked")
    first.cancel()
    store._runs["fp"].fingerprint = fingerprint  # damaged in place, as a bad row would be
    if fingerprint.startswith("{"):
        with pytest.raises(JournalCorrupted, match="Run 'fp'"):
            await asyncio.wait_for(w.get_run("fp"), 5)
    else:  # not a fingerprint at all: read as "written by this code"
        assert (await w.get_run("fp")).status == "parked"
