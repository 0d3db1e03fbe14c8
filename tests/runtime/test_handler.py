"""The handler: awaiting, streaming, sending events in, cancelling, run ids and ctx."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from piton import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowCancelledByUser,
    WorkflowCancelledEvent,
    WorkflowHandler,
    WorkflowRuntimeError,
    step,
)


class Progress(Event):
    pct: int


class Question(InputRequiredEvent):
    text: str


class Answer(HumanResponseEvent):
    text: str


class Streamer(Workflow):
    @step
    async def work(self, ev: StartEvent, ctx: Context) -> StopEvent:
        for pct in (25, 50, 100):
            ctx.write_event_to_stream(Progress(pct=pct))
        return StopEvent(result="done")


async def test_stream_events_yields_writes_and_ends_with_stop_event() -> None:
    handler = Streamer().run()
    seen = [ev async for ev in handler.stream_events()]
    assert [type(ev) for ev in seen] == [Progress, Progress, Progress, StopEvent]
    assert [ev.pct for ev in seen[:3]] == [25, 50, 100]
    assert seen[-1].result == "done"
    assert await handler == "done"


async def test_stream_events_after_the_run_replays_from_the_start() -> None:
    handler = Streamer().run()
    assert await handler == "done"
    seen = [ev async for ev in handler.stream_events()]
    assert [type(ev).__name__ for ev in seen] == ["Progress"] * 3 + ["StopEvent"]


async def test_two_stream_readers_see_the_same_events() -> None:
    handler = Streamer().run()

    async def read() -> list[Any]:
        # each reader reads from the start (a reader without cursor= after the stream was
        # consumed is refused, as in llama-index-workflows)
        return [getattr(ev, "pct", None) async for ev in handler.stream_events(cursor=0)]

    first, second = await asyncio.gather(read(), read())
    assert first == second == [25, 50, 100, None]


async def test_stream_from_a_threaded_step() -> None:
    class W(Workflow):
        @step
        def work(self, ev: StartEvent, ctx: Context) -> StopEvent:
            ctx.write_event_to_stream(Progress(pct=1))
            ctx.write_event_to_stream(None)  # ignored, like llama-index-workflows
            return StopEvent(result="sync")

    handler = W().run()
    seen = [ev async for ev in handler.stream_events()]
    assert [type(ev) for ev in seen] == [Progress, StopEvent]
    assert await handler == "sync"


async def test_stop_event_subclass_ends_the_stream() -> None:
    class Final(StopEvent):
        summary: str

    class W(Workflow):
        @step
        async def work(self, ev: StartEvent, ctx: Context) -> Final:
            ctx.write_event_to_stream(Progress(pct=100))
            return Final(summary="s")

    handler = W().run()
    seen = [ev async for ev in handler.stream_events()]
    assert isinstance(seen[-1], Final)
    out = await handler
    assert isinstance(out, Final) and out.summary == "s"


async def test_input_required_is_streamed_and_answered_with_handler_send_event() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> Question:
            return Question(text="your name?")

        @step
        async def reply(self, ev: Answer) -> StopEvent:
            return StopEvent(result=f"hi {ev.text}")

    handler = W().run()
    questions: list[str] = []
    async for ev in handler.stream_events():
        if isinstance(ev, Question):
            questions.append(ev.text)
            await handler.send_event(Answer(text="Ada"))
    assert questions == ["your name?"]
    assert await handler == "hi Ada"


async def test_send_event_without_await_also_sends() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> InputRequiredEvent:
            return InputRequiredEvent(prefix="?")

        @step
        async def reply(self, ev: HumanResponseEvent) -> StopEvent:
            return StopEvent(result=ev.response)

    handler = W().run()
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            handler.send_event(HumanResponseEvent(response="no-await"))
    assert await handler == "no-await"


async def test_handler_send_event_to_a_named_step() -> None:
    got: list[str] = []

    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> InputRequiredEvent:
            return InputRequiredEvent()

        @step
        async def one(self, ev: HumanResponseEvent) -> StopEvent | None:
            got.append("one")
            return None

        @step
        async def two(self, ev: HumanResponseEvent) -> StopEvent:
            got.append("two")
            return StopEvent(result="two")

    handler = W().run()
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            handler.send_event(HumanResponseEvent(response="x"), step="two")
    assert await handler == "two"
    assert got == ["two"]


async def test_handler_send_event_to_unknown_step_raises() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> InputRequiredEvent:
            return InputRequiredEvent()

        @step
        async def reply(self, ev: HumanResponseEvent) -> StopEvent:
            return StopEvent()

    handler = W().run()
    await asyncio.sleep(0)
    with pytest.raises(WorkflowRuntimeError, match="nope"):
        handler.send_event(HumanResponseEvent(), step="nope")
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler


async def test_cancel_run_stops_the_run_and_its_steps() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    class W(Workflow):
        @step
        async def slow(self, ev: StartEvent) -> StopEvent:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return StopEvent()

    handler = W().run()
    await started.wait()
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser, match=handler.run_id):
        await handler
    await asyncio.wait_for(cancelled.wait(), 1)
    assert handler.done()
    # the stream of a cancelled run ends, with a WorkflowCancelledEvent, as in llama
    events = await asyncio.wait_for(_drain(handler), 1)
    assert type(events[-1]) is WorkflowCancelledEvent
    assert not any(type(ev) is StopEvent for ev in events)


async def _drain(handler: WorkflowHandler) -> list[Event]:
    return [ev async for ev in handler.stream_events()]


async def test_cancel_run_before_the_run_starts() -> None:
    ran: list[bool] = []

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            ran.append(True)
            return StopEvent()

    handler = W().run()
    handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    await asyncio.sleep(0.01)
    assert ran == []


async def test_cancel_run_after_the_run_is_a_no_op() -> None:
    handler = Streamer().run()
    assert await handler == "done"
    await handler.cancel_run()
    assert await handler == "done"


async def test_cancelling_the_handler_future_stops_the_run() -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    class W(Workflow):
        @step
        async def slow(self, ev: StartEvent) -> StopEvent:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return StopEvent()

    handler = W().run()
    await started.wait()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(handler, 0.02)  # cancels the handler on timeout
    await asyncio.wait_for(cancelled.wait(), 1)
    assert not handler.ctx.is_running


async def test_run_id_given_or_generated() -> None:
    w = Streamer()
    named = w.run(run_id="batch-7")
    assert named.run_id == "batch-7"
    assert await named == "done"
    a, b = w.run(), w.run()
    assert a.run_id and b.run_id and a.run_id != b.run_id
    await asyncio.gather(a, b)


async def test_handler_ctx_is_the_run_context() -> None:
    seen: list[Any] = []

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("from_step", 1)
            seen.append(ctx)
            return StopEvent()

    w = W()
    own: Context[Any] = Context(w)
    handler = w.run(ctx=own)
    assert handler.ctx is own
    await handler
    assert await handler.ctx.store.get("from_step") == 1
    assert seen and seen[0].store is own.store


async def test_handler_is_a_future() -> None:
    handler = Streamer().run()
    assert isinstance(handler, asyncio.Future)
    assert not handler.done()
    await handler
    assert handler.done()
    assert handler.result() == "done"
    assert "done" in repr(handler)


async def test_failed_run_handler_exception() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            raise ValueError("bad input")

    handler = W().run()
    with pytest.raises(ValueError, match="bad input"):
        await handler
    assert isinstance(handler.exception(), ValueError)


async def test_context_send_event_from_the_caller() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> InputRequiredEvent:
            return InputRequiredEvent()

        @step
        async def reply(self, ev: HumanResponseEvent) -> StopEvent:
            return StopEvent(result=ev.response)

    handler = W().run()
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            handler.ctx.send_event(HumanResponseEvent(response="via ctx"))
    assert await handler == "via ctx"


async def test_send_event_after_the_run_finished_is_an_error() -> None:
    handler = Streamer().run()
    await handler
    with pytest.raises(WorkflowRuntimeError):
        handler.ctx.send_event(HumanResponseEvent())
    with pytest.raises(WorkflowRuntimeError):
        handler.ctx.write_event_to_stream(Progress(pct=1))


async def test_running_a_context_twice_at_once_is_refused() -> None:
    class W(Workflow):
        @step
        async def slow(self, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(0.02)
            return StopEvent()

    w = W()
    handler = w.run()
    with pytest.raises(WorkflowRuntimeError, match="already running"):
        w.run(ctx=handler.ctx)
    await handler


async def test_a_failure_closes_the_stream_with_a_workflow_failed_event() -> None:
    from piton import WorkflowFailedEvent, retry_policy
    from piton.retry import stop_after_attempt, wait_fixed

    class Broken(Exception):
        pass

    class W(Workflow):
        @step(retry_policy=retry_policy(wait=wait_fixed(0), stop=stop_after_attempt(3)))
        async def bad(self, ev: StartEvent, ctx: Context) -> StopEvent:
            ctx.write_event_to_stream(Progress(pct=1))
            raise Broken("no luck")

    handler = W().run()
    events = await asyncio.wait_for(_drain(handler), 5)
    with pytest.raises(Broken):
        await handler
    last = events[-1]
    assert isinstance(last, WorkflowFailedEvent) and handler.get_stop_event() is last
    assert last.step_name == "bad" and last.attempts == 3
    assert isinstance(last.exception, Broken) and last.elapsed_seconds is not None
    # each attempt's writes are its own: the three attempts each wrote one Progress
    assert [type(ev) for ev in events] == [Progress, Progress, Progress, WorkflowFailedEvent]


async def test_a_timeout_closes_the_stream_with_a_workflow_timed_out_event() -> None:
    from piton import WorkflowTimedOutEvent, WorkflowTimeoutError

    class W(Workflow):
        @step
        async def slow(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await asyncio.sleep(10)
            return StopEvent()

    handler = W(timeout=0.2).run()
    events = await asyncio.wait_for(_drain(handler), 5)
    with pytest.raises(WorkflowTimeoutError):
        await handler
    assert isinstance(events[-1], WorkflowTimedOutEvent)
    assert events[-1].timeout == 0.2 and events[-1].active_steps == ["slow"]


async def test_get_stop_event_of_a_completed_run_is_its_stop_event() -> None:
    class W(Workflow):
        @step
        async def ok(self, ev: StartEvent, ctx: Context) -> StopEvent:
            return StopEvent(result=5)

    handler = W().run()
    assert handler.get_stop_event() is None
    assert await handler == 5
    stop = handler.get_stop_event()
    assert type(stop) is StopEvent and stop.result == 5
