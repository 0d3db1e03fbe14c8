"""The model workflow of the multi-process checker: every durable feature in one run.

    start -> work (fan-out, num_workers=3) -> gather (collect_events) -> ask (k waiters
    for Answer, each publishing an Ask) -> nap (ctx.sleep) -> flaky (fails once, retried
    after a back-off) -> loop (LOOPS iterations, ctx.checkpoint() after each) -> finish

Each step execution that completes writes one fsynced side-effect line just before it
returns (``{"run", "key", "pid", "t"}``), so a line appears twice only when a process
died (or left) after writing it and before the step's completion was committed. Ask
events carry a random token, so a fact a listener saw cannot be confused with a later
re-publication of it. The result depends only on the inputs (n, k, the answers' payloads),
so an in-memory run gives the expected result.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from piton import (
    Context,
    Event,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    retry_policy,
    step,
)
from piton.retry import retry_if_exception_type, stop_after_attempt, wait_fixed

from .files import append_line

STEP_DELAY = 0.02
NAP = 0.15
BACKOFF = 0.1
LOOPS = 3
NUM_WORKERS = {"start": 1, "work": 3, "gather": 1, "ask": 1, "nap": 1, "flaky": 1, "loop": 1}


class Item(Event):
    i: int


class Done(Event):
    i: int
    value: int


class Gathered(Event):
    total: int


class Answered(Event):
    total: int
    answers: list[str]


class Rested(Event):
    total: int
    answers: list[str]


class Checked(Event):
    total: int
    answers: list[str]


class Looped(Event):
    total: int
    answers: list[str]
    acc: int


class Answer(Event):
    """What the checker's processes send; two sends with one payload are two answers."""

    payload: str


class Ask(InputRequiredEvent):
    j: int
    token: str


class Transient(Exception):
    pass


async def mark(ctx: Context, key: str) -> None:
    """The side effect of a completing step execution (PITON_MODEL_EFFECTS, if set)."""
    path = os.environ.get("PITON_MODEL_EFFECTS")
    if path:
        run = await ctx.store.get("tag")
        record = {"run": run, "key": key, "pid": os.getpid(), "t": time.time()}
        append_line(path, json.dumps(record, sort_keys=True))


class ModelFlow(Workflow):
    @step
    async def start(self, ev: StartEvent, ctx: Context) -> Item | None:
        await ctx.store.set("tag", ev.tag)
        await ctx.store.set("n", ev.n)
        await ctx.store.set("k", ev.k)
        for i in range(ev.n):
            ctx.send_event(Item(i=i))
        await mark(ctx, "start")
        return None

    @step(num_workers=NUM_WORKERS["work"])
    async def work(self, ev: Item, ctx: Context) -> Done:
        await asyncio.sleep(STEP_DELAY)
        await mark(ctx, f"work:{ev.i}")
        return Done(i=ev.i, value=ev.i * ev.i + 1)

    @step(num_workers=1)
    async def gather(self, ev: Done, ctx: Context) -> Gathered | None:
        n = await ctx.store.get("n")
        got = ctx.collect_events(ev, [Done] * n)
        await mark(ctx, f"gather:{ev.i}")
        if got is None:
            return None
        return Gathered(total=sum(d.value for d in got))  # type: ignore[attr-defined]

    @step
    async def ask(self, ev: Gathered, ctx: Context) -> Answered:
        answers = []
        for j in range(await ctx.store.get("k")):
            answer = await ctx.wait_for_event(
                Answer, waiter_event=Ask(j=j, token=uuid.uuid4().hex), waiter_id=f"answer-{j}"
            )
            answers.append(answer.payload)
        await mark(ctx, "ask")
        return Answered(total=ev.total, answers=sorted(answers))

    @step
    async def nap(self, ev: Answered, ctx: Context) -> Rested:
        await ctx.sleep(NAP)
        await mark(ctx, "nap")
        return Rested(total=ev.total, answers=ev.answers)

    @step(
        retry_policy=retry_policy(
            retry=retry_if_exception_type(Transient),
            wait=wait_fixed(BACKOFF),
            stop=stop_after_attempt(4),
        )
    )
    async def flaky(self, ev: Rested, ctx: Context) -> Checked:
        await asyncio.sleep(STEP_DELAY)
        if ctx.retry_info().retry_number == 0:
            raise Transient("the first attempt fails")
        await mark(ctx, "flaky")
        return Checked(total=ev.total, answers=ev.answers)

    @step
    async def loop(self, ev: Checked, ctx: Context) -> Looped:
        k = await ctx.store.get("loop.next", default=0)
        acc = await ctx.store.get("loop.acc", default=0)
        while k < LOOPS:
            await asyncio.sleep(STEP_DELAY)
            acc += (k + 1) * 10
            k += 1
            await ctx.store.set("loop.acc", acc)
            await ctx.store.set("loop.next", k)
            await mark(ctx, f"loop:{k - 1}")
            await ctx.checkpoint()
        await mark(ctx, "loop:done")
        return Looped(total=ev.total, answers=ev.answers, acc=acc)

    @step
    async def finish(self, ev: Looped, ctx: Context) -> StopEvent:
        await mark(ctx, "finish")
        return StopEvent(result={"total": ev.total, "answers": ev.answers, "acc": ev.acc})


def expected_keys(n: int) -> set[str]:
    """The side-effect keys of one run: each step execution that completes, once."""
    keys = {"start", "ask", "nap", "flaky", "loop:done", "finish"}
    keys |= {f"work:{i}" for i in range(n)} | {f"gather:{i}" for i in range(n)}
    return keys | {f"loop:{k}" for k in range(LOOPS)}


async def reference(n: int, k: int, payloads: list[str]) -> object:
    """The result of an uninterrupted in-memory run with the same inputs."""
    handler = ModelFlow().run(n=n, k=k, tag="reference")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            await handler.send_event(Answer(payload=payloads[ev.j]))
    return await asyncio.wait_for(handler, 30)
