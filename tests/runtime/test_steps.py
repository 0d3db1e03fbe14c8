"""Steps: async and threaded steps, free-function steps, workers, sends, errors, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from piton import (
    Context,
    Event,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowRuntimeError,
    WorkflowTimeoutError,
    step,
)


class Middle(Event):
    value: int


class Item(Event):
    n: int


class Done(Event):
    n: int


async def test_async_steps_chain_events() -> None:
    class W(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Middle:
            return Middle(value=ev.x + 1)

        @step
        async def second(self, ev: Middle) -> StopEvent:
            return StopEvent(result=ev.value * 10)

    assert await W().run(x=1) == 20


async def test_sync_steps_run_in_a_worker_thread() -> None:
    threads: dict[str, int] = {}

    class W(Workflow):
        @step
        def first(self, ev: StartEvent) -> Middle:
            threads["first"] = threading.get_ident()
            return Middle(value=ev.x)

        @step
        async def second(self, ev: Middle) -> StopEvent:
            threads["second"] = threading.get_ident()
            return StopEvent(result=ev.value)

    assert await W().run(x=3) == 3
    main = threading.get_ident()
    assert threads["first"] != main
    assert threads["second"] == main


async def test_sync_step_can_use_context_store_and_send() -> None:
    class W(Workflow):
        @step
        def first(self, ev: StartEvent, ctx: Context) -> Middle | None:
            ctx.send_event(Middle(value=5))
            return None

        @step
        async def second(self, ev: Middle, ctx: Context) -> StopEvent:
            await ctx.store.set("seen", ev.value)
            return StopEvent(result=await ctx.store.get("seen"))

    assert await W().run() == 5


class Free(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Middle:
        return Middle(value=ev.x)


@step(workflow=Free)
async def finish(ev: Middle, ctx: Context) -> StopEvent:
    return StopEvent(result=("free", ev.value))


async def test_free_function_step() -> None:
    assert await Free().run(x=9) == ("free", 9)


async def test_free_function_step_name_clash_is_refused() -> None:
    from piton import WorkflowValidationError

    async def begin(ev: Middle) -> StopEvent:
        return StopEvent()

    with pytest.raises(WorkflowValidationError, match="begin"):
        step(workflow=Free)(begin)


async def test_instance_variables_persist_across_runs() -> None:
    class Counter(Workflow):
        def __init__(self, start: int, **kwargs: Any) -> None:
            self.calls = start
            super().__init__(**kwargs)

        @step
        async def count(self, ev: StartEvent) -> StopEvent:
            self.calls += 1
            return StopEvent(result=self.calls)

    w = Counter(10, timeout=5)
    assert await w.run() == 11
    assert await w.run() == 12
    assert w.calls == 12


async def test_subclass_init_without_super_init_still_runs() -> None:
    class Client:
        def exec(self, query: str) -> int:
            return len(query)

    class DbWorkflow(Workflow):
        def __init__(self, db: Client) -> None:
            self.db = db  # never calls super().__init__()

        @step
        def count(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=self.db.exec("select 1"))

    w = DbWorkflow(Client())
    assert await w.run() == len("select 1")
    assert await w.run() == len("select 1")


async def test_num_workers_bounds_concurrency() -> None:
    active = 0
    peak = 0
    total = 0

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Item | None:
            for n in range(8):
                ctx.send_event(Item(n=n))
            return None

        @step(num_workers=2)
        async def work(self, ev: Item) -> Done:
            nonlocal active, peak, total
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            total += 1
            return Done(n=ev.n)

        @step
        async def gather(self, ev: Done, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Done] * 8)
            return None if got is None else StopEvent(result=sorted(e.n for e in got))

    assert await W().run() == list(range(8))
    assert peak == 2
    assert total == 8


async def test_default_num_workers_is_four() -> None:
    active = 0
    peak = 0

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Item | None:
            for n in range(10):
                ctx.send_event(Item(n=n))
            return None

        @step
        async def work(self, ev: Item) -> Done:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            return Done(n=ev.n)

        @step
        async def gather(self, ev: Done, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Done] * 10)
            return None if got is None else StopEvent(result=len(got))

    assert await W().run() == 10
    assert peak == 4


async def test_sync_step_num_workers_bounds_threads() -> None:
    lock = threading.Lock()
    active = 0
    peak = 0

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Item | None:
            for n in range(6):
                ctx.send_event(Item(n=n))
            return None

        @step(num_workers=3)
        def work(self, ev: Item) -> Done:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1
            return Done(n=ev.n)

        @step
        async def gather(self, ev: Done, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Done] * 6)
            return None if got is None else StopEvent(result=len(got))

    assert await W().run() == 6
    assert peak == 3


class Ping(Event):
    tag: str


class Ack(Event):
    who: str


def _broadcast_workflow(target: str | None) -> type[Workflow]:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Ping | None:
            ctx.send_event(Ping(tag="x"), step=target)
            return None

        @step
        async def left(self, ev: Ping) -> Ack:
            return Ack(who="left")

        @step
        async def right(self, ev: Ping) -> Ack:
            return Ack(who="right")

        @step
        async def join(self, ev: Ack, ctx: Context) -> StopEvent | None:
            expected = 2 if target is None else 1
            got = ctx.collect_events(ev, [Ack] * expected)
            return None if got is None else StopEvent(result=sorted(e.who for e in got))

    return W


async def test_send_event_broadcasts_to_every_accepting_step() -> None:
    assert await _broadcast_workflow(None)().run() == ["left", "right"]


async def test_send_event_to_a_named_step_only() -> None:
    assert await _broadcast_workflow("right")().run() == ["right"]


async def test_send_event_to_unknown_step_is_a_clear_error() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Ping | None:
            ctx.send_event(Ping(tag="x"), step="nowhere")
            return None

        @step
        async def sink(self, ev: Ping) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowRuntimeError, match="nowhere") as info:
        await W().run()
    assert "sink" in str(info.value)  # lists the steps there are


async def test_send_event_to_step_that_does_not_accept_the_type() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Ping | None:
            ctx.send_event(Ping(tag="x"), step="finish")
            return None

        @step
        async def sink(self, ev: Ping) -> Ack:
            return Ack(who="s")

        @step
        async def finish(self, ev: Ack) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowRuntimeError, match="finish") as info:
        await W().run()
    assert "Ping" in str(info.value)


async def test_send_event_rejects_non_events() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> StopEvent:
            ctx.send_event({"not": "an event"})  # type: ignore[arg-type]
            return StopEvent()

    with pytest.raises(WorkflowRuntimeError, match="Event"):
        await W().run()


async def test_step_returning_a_non_event_fails_naming_step_and_value() -> None:
    class W(Workflow):
        @step
        async def sloppy(self, ev: StartEvent) -> StopEvent:
            return "oops-value"  # type: ignore[return-value]

    with pytest.raises(WorkflowRuntimeError) as info:
        await W().run()
    message = str(info.value)
    assert "sloppy" in message
    assert "oops-value" in message


class Boom(Exception):
    pass


async def test_step_exception_reaches_the_caller_unchanged() -> None:
    raised: list[Boom] = []

    class W(Workflow):
        @step
        async def explode(self, ev: StartEvent) -> StopEvent:
            err = Boom("kaput")
            raised.append(err)
            raise err

    with pytest.raises(Boom, match="kaput") as info:
        await W().run()
    assert info.value is raised[0]


async def test_sync_step_exception_reaches_the_caller_unchanged() -> None:
    class W(Workflow):
        @step
        def explode(self, ev: StartEvent) -> StopEvent:
            raise KeyError("sync-kaput")

    with pytest.raises(KeyError, match="sync-kaput"):
        await W().run()


async def test_a_failing_step_cancels_its_siblings() -> None:
    cancelled = asyncio.Event()

    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Ping | Item | None:
            ctx.send_event(Ping(tag="slow"))
            ctx.send_event(Item(n=1))
            return None

        @step
        async def slow(self, ev: Ping) -> StopEvent:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return StopEvent()

        @step
        async def bad(self, ev: Item) -> StopEvent:
            await asyncio.sleep(0.01)
            raise Boom("bad")

    with pytest.raises(Boom):
        await W().run()
    await asyncio.wait_for(cancelled.wait(), 1)


def test_run_sync_returns_the_result() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=ev.a + ev.b)

    assert W().run_sync(a=2, b=3) == 5


async def test_run_sync_inside_a_loop_is_refused() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowRuntimeError, match="run_sync"):
        W().run_sync()


def test_run_outside_a_loop_is_refused_with_a_hint() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowRuntimeError, match="run_sync"):
        W().run()


async def test_num_concurrent_runs_limits_runs() -> None:
    active = 0
    peak = 0

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1
            return StopEvent(result=ev.n)

    w = W(num_concurrent_runs=2)
    results = await asyncio.gather(*(w.run(n=n) for n in range(5)))
    assert results == list(range(5))
    assert peak == 2


async def test_without_num_concurrent_runs_runs_overlap() -> None:
    active = 0
    peak = 0

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1
            return StopEvent()

    w = W()
    await asyncio.gather(*(w.run() for _ in range(4)))
    assert peak == 4


async def test_bad_workflow_options_are_refused() -> None:
    from piton import WorkflowConfigurationError

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowConfigurationError, match="num_concurrent_runs"):
        W(num_concurrent_runs=0)
    with pytest.raises(WorkflowConfigurationError, match="timeout"):
        W(timeout=-1)


async def test_workflow_timeout() -> None:
    class W(Workflow):
        @step
        async def slow(self, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(5)
            return StopEvent()

    started = time.monotonic()
    with pytest.raises(WorkflowTimeoutError) as info:
        await W(timeout=0.05).run()
    assert time.monotonic() - started < 2
    assert "W" in str(info.value)
    assert isinstance(info.value, TimeoutError)


async def test_workflow_timeout_none_means_no_limit() -> None:
    class W(Workflow):
        @step
        async def slow(self, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(0.05)
            return StopEvent(result="finished")

    assert await W(timeout=None).run() == "finished"


async def test_default_timeout_is_45_seconds() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    handler = W().run()
    await handler
    assert handler.ctx._run_state() is not None
    assert handler.ctx._run_state().timeout == 45.0  # type: ignore[union-attr]


async def test_per_step_timeout() -> None:
    class W(Workflow):
        @step(timeout=0.05)
        async def slow(self, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(5)
            return StopEvent()

    started = time.monotonic()
    with pytest.raises(WorkflowTimeoutError, match="slow"):
        await W(timeout=10).run()
    assert time.monotonic() - started < 2


async def test_per_step_timeout_on_a_sync_step() -> None:
    release = threading.Event()

    class W(Workflow):
        @step(timeout=0.05)
        def slow(self, ev: StartEvent) -> StopEvent:
            release.wait(2)
            return StopEvent()

    try:
        with pytest.raises(WorkflowTimeoutError, match="slow"):
            await W(timeout=10).run()
    finally:
        release.set()


async def test_fast_step_under_its_timeout_succeeds() -> None:
    class W(Workflow):
        @step(timeout=1)
        async def quick(self, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(0.01)
            return StopEvent(result="ok")

    assert await W().run() == "ok"


async def test_step_returning_none_emits_nothing() -> None:
    calls: list[str] = []

    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Middle | None:
            ctx.send_event(Middle(value=1))
            ctx.send_event(Middle(value=2))
            return None

        @step
        async def handle(self, ev: Middle, ctx: Context) -> StopEvent | None:
            calls.append(f"m{ev.value}")
            got = ctx.collect_events(ev, [Middle, Middle])
            return None if got is None else StopEvent(result=[e.value for e in got])

    assert await W().run() == [1, 2]
    assert calls == ["m1", "m2"]


async def test_union_event_parameter_accepts_either() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Ping | Ack | None:
            ctx.send_event(Ping(tag="p"))
            ctx.send_event(Ack(who="a"))
            return None

        @step
        async def either(self, ev: Ping | Ack, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Ping, Ack])
            return None if got is None else StopEvent(result=[type(e).__name__ for e in got])

    assert await W().run() == ["Ping", "Ack"]


async def test_workflow_can_be_run_many_times_concurrently() -> None:
    class W(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Middle:
            await asyncio.sleep(0.01)
            return Middle(value=ev.n)

        @step
        async def second(self, ev: Middle) -> StopEvent:
            return StopEvent(result=ev.value)

    w = W()
    assert await asyncio.gather(*(w.run(n=n) for n in range(10))) == list(range(10))


async def test_a_steps_own_timeout_error_is_not_mistaken_for_the_step_timeout() -> None:
    mine = TimeoutError("the API call timed out")

    class W(Workflow):
        @step(timeout=5)
        async def calls_api(self, ev: StartEvent) -> StopEvent:
            raise mine

    with pytest.raises(TimeoutError) as info:
        await W().run()
    assert info.value is mine


def test_num_concurrent_runs_works_across_event_loops() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(0.01)
            return StopEvent(result=ev.n)

    w = W(num_concurrent_runs=1)

    async def two_runs() -> list[Any]:
        return await asyncio.wait_for(asyncio.gather(w.run(n=1), w.run(n=2)), 2)

    assert asyncio.run(two_runs()) == [1, 2]
    assert asyncio.run(two_runs()) == [1, 2]  # a new loop: the old semaphore must not be used


async def test_step_decorator_with_empty_parentheses() -> None:
    class W(Workflow):
        @step()
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result="parens")

    assert await W().run() == "parens"


async def test_a_step_can_run_another_workflow() -> None:
    class Inner(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=ev.x * 2)

    class Outer(Workflow):
        @step
        async def call_inner(self, ev: StartEvent) -> Middle:
            inner = await Inner().run(x=ev.x)
            return Middle(value=inner + 1)

        @step
        def call_inner_sync(self, ev: Middle) -> StopEvent:
            # a threaded step has no event loop of its own: run_sync works there
            return StopEvent(result=Inner().run_sync(x=ev.value))

    assert await Outer().run(x=20) == 82


async def test_locally_defined_event_types_with_postponed_annotations() -> None:
    # this module uses `from __future__ import annotations`: these names are only
    # resolvable from the function's locals
    class LocalA(Event):
        v: int

    class LocalB(Event):
        v: int

    class W(Workflow):
        @step
        async def first(self, ev: StartEvent) -> LocalA:
            return LocalA(v=1)

        @step
        async def second(self, ev: LocalA) -> LocalB:
            return LocalB(v=ev.v + 1)

        @step
        async def third(self, ev: LocalB) -> StopEvent:
            return StopEvent(result=ev.v)

    assert await W().run() == 2
