"""Make the llama-index-workflows context snapshots that tests/api/test_llama_snapshots.py reads.

Run by hand, with the real package installed (the bench extra), from the repo root:

    .venv/bin/python tests/api/data/llama/make_snapshots.py

For each workflow below it takes ``handler.ctx.to_dict()`` at a chosen point of a llama
run (mid-run, waiting for a human, finished) and writes ``<name>.json``: exactly what
``to_dict()`` returned (or, for ``seed_redis_hash``, the Redis hash the seed document's
third example would hold). Beside it, ``<name>.expect.json`` says how the snapshot was made
and what a resumed run must produce: ``result`` is the result of the same llama run left
uninterrupted (for a waiting run: answered as ``send`` says). The generator also resumes
each snapshot in llama-index-workflows itself (``Context.from_dict`` into a new workflow
instance) and records what that gives as ``llama_resumed`` where it may differ (llama
sends again the events a step had sent before the snapshot, see ``split_mid_sends``).

The workflows are the test file's workflows with ``workflows`` imports instead of
``piton`` ones (piton's promise: only the imports change). ``hold`` is an
``asyncio.Event`` the generator sets on an instance to stop a step at a known point so
the snapshot is taken mid-step; the tests leave it ``None``.

This file is not collected by pytest and CI never runs it: CI installs only ``.[dev]``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)
from workflows.retry_policy import retry_policy, stop_after_attempt, wait_fixed

HERE = Path(__file__).resolve().parent


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


# --- taking the snapshots ------------------------------------------------------------


def as_redis_hash(data: dict[str, Any]) -> dict[str, str]:
    """What ``redis.hset("ctx", mapping=data)`` keeps and ``hgetall`` gives back (decoded).

    Redis keeps strings: a number is kept as its text; a dict, list or bool (which
    redis-py refuses) is kept as the JSON text a user had to turn it into.
    """
    kept: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, str):
            kept[key] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            kept[key] = str(value)
        else:
            kept[key] = json.dumps(value)
    return kept


def from_redis_hash(kept: dict[str, str]) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in kept.items()}


async def until(handler: Any, event_type: type[Event]) -> Event:
    async for ev in handler.stream_events():
        if isinstance(ev, event_type):
            return ev
    raise AssertionError(f"the run ended before {event_type.__name__}")


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)


async def snapshot_held(
    w: Any, make: Any, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], Any, Any]:
    """Run until the held step stands still; return the snapshot, the uninterrupted
    run's result and what llama-index-workflows gives when it resumes the snapshot."""
    hold = asyncio.Event()
    w.hold = hold
    handler = w.run(**kwargs)
    await settle()
    data = handler.ctx.to_dict()
    hold.set()
    uninterrupted = await handler
    restored = make()
    resumed = await restored.run(ctx=Context.from_dict(restored, json.loads(json.dumps(data))))
    return data, uninterrupted, resumed


