"""Runs moved from llama-index-workflows: Context.from_dict() of what its to_dict() made.

The snapshots in tests/api/data/llama/ were taken by the real llama-index-workflows
(tests/api/data/llama/make_snapshots.py, run by hand: CI does not install it). The
workflows below are that script's workflows with the ``workflows`` imports replaced by
``piton`` ones, and nothing else changed: piton's promise. Each snapshot restores and
finishes with the result of the uninterrupted llama run (``<name>.expect.json``), in
memory and with a durable store.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from piton import (
    Context,
    ContextSerdeError,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowTimeoutError,
    step,
)
from piton.retry import retry_policy, stop_after_attempt, wait_fixed

DATA = Path(__file__).parent / "data" / "llama"


# --- 1. a simple state-keeping workflow (the seed's second example) -----------------


class Tick(Event):
    n: int


class CounterFlow(Workflow):
    hold: asyncio.Event | None = None

    @step
    async def begin(self, ev: StartEvent, ctx: Context) -> Tick:
        runs = await ctx.store.get("runs", default=0)
        await ctx.store.set("runs", runs + 1)
        await ctx.store.set("log", [])
        return Tick(n=0)

    @step
    async def tick(self, ev: Tick, ctx: Context) -> Tick | StopEvent:
        if ev.n == 2 and self.hold is not None:
            await self.hold.wait()
        log = await ctx.store.get("log")
        log.append(ev.n)
        await ctx.store.set("log", log)
        if ev.n < 4:
            return Tick(n=ev.n + 1)
        return StopEvent(result={"runs": await ctx.store.get("runs"), "log": log})


# --- 2. human in the loop: wait_for_event, and a step that takes the response --------


class AskName(InputRequiredEvent):
    prompt: str


class NameGiven(HumanResponseEvent):
    name: str


class GreeterFlow(Workflow):
    @step
    async def greet(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await ctx.store.set("greeting", ev.greeting)
        reply = await ctx.wait_for_event(
            NameGiven,
            waiter_event=AskName(prompt="What is your name?"),
            waiter_id="name",
            requirements={"kind": "name"},
        )
        greeting = await ctx.store.get("greeting")
        return StopEvent(result=f"{greeting}, {reply.name}!")


class ReviewFlow(Workflow):
    @step
    async def draft(self, ev: StartEvent, ctx: Context) -> InputRequiredEvent:
        await ctx.store.set("draft", f"draft about {ev.topic}")
        return InputRequiredEvent(prompt="Approve the draft?")

    @step
    async def decide(self, ev: HumanResponseEvent, ctx: Context) -> StopEvent:
        draft = await ctx.store.get("draft")
        return StopEvent(result=f"{draft}: {ev.response}")


# --- 3. fan-out, collect_events half collected -------------------------------------


class Chunk(Event):
    n: int


class ChunkDone(Event):
    n: int


class FanOutFlow(Workflow):
    hold: asyncio.Event | None = None

    @step
    async def split(self, ev: StartEvent, ctx: Context) -> Chunk | None:
        for n in range(ev.count):
            ctx.send_event(Chunk(n=n))
        return None

    @step
    async def work(self, ev: Chunk) -> ChunkDone:
        if ev.n == 2 and self.hold is not None:
            await self.hold.wait()
        return ChunkDone(n=ev.n * 10)

    @step
    async def gather(self, ev: ChunkDone, ctx: Context) -> StopEvent | None:
        done = ctx.collect_events(ev, [ChunkDone] * 4)
        if done is None:
            return None
        return StopEvent(result=sorted(d.n for d in done))


class NamedBufferFlow(FanOutFlow):
    @step
    async def gather(self, ev: ChunkDone, ctx: Context) -> StopEvent | None:
        done = ctx.collect_events(ev, [ChunkDone] * 4, buffer_id="chunks")
        if done is None:
            return None
        return StopEvent(result=sorted(d.n for d in done))


class SplitHeldFlow(FanOutFlow):
    @step
    async def split(self, ev: StartEvent, ctx: Context) -> Chunk | None:
        for n in range(ev.count):
            if n == 2 and self.hold is not None:
                await self.hold.wait()
            ctx.send_event(Chunk(n=n))
        return None


# --- 4. typed state ------------------------------------------------------------------


class Progress(BaseModel):
    done: list[str] = Field(default_factory=list)
    total: int = 0


class Part(Event):
    name: str


class TypedFlow(Workflow):
    hold: asyncio.Event | None = None

    @step
    async def plan(self, ev: StartEvent, ctx: Context[Progress]) -> Part | None:
        async with ctx.store.edit_state() as state:
            state.total = len(ev.parts)
        for name in ev.parts:
            ctx.send_event(Part(name=name))
        return None

    @step
    async def build(self, ev: Part, ctx: Context[Progress]) -> StopEvent | None:
        if ev.name == "c" and self.hold is not None:
            await self.hold.wait()
        async with ctx.store.edit_state() as state:
            state.done.append(ev.name)
            finished = len(state.done) == state.total
            done = list(state.done)
        return StopEvent(result=done) if finished else None


# --- 4b. a step waiting to be retried ------------------------------------------------


class RetryFlow(Workflow):
    failures_left = 1

    @step(retry_policy=retry_policy(wait=wait_fixed(2.0), stop=stop_after_attempt(3)))
    async def flaky(self, ev: StartEvent, ctx: Context) -> StopEvent:
        if self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("flaky service")
        info = ctx.retry_info()
        return StopEvent(
            result={
                "retry_number": info.retry_number,
                "last_exception": repr(info.last_exception),
            }
        )


# --- 5. the seed's third example: a step that snapshots the context as it goes ------


def convert(doc_id: int) -> None:
    """The seed's `convert()`: work worth not repeating."""


