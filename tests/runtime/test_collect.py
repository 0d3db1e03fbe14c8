"""ctx.collect_events: ordering, fan-in, separate buffers, and retries of the collector."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from piton import (
    Context,
    Event,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowRuntimeError,
    step,
)
from piton.retry import retry_policy, stop_after_attempt, wait_fixed


class A(Event):
    tag: str = "a"


class B(Event):
    tag: str = "b"


class C(Event):
    tag: str = "c"


class Part(Event):
    n: int


class Result(Event):
    n: int


async def test_collect_returns_events_in_expected_order_not_arrival_order() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> A | B | C | None:
            ctx.send_event(C(tag="c1"))
            ctx.send_event(A(tag="a1"))
            ctx.send_event(B(tag="b1"))
            return None

        @step
        async def join(self, ev: A | B | C, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [A, B, C])
            return None if got is None else StopEvent(result=[e.tag for e in got])

    assert await W().run() == ["a1", "b1", "c1"]


async def test_collect_mixed_counts_keep_per_type_arrival_order() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> A | B | None:
            ctx.send_event(B(tag="b1"))
            ctx.send_event(A(tag="a1"))
            ctx.send_event(A(tag="a2"))
            ctx.send_event(B(tag="b2"))
            return None

        @step(num_workers=1)
        async def join(self, ev: A | B, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [A, B, A, B])
            return None if got is None else StopEvent(result=[e.tag for e in got])

    assert await W().run() == ["a1", "b1", "a2", "b2"]


async def test_fan_in_of_many_events_with_eight_workers() -> None:
    n = 200
    completions = 0
    calls = 0

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Part | None:
            for i in range(n):
                ctx.send_event(Part(n=i))
            return None

        @step(num_workers=8)
        async def work(self, ev: Part) -> Result:
            await asyncio.sleep(0)
            return Result(n=ev.n * 2)

        @step(num_workers=8)
        async def gather(self, ev: Result, ctx: Context) -> StopEvent | None:
            nonlocal completions, calls
            calls += 1
            got = ctx.collect_events(ev, [Result] * n)
            if got is None:
                return None
            completions += 1
            return StopEvent(result=sorted(r.n for r in got))

    assert await W().run() == [2 * i for i in range(n)]
    assert completions == 1
    assert calls == n


async def test_collect_in_a_threaded_step() -> None:
    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Part | None:
            for i in range(10):
                ctx.send_event(Part(n=i))
            return None

        @step(num_workers=4)
        def gather(self, ev: Part, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Part] * 10)
            return None if got is None else StopEvent(result=sorted(p.n for p in got))

    assert await W().run() == list(range(10))


async def test_two_buffers_in_one_step_are_independent() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> A | None:
            for i in range(4):
                ctx.send_event(A(tag=f"a{i}"))
            return None

        @step(num_workers=1)
        async def join(self, ev: A, ctx: Context) -> StopEvent | None:
            buffer = "even" if ev.tag in ("a0", "a2") else "odd"
            batch = ctx.collect_events(ev, [A, A], buffer_id=buffer)
            if batch is None:
                return None
            tags = [e.tag for e in batch]
            await ctx.store.set(f"batch_{tags[0]}", tags)
            done = await ctx.store.get("batches", default=0) + 1
            await ctx.store.set("batches", done)
            if done < 2:
                return None
            return StopEvent(
                result=(await ctx.store.get("batch_a0"), await ctx.store.get("batch_a1"))
            )

    assert await W().run() == (["a0", "a2"], ["a1", "a3"])


async def test_two_steps_collecting_the_same_type_have_their_own_buffers() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Part | None:
            for i in range(3):
                ctx.send_event(Part(n=i))
            return None

        @step
        async def left(self, ev: Part, ctx: Context) -> A | None:
            got = ctx.collect_events(ev, [Part] * 3)
            return None if got is None else A(tag=f"left{len(got)}")

        @step
        async def right(self, ev: Part, ctx: Context) -> B | None:
            got = ctx.collect_events(ev, [Part] * 3)
            return None if got is None else B(tag=f"right{len(got)}")

        @step
        async def join(self, ev: A | B, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [A, B])
            return None if got is None else StopEvent(result=[e.tag for e in got])

    assert await W().run() == ["left3", "right3"]


async def test_a_batch_is_only_returned_once_and_extra_events_wait() -> None:
    batches: list[list[int]] = []

    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Part | None:
            for i in range(5):
                ctx.send_event(Part(n=i))
            return None

        @step(num_workers=1)
        async def pairs(self, ev: Part, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Part, Part])
            if got is None:
                return None
            batches.append([p.n for p in got])
            return StopEvent(result=batches) if len(batches) == 2 else None

    assert await W().run() == [[0, 1], [2, 3]]


async def test_retry_of_the_collecting_step_gets_the_same_batch() -> None:
    attempts: Counter[int] = Counter()

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Part | None:
            for i in range(5):
                ctx.send_event(Part(n=i))
            return None

        @step(num_workers=8, retry_policy=retry_policy(wait=wait_fixed(0.001), stop=stop_after_attempt(3)))
        async def gather(self, ev: Part, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Part] * 5)
            if got is None:
                return None
            attempts[ctx.retry_info().retry_number] += 1
            if ctx.retry_info().retry_number == 0:
                raise RuntimeError("crashed after collecting")
            return StopEvent(result=sorted(p.n for p in got))

    assert await W().run() == [0, 1, 2, 3, 4]
    assert attempts == {0: 1, 1: 1}


async def test_retries_before_the_batch_completes_neither_lose_nor_duplicate() -> None:
    failed: set[int] = set()

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Part | None:
            for i in range(4):
                ctx.send_event(Part(n=i))
            return None

        @step(num_workers=2, retry_policy=retry_policy(wait=wait_fixed(0.001), stop=stop_after_attempt(3)))
        async def gather(self, ev: Part, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Part] * 4)
            if ev.n not in failed:
                failed.add(ev.n)  # every event's first attempt fails after buffering
                raise RuntimeError(f"flaky on {ev.n}")
            return None if got is None else StopEvent(result=[p.n for p in got])

    result = await W().run()
    assert sorted(result) == [0, 1, 2, 3]
    assert failed == {0, 1, 2, 3}


async def test_collect_events_outside_a_step_is_an_error() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    handler = W().run()
    await handler
    with pytest.raises(WorkflowRuntimeError, match="collect_events"):
        handler.ctx.collect_events(Part(n=1), [Part])