def write(name: str, data: Any, expect: dict[str, Any]) -> None:
    (HERE / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    expect = {"llama_index_workflows": importlib.metadata.version("llama-index-workflows")} | expect
    (HERE / f"{name}.expect.json").write_text(json.dumps(expect, indent=1) + "\n")
    print("wrote", name)


async def main() -> None:
    # 1. mid-run: Tick(n=2) is running; then finished, for a second run keeping the state
    data, result, llama = await snapshot_held(CounterFlow(), CounterFlow, {})
    write(
        "counter_mid_run",
        data,
        {
            "workflow": "CounterFlow",
            "taken": "mid-run: step 'tick' is running Tick(n=2), log is [0, 1]",
            "result": result,
            "llama_resumed": llama,
        },
    )
    w = CounterFlow()
    handler = w.run()
    first = await handler
    data = handler.ctx.to_dict()
    again = await CounterFlow().run(ctx=Context.from_dict(CounterFlow(), data))
    write(
        "counter_finished",
        data,
        {
            "workflow": "CounterFlow",
            "taken": f"finished, result {first}; the next run keeps the state",
            "result": again,
            "run_kwargs": {},
        },
    )

    # 2. waiting for a human, in wait_for_event and between two steps
    w2 = GreeterFlow()
    handler = w2.run(greeting="Hello")
    await until(handler, AskName)
    await settle()
    data = handler.ctx.to_dict()
    handler.ctx.send_event(NameGiven(name="Ada", kind="name"))
    live = await handler
    restored = GreeterFlow()
    h2 = restored.run(ctx=Context.from_dict(restored, data))
    await settle()  # llama does not publish AskName again on restore; the waiter takes the reply
    h2.ctx.send_event(NameGiven(name="Ada", kind="name"))
    resumed = await h2
    assert resumed == live, (resumed, live)
    write(
        "greeter_waiting",
        data,
        {
            "workflow": "GreeterFlow",
            "taken": "step 'greet' waits in wait_for_event(NameGiven, waiter_id='name')",
            "publishes": "AskName",
            "send": {"type": "NameGiven", "fields": {"name": "Ada", "kind": "name"}},
            "result": resumed,
        },
    )

    w3 = ReviewFlow()
    handler = w3.run(topic="otters")
    await until(handler, InputRequiredEvent)
    await settle()
    data = handler.ctx.to_dict()
    handler.ctx.send_event(HumanResponseEvent(response="approved"))
    live = await handler
    restored = ReviewFlow()
    h3 = restored.run(ctx=Context.from_dict(restored, data))
    await settle()
    h3.ctx.send_event(HumanResponseEvent(response="approved"))
    resumed = await h3
    assert resumed == live, (resumed, live)
    write(
        "review_waiting",
        data,
        {
            "workflow": "ReviewFlow",
            "taken": "step 'draft' returned InputRequiredEvent; nothing runs until a response",
            "send": {"type": "HumanResponseEvent", "fields": {"response": "approved"}},
            "result": resumed,
        },
    )

    # 3. fan-out: the other chunks' ChunkDone collected, Chunk(n=2) running
    for name, flow in (("fanout_half_collected", FanOutFlow), ("named_buffer", NamedBufferFlow)):
        data, result, llama = await snapshot_held(flow(), flow, {"count": 4})
        write(
            name,
            data,
            {
                "workflow": flow.__name__,
                "taken": "ChunkDone of the other chunks collected, step 'work' running Chunk(n=2)",
                "result": result,
                "llama_resumed": llama,
            },
        )

    # 3b. a step stopped mid-way through its sends: running it again must not send twice
    data, result, llama = await snapshot_held(SplitHeldFlow(), SplitHeldFlow, {"count": 4})
    write(
        "split_mid_sends",
        data,
        {
            "workflow": "SplitHeldFlow",
            "taken": "step 'split' running, Chunk(n=0) and Chunk(n=1) sent, waiting to send n=2",
            "result": result,
            "llama_resumed": llama,
        },
    )

    # 4. typed state: the other parts done, c running
    data, result, llama = await snapshot_held(
        TypedFlow(), TypedFlow, {"parts": ["a", "b", "c", "d"]}
    )
    write(
        "typed_state_mid_run",
        data,
        {
            "workflow": "TypedFlow",
            "taken": "the other parts done, step 'build' running Part(name='c')",
            "result": result,
            "llama_resumed": llama,
        },
    )

    # 4b. failed once, waiting out its retry delay
    handler = RetryFlow().run()
    await settle()
    data = handler.ctx.to_dict()
    live = await handler
    restored = RetryFlow()
    restored.failures_left = 0  # the service is back
    resumed = await restored.run(ctx=Context.from_dict(restored, data))
    write(
        "retry_pending",
        data,
        {
            "workflow": "RetryFlow",
            "taken": "step 'flaky' failed once and waits 2 s to run again",
            "result": live,
            "llama_resumed": resumed,
        },
    )

    # 5. the seed's third example, as its Redis hash would hold it
    ids = [1, 2, 3, 4, 5]
    w5 = DurableWorkflow()
    hold = asyncio.Event()
    w5.hold = hold
    handler = w5.run(ids=ids)
    await settle()
    kept = as_redis_hash(handler.ctx.to_dict())
    hold.set()
    live = await handler
    restored = DurableWorkflow()
    resumed = await restored.run(ctx=Context.from_dict(restored, from_redis_hash(kept)))
    assert resumed == live, (resumed, live)
    write(
        "seed_redis_hash",
        kept,
        {
            "workflow": "DurableWorkflow",
            "taken": "documents 1-3 converted, step 'convert_documents' running; "
            "the file is the Redis hash (hgetall, decoded)",
            "result": resumed,
            "converted_after_restore": restored.converted_now,
        },
    )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    asyncio.run(main())