class DurableWorkflow(Workflow):
    hold: asyncio.Event | None = None

    def __init__(self, r: Any = None, **kwargs: Any) -> None:
        self.redis = r
        self.converted_now: list[int] = []
        super().__init__(**kwargs)

    @step
    async def convert_documents(self, ev: StartEvent, ctx: Context) -> StopEvent:
        document_ids = ev.ids
        converted_ids = await ctx.store.get("converted_ids", default=[])
        for doc_id in document_ids:
            if doc_id in converted_ids:
                continue
            convert(doc_id)
            self.converted_now.append(doc_id)
            converted_ids.append(doc_id)
            await ctx.store.set("converted_ids", converted_ids)
            if self.hold is not None and doc_id == 3:
                # the seed calls self.redis.hset("ctx", mapping=ctx.to_dict()) here;
                # llama-index-workflows 2.x refuses to_dict() inside a step, so the
                # generator takes it from outside while the step stands here
                await self.hold.wait()
        return StopEvent(result=converted_ids)


# --- the tests ---


FLOWS: dict[str, type[Workflow]] = {
    cls.__name__: cls
    for cls in (
        CounterFlow,
        GreeterFlow,
        ReviewFlow,
        FanOutFlow,
        NamedBufferFlow,
        SplitHeldFlow,
        TypedFlow,
        RetryFlow,
        DurableWorkflow,
    )
}
EVENTS: dict[str, type[Event]] = {cls.__name__: cls for cls in (NameGiven, HumanResponseEvent)}


def load(name: str) -> tuple[Any, dict[str, Any]]:
    data = json.loads((DATA / f"{name}.json").read_text())
    expect = json.loads((DATA / f"{name}.expect.json").read_text())
    return data, expect


def make(expect: dict[str, Any], store: str | None) -> Workflow:
    return FLOWS[expect["workflow"]](store=store) if store else FLOWS[expect["workflow"]]()


MID_RUN = [
    "counter_mid_run",
    "fanout_half_collected",
    "named_buffer",
    "split_mid_sends",
    "typed_state_mid_run",
    "seed_redis_hash",
]


async def finish(handler: Any) -> Any:
    return await asyncio.wait_for(handler, timeout=10)


@pytest.mark.parametrize("store", [None, "sqlite"])
@pytest.mark.parametrize("name", MID_RUN)
async def test_a_run_in_flight_finishes_as_the_uninterrupted_llama_run(
    name: str, store: str | None, tmp_path: Path
) -> None:
    data, expect = load(name)
    w = make(expect, f"sqlite:///{tmp_path / 'runs.db'}" if store else None)
    ctx = Context.from_dict(w, data)
    assert ctx.is_running is False  # restored, not started: run(ctx=...) goes on with it
    assert await finish(w.run(ctx=ctx)) == expect["result"]


