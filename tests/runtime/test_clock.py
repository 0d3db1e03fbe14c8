"""The run clock: every time a run reads goes through its workflow's Clock, so a FakeClock
makes an hour's sleep, a day's wait time-out, minute-long retry back-offs and the run's
own time-out pass at once, in memory and on a durable store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from piton import (
    Context,
    HumanResponseEvent,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowTimeoutError,
    step,
)
from piton.retry import retry_policy, stop_after_attempt, wait_fixed
from piton.stores import open_store
from piton.testing import FakeClock

HOUR, DAY = 3600.0, 86400.0


class Nap(Workflow):
    @step
    async def nap(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await ctx.sleep(HOUR)
        return StopEvent(result="rested")


class Ask(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        try:
            answer = await ctx.wait_for_event(HumanResponseEvent, timeout=DAY)
        except WorkflowTimeoutError:
            return StopEvent(result="nobody answered")
        return StopEvent(result=answer.response)


class Flaky(Workflow):
    failures = 0

    @step(retry_policy=retry_policy(wait=wait_fixed(60), stop=stop_after_attempt(3)))
    async def call(self, ev: StartEvent, ctx: Context) -> StopEvent:
        if ctx.retry_info().retry_number < 2:
            type(self).failures += 1
            raise ConnectionError("flaky")
        return StopEvent(result=ctx.retry_info().elapsed_seconds)


class Forever(Workflow):
    @step
    async def wait(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await ctx.wait_for_event(HumanResponseEvent, timeout=None)
        return StopEvent(result="answered")


def test_the_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=1000.0)
    assert clock.now() == 1000.0
    fired: list[float] = []

    async def main() -> None:
        clock.call_later(5, lambda: fired.append(clock.now()))
        clock.call_later(2, lambda: fired.append(clock.now()))
        dropped = clock.call_later(3, lambda: fired.append(-1.0))
        dropped.cancel()
        assert clock.pending == [1002.0, 1005.0]
        await clock.advance(4)
        assert fired == [1002.0] and clock.now() == 1004.0
        assert await clock.next() == 1005.0
        assert fired == [1002.0, 1005.0] and clock.pending == []
        with pytest.raises(ValueError, match="forward"):
            await clock.advance(-1)
        with pytest.raises(TimeoutError, match="no timer"):
            await clock.next(timeout=0.05)

    asyncio.run(main())


async def test_an_hours_sleep_passes_at_once_in_memory() -> None:
    clock = FakeClock()
    started = time.monotonic()
    handler = Nap(timeout=None, clock=clock).run()
    await clock.next()
    assert await asyncio.wait_for(handler, 5) == "rested"
    assert time.monotonic() - started < 5


async def test_a_wait_time_out_of_a_day_fires_on_the_fake_clock() -> None:
    clock = FakeClock()
    handler = Ask(timeout=None, clock=clock).run()
    await clock.advance(DAY - 1)
    assert not handler.done()
    await clock.advance(1)
    assert await asyncio.wait_for(handler, 5) == "nobody answered"


async def test_retry_back_offs_are_run_time() -> None:
    """Two failures, 60 s apart on the fake clock: retry_info's elapsed time says so."""
    clock = FakeClock()
    Flaky.failures = 0
    handler = Flaky(timeout=None, clock=clock).run()
    await clock.next()
    await clock.next()
    assert await asyncio.wait_for(handler, 5) == pytest.approx(120.0)
    assert Flaky.failures == 2


async def test_the_run_time_out_is_run_time() -> None:
    clock = FakeClock()
    handler = Forever(timeout=HOUR, clock=clock).run()
    await clock.advance(HOUR + 1)
    with pytest.raises(WorkflowTimeoutError):
        await asyncio.wait_for(handler, 5)


async def test_a_durable_sleep_parks_and_wakes_on_the_fake_clock(store_url: Any) -> None:
    """On a store: the sleeping run parks (its deadline is an hour of run time away), and
    the caller still listening wakes it when the fake clock reaches the deadline."""
    clock = FakeClock()
    store = open_store(store_url)
    handler = Nap(timeout=None, store=store, clock=clock).run(run_id="nap")
    for _ in range(500):
        record = await store.get("nap")
        if record is not None and record.status == "parked":
            break
        await asyncio.sleep(0.01)
    assert record is not None and record.status == "parked", record
    assert record.wake_at == pytest.approx(clock.now() + HOUR, abs=1.0)
    await clock.advance(HOUR)
    assert await asyncio.wait_for(handler, 10) == "rested"


async def test_a_durable_wait_time_out_fires_on_the_fake_clock(store_url: Any) -> None:
    clock = FakeClock()
    store = open_store(store_url)
    handler = Ask(timeout=None, store=store, clock=clock).run(run_id="ask")
    for _ in range(500):
        record = await store.get("ask")
        if record is not None and record.status == "parked":
            break
        await asyncio.sleep(0.01)
    await clock.advance(DAY)
    assert await asyncio.wait_for(handler, 10) == "nobody answered"




class Approve(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(HumanResponseEvent)
        return StopEvent(result=answer.response)


async def test_a_send_to_a_restored_context_before_its_run_begins_is_not_lost() -> None:
    """The context was saved, kept for longer than the run's time-out (days, on the fake
    clock), restored and sent to at once: the send goes in after the run's Begin, and the
    time the payload was kept is not run time."""
    clock = FakeClock()
    first = Approve(timeout=45, clock=clock).run()
    await clock.advance(0)
    saved = first.ctx.to_dict()
    await first.cancel_run()
    with pytest.raises(Exception, match="cancel"):
        await first
    await clock.advance(3 * DAY)
    w = Approve(timeout=45, clock=clock)
    handler = w.run(ctx=Context.from_dict(w, saved))
    await handler.send_event(HumanResponseEvent(response="approved"))
    assert await asyncio.wait_for(handler, 5) == "approved"


async def test_a_send_while_a_run_waits_for_a_slot_is_fed_after_its_begin() -> None:
    """num_concurrent_runs=1: the second run waits for the first; what is sent to it
    meanwhile reaches it once it begins, not before."""
    w = Approve(timeout=None, num_concurrent_runs=1)
    first = w.run()
    second = w.run()
    await second.send_event(HumanResponseEvent(response="second"))
    await asyncio.sleep(0.05)
    assert not second.done()
    await first.send_event(HumanResponseEvent(response="first"))
    assert await asyncio.wait_for(first, 5) == "first"
    assert await asyncio.wait_for(second, 5) == "second"


async def test_a_bad_start_argument_leaves_a_finished_context_as_it_was() -> None:
    """run(ctx=, **bad) raises before anything changes: the context keeps its state."""
    from piton import WorkflowRuntimeError

    class Count(Workflow):
        @step
        async def count(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("n", await ctx.store.get("n", default=0) + 1)
            return StopEvent(result=await ctx.store.get("n"))

    w = Count()
    handler = w.run()
    assert await handler == 1
    with pytest.raises(WorkflowRuntimeError):
        w.run(ctx=handler.ctx, start_event=HumanResponseEvent(response="not a start"))
    assert await handler.ctx.store.get("n") == 1
    assert await w.run(ctx=handler.ctx) == 2