async def test_a_step_stopped_mid_sends_does_not_send_twice() -> None:
    """llama-index-workflows itself sends Chunk 0 and 1 again on resume; piton does not."""
    data, expect = load("split_mid_sends")
    assert expect["llama_resumed"] != expect["result"]
    w = make(expect, None)
    assert await finish(w.run(ctx=Context.from_dict(w, data))) == [0, 10, 20, 30]


async def test_a_retry_waiting_out_its_delay_keeps_its_retry_number_and_error() -> None:
    data, expect = load("retry_pending")
    w = RetryFlow()
    w.failures_left = 0  # the service is back
    result = await finish(w.run(ctx=Context.from_dict(w, data)))
    assert result == expect["result"]
    assert result == {"retry_number": 1, "last_exception": "RuntimeError('flaky service')"}


async def test_the_restored_state_is_the_llama_state() -> None:
    data, expect = load("counter_mid_run")
    ctx = Context.from_dict(make(expect, None), data)
    assert await ctx.store.get("log") == [0, 1]
    assert await ctx.store.get("runs") == 1

    data, expect = load("typed_state_mid_run")
    typed: Context[Progress] = Context.from_dict(make(expect, None), data)
    state = await typed.store.get_state()
    assert isinstance(state, Progress)
    assert state.total == 4 and "c" not in state.done and len(state.done) == 3


@pytest.mark.parametrize("form", ["dict", "json", "json-values", "bytes-values"])
async def test_every_form_the_payload_is_kept_in_reads(form: str) -> None:
    data, expect = load("counter_mid_run")
    payload: Any = {
        "dict": data,
        "json": json.dumps(data),
        "json-values": {k: json.dumps(v) for k, v in data.items()},
        "bytes-values": {k.encode(): json.dumps(v).encode() for k, v in data.items()},
    }[form]
    w = make(expect, None)
    assert await finish(w.run(ctx=Context.from_dict(w, payload))) == expect["result"]


@pytest.mark.parametrize("store", [None, "sqlite"])
async def test_the_seeds_redis_hash_resumes_without_converting_again(
    store: str | None, tmp_path: Path
) -> None:
    """The seed's third example: restart with the same input; done documents are skipped."""
    kept, expect = load("seed_redis_hash")
    hgetall = {k.encode(): v.encode() for k, v in kept.items()}  # redis-py, no decode_responses
    url = f"sqlite:///{tmp_path / 'runs.db'}" if store else None
    w = DurableWorkflow(store=url) if url else DurableWorkflow()
    ctx = Context.from_dict(w, hgetall)
    assert await ctx.store.get("converted_ids") == [1, 2, 3]
    result = await finish(w.run(ctx=ctx, ids=[1, 2, 3, 4, 5]))
    assert result == expect["result"] == [1, 2, 3, 4, 5]
    assert w.converted_now == expect["converted_after_restore"] == [4, 5]


async def test_the_seeds_redis_hash_read_back_from_redis(redis_url: str) -> None:
    import redis

    kept, expect = load("seed_redis_hash")
    client = redis.Redis.from_url(redis_url)
    key = f"piton-test:llama-ctx:{uuid.uuid4().hex}"
    try:
        client.delete(key)
        client.hset(key, mapping=kept)
        w = DurableWorkflow()
        ctx = Context.from_dict(w, client.hgetall(key))
        assert await finish(w.run(ctx=ctx)) == expect["result"]
        assert w.converted_now == [4, 5]
    finally:
        client.delete(key)
        client.close()


@pytest.mark.parametrize("store", [None, "sqlite"])
async def test_a_finished_llama_run_passes_its_state_to_the_next_run(
    store: str | None, tmp_path: Path
) -> None:
    data, expect = load("counter_finished")
    w = make(expect, f"sqlite:///{tmp_path / 'runs.db'}" if store else None)
    ctx = Context.from_dict(w, data)
    assert await ctx.store.get("runs") == 1
    assert await finish(w.run(ctx=ctx)) == expect["result"]


@pytest.mark.parametrize("store", [None, "sqlite"])
async def test_a_run_waiting_in_wait_for_event_asks_again_and_takes_the_answer(
    store: str | None, tmp_path: Path
) -> None:
    data, expect = load("greeter_waiting")
    w = make(expect, f"sqlite:///{tmp_path / 'runs.db'}" if store else None)
    handler = w.run(ctx=Context.from_dict(w, data))
    asked = []
    async for ev in handler.stream_events():
        if isinstance(ev, AskName):
            asked.append(ev.prompt)
            send = expect["send"]
            handler.send_event(EVENTS[send["type"]](**send["fields"]))
    assert asked == ["What is your name?"]
    assert await finish(handler) == expect["result"] == "Hello, Ada!"


async def test_an_answer_sent_before_the_question_is_kept_for_the_waiter() -> None:
    data, expect = load("greeter_waiting")
    w = make(expect, None)
    handler = w.run(ctx=Context.from_dict(w, data))
    handler.send_event(NameGiven(name="Bo", kind="name"))
    assert await finish(handler) == "Hello, Bo!"


@pytest.mark.parametrize("store", [None, "sqlite"])
async def test_a_run_waiting_between_steps_takes_the_human_response(
    store: str | None, tmp_path: Path
) -> None:
    data, expect = load("review_waiting")
    w = make(expect, f"sqlite:///{tmp_path / 'runs.db'}" if store else None)
    handler = w.run(ctx=Context.from_dict(w, data))
    send = expect["send"]
    handler.send_event(EVENTS[send["type"]](**send["fields"]))
    assert await finish(handler) == expect["result"]


async def test_a_run_in_flight_resumes_durably(tmp_path: Path) -> None:
    data, expect = load("counter_mid_run")
    w = make(expect, f"sqlite:///{tmp_path / 'runs.db'}")
    assert await finish(w.run(ctx=Context.from_dict(w, data))) == expect["result"]


def llama_event(cls: str, value: dict[str, Any]) -> str:
    """An event as llama-index-workflows' JsonSerializer writes it."""
    return json.dumps({"__is_pydantic": True, "value": value, "qualified_name": cls})


async def test_the_time_a_run_used_counts_against_its_timeout() -> None:
    data, _ = load("counter_mid_run")
    data["elapsed_alive"] = 100.0
    w = CounterFlow(timeout=50)
    with pytest.raises(WorkflowTimeoutError):
        await finish(w.run(ctx=Context.from_dict(w, data)))


async def test_an_event_sent_but_not_yet_delivered_is_delivered() -> None:
    data, expect = load("review_waiting")
    response = {"_data": {"response": "approved"}}
    data["deliveries"] = [
        {
            "invocation_id": "outside",
            "index": 0,
            "event": llama_event("workflows.events.HumanResponseEvent", response),
            "step_id": None,
        }
    ]
    w = make(expect, None)
    assert await finish(w.run(ctx=Context.from_dict(w, data))) == expect["result"]


async def test_a_waiter_already_answered_takes_its_answer_when_it_runs_again() -> None:
    data, _ = load("greeter_waiting")
    (waiter,) = data["workers"]["greet"]["collected_waiters"]
    waiter["resolved_event"] = llama_event("__main__.NameGiven", {"name": "Cy", "kind": "name"})
    w = GreeterFlow()
    assert await finish(w.run(ctx=Context.from_dict(w, data))) == "Hello, Cy!"


async def test_sends_waiting_for_delivery_count_as_made() -> None:
    """split had sent Chunk 0 and 1 (received) and Chunk 2 (not delivered yet)."""
    data, expect = load("split_mid_sends")
    (item,) = data["workers"]["split"]["in_progress"]
    chunk = llama_event("__main__.Chunk", {"n": 2})
    data["deliveries"] = [
        {"invocation_id": item["invocation_id"], "index": 2, "event": chunk, "step_id": None}
    ]
    w = make(expect, None)
    assert await finish(w.run(ctx=Context.from_dict(w, data))) == [0, 10, 20, 30]


def test_a_run_that_was_ending_is_left_to_llama() -> None:
    data, _ = load("counter_mid_run")
    stop = llama_event("workflows.events.StopEvent", {"result": 7})
    data["deliveries"] = [{"invocation_id": "i", "index": 0, "event": stop, "step_id": None}]
    with pytest.raises(ContextSerdeError, match="was ending.*result is 7"):
        Context.from_dict(CounterFlow(), data)


# --- what cannot be moved is said clearly ---------------------------------------------


def changed(name: str, edit: Any) -> Any:
    data, _ = load(name)
    edit(data)
    return data


def rename_event(data: dict[str, Any]) -> None:
    item = data["workers"]["tick"]["in_progress"][0]
    item["event"] = item["event"].replace(".Tick", ".NoSuchTick")


def drop_step(data: dict[str, Any]) -> None:
    data["workers"]["tock"] = data["workers"].pop("tick")


def pickled(data: dict[str, Any]) -> None:
    data["workers"]["tick"]["in_progress"][0]["event"] = "gASVDAAAAAAAAACMBHRpY2uULg=="


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(version=3), ["version 3", "versions 1, 2"]),
        (lambda d: d.pop("version"), ["legacy format", "to_dict()"]),
        (lambda d: d.update(version=2.5), ["version 2.5"]),
        (rename_event, ["NoSuchTick", "CounterFlow", "no event type or pydantic model named"]),
        (drop_step, ["step 'tock'", "CounterFlow"]),
        (pickled, ["not JSON", "PickleSerializer"]),
        (lambda d: d["state"].update(store_type="sqlite"), ["'sqlite' store"]),
        (lambda d: d.update(workers=5), ["workers", "expected an object"]),
        (lambda d: d.update(streams={"s1": {}}), ["collection streams"]),
    ],
)
def test_a_llama_context_that_cannot_move_names_what_is_wrong(edit: Any, words: list[str]) -> None:
    data = changed("counter_mid_run", edit)
    with pytest.raises(ContextSerdeError) as err:
        Context.from_dict(CounterFlow(), data)
    for word in words:
        assert word in str(err.value)


def test_typed_llama_state_needs_a_typed_piton_workflow() -> None:
    data, _ = load("typed_state_mid_run")
    with pytest.raises(ContextSerdeError, match=r"Context\[Progress\]"):
        Context.from_dict(CounterFlow(), data)


def test_an_event_a_step_does_not_take_is_refused() -> None:
    data, _ = load("counter_mid_run")
    data["workers"]["begin"] = data["workers"].pop("tick")
    with pytest.raises(ContextSerdeError, match="Tick for step 'begin'.*does not accept"):
        Context.from_dict(CounterFlow(), data)


def test_data_of_neither_shape_is_refused() -> None:
    with pytest.raises(ContextSerdeError, match="neither a piton context"):
        Context.from_dict(CounterFlow(), {"hello": "1"})


async def test_a_piton_payload_without_its_format_is_not_taken_for_a_llama_one() -> None:
    data, expect = load("counter_mid_run")
    w = make(expect, None)
    flat = Context.from_dict(w, data).to_dict()
    del flat["format"]
    with pytest.raises(ContextSerdeError, match="neither a piton context"):
        Context.from_dict(w, flat)


async def test_version_1_differs_only_in_how_running_work_is_kept() -> None:
    """llama-index-workflows' version 1 kept a worker's in_progress as event strings."""
    data, expect = load("counter_mid_run")
    data["version"] = 1
    for worker in data["workers"].values():
        worker["in_progress"] = [item["event"] for item in worker["in_progress"]]
    w = make(expect, None)
    assert await finish(w.run(ctx=Context.from_dict(w, data))) == expect["result"]


async def test_pitons_own_flat_snapshot_still_round_trips() -> None:
    data, expect = load("counter_mid_run")
    w = make(expect, None)
    ctx = Context.from_dict(w, data)
    flat = ctx.to_dict()
    assert all(isinstance(v, str) for v in flat.values())
    assert json.loads(flat["format"]) == "piton.context"
    again = Context.from_dict(w, flat)
    assert await finish(w.run(ctx=again)) == expect["result"]


def test_the_workflows_are_the_generators_with_only_the_imports_changed() -> None:
    """The workflows above are make_snapshots.py's, letter for letter (its imports aside)."""

    def workflows(path: Path, end: str) -> str:
        text = path.read_text()
        return text[text.index("# --- 1. a simple") : text.index(end)].rstrip()

    generator = workflows(DATA / "make_snapshots.py", "# --- taking the snapshots")
    assert workflows(Path(__file__), "# --- the tests") == generator
