"""Human in the loop: ctx.wait_for_event, waiter events, ids, requirements and timeouts."""

from __future__ import annotations

import asyncio
from collections import Counter
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
    WorkflowHandler,
    WorkflowRuntimeError,
    step,
)


class Item(Event):
    n: int


class Reply(Event):
    n: int
    text: str


async def _first(handler: WorkflowHandler, kind: type[Event], count: int = 1) -> list[Any]:
    """The first ``count`` streamed events of type ``kind``."""
    found: list[Any] = []
    async for ev in handler.stream_events():
        if isinstance(ev, kind):
            found.append(ev)
            if len(found) == count:
                break
    return found


async def test_hitl_round_trip_reruns_the_step_from_the_top() -> None:
    runs = 0
    before_wait = 0

    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            nonlocal runs, before_wait
            runs += 1
            before_wait += 1
            answer = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_event=InputRequiredEvent(prefix="Your name?", topic=ev.topic),
            )
            return StopEvent(result=f"{ev.topic}: {answer.response}")

    handler = W().run(topic="intro")
    (question,) = await _first(handler, InputRequiredEvent)
    assert question.prefix == "Your name?"
    assert question.topic == "intro"
    handler.send_event(HumanResponseEvent(response="Ada"))
    assert await handler == "intro: Ada"
    assert runs == 2  # once up to the wait, once again from the top with the answer
    assert before_wait == 2


async def test_waiter_event_is_published_once_and_stream_ends_with_stop() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="?")
            )
            return StopEvent(result=answer.response)

    handler = W().run()
    seen: list[str] = []
    async for ev in handler.stream_events():
        seen.append(type(ev).__name__)
        if isinstance(ev, InputRequiredEvent):
            handler.send_event(HumanResponseEvent(response="yes"))
    assert seen == ["InputRequiredEvent", "StopEvent"]
    assert await handler == "yes"


async def test_two_sequential_waits_with_waiter_ids() -> None:
    runs = 0

    class W(Workflow):
        @step
        async def form(self, ev: StartEvent, ctx: Context) -> StopEvent:
            nonlocal runs
            runs += 1
            name = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_id="name",
                waiter_event=InputRequiredEvent(prefix="name?"),
                requirements={"field": "name"},
            )
            age = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_id="age",
                waiter_event=InputRequiredEvent(prefix="age?"),
                requirements={"field": "age"},
            )
            return StopEvent(result=(name.response, age.response))

    handler = W().run()
    prompts: list[str] = []
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            prompts.append(ev.prefix)
            field = ev.prefix.rstrip("?")
            value = "Ada" if field == "name" else 36
            handler.send_event(HumanResponseEvent(field=field, response=value))
    assert prompts == ["name?", "age?"]
    assert await handler == ("Ada", 36)
    assert runs == 3


async def test_requirements_filter_which_event_wakes_the_waiter() -> None:
    runs = 0

    class W(Workflow):
        @step
        async def wait_for_bob(self, ev: StartEvent, ctx: Context) -> StopEvent:
            nonlocal runs
            runs += 1
            answer = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_event=InputRequiredEvent(prefix="bob?"),
                requirements={"user": "bob"},
            )
            return StopEvent(result=answer.response)

    handler = W().run()
    await _first(handler, InputRequiredEvent)
    handler.send_event(HumanResponseEvent(user="alice", response="from alice"))
    await asyncio.sleep(0.02)
    assert not handler.done()
    assert runs == 1  # alice's answer did not wake the step
    handler.send_event(HumanResponseEvent(user="bob", response="from bob"))
    assert await handler == "from bob"
    assert runs == 2


async def test_wait_for_a_custom_event_type_matches_exactly() -> None:
    class Approval(HumanResponseEvent):
        approved: bool

    class W(Workflow):
        @step
        async def gate(self, ev: StartEvent, ctx: Context) -> StopEvent:
            decision = await ctx.wait_for_event(
                Approval, waiter_event=InputRequiredEvent(prefix="approve?")
            )
            return StopEvent(result=decision.approved)

    handler = W().run()
    await _first(handler, InputRequiredEvent)
    handler.send_event(HumanResponseEvent(response="plain"))  # not an Approval
    await asyncio.sleep(0.02)
    assert not handler.done()
    handler.send_event(Approval(approved=True))
    assert await handler is True


async def test_concurrent_waiters_each_get_their_own_answer() -> None:
    runs: Counter[int] = Counter()

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Item | None:
            for n in range(3):
                ctx.send_event(Item(n=n))
            return None

        @step(num_workers=3)
        async def ask(self, ev: Item, ctx: Context) -> Reply:
            runs[ev.n] += 1
            answer = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_event=InputRequiredEvent(n=ev.n),
                requirements={"n": ev.n},
            )
            return Reply(n=ev.n, text=answer.response)

        @step
        async def join(self, ev: Reply, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Reply] * 3)
            return None if got is None else StopEvent(result={r.n: r.text for r in got})

    handler = W().run()
    questions = await _first(handler, InputRequiredEvent, 3)
    for q in sorted(questions, key=lambda q: -q.n):
        handler.send_event(HumanResponseEvent(n=q.n, response=f"answer {q.n}"))
    assert await handler == {0: "answer 0", 1: "answer 1", 2: "answer 2"}
    assert runs == {0: 2, 1: 2, 2: 2}


async def test_more_waiters_than_workers_all_get_answered() -> None:
    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Item | None:
            for n in range(4):
                ctx.send_event(Item(n=n))
            return None

        @step(num_workers=1)
        async def ask(self, ev: Item, ctx: Context) -> Reply:
            answer = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_event=InputRequiredEvent(n=ev.n),
                requirements={"n": ev.n},
            )
            return Reply(n=ev.n, text=answer.response)

        @step
        async def join(self, ev: Reply, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Reply] * 4)
            return None if got is None else StopEvent(result=sorted(r.n for r in got))

    handler = W().run()
    # a waiting step frees its worker slot, so all four questions get asked
    questions = await asyncio.wait_for(_first(handler, InputRequiredEvent, 4), 2)
    for q in questions:
        handler.send_event(HumanResponseEvent(n=q.n, response="ok"))
    assert await handler == [0, 1, 2, 3]


async def test_waiter_timeout_raises_timeout_error_inside_the_step() -> None:
    caught: list[BaseException] = []

    class W(Workflow):
        @step
        async def impatient(self, ev: StartEvent, ctx: Context) -> StopEvent:
            try:
                await ctx.wait_for_event(
                    HumanResponseEvent,
                    waiter_event=InputRequiredEvent(prefix="quick!"),
                    timeout=0.05,
                )
            except TimeoutError as exc:  # asyncio.TimeoutError is TimeoutError
                caught.append(exc)
                return StopEvent(result="gave up")
            return StopEvent(result="answered")

    assert await W(timeout=5).run() == "gave up"
    assert len(caught) == 1
    assert "HumanResponseEvent" in str(caught[0])


async def test_uncaught_waiter_timeout_fails_the_run() -> None:
    class W(Workflow):
        @step
        async def impatient(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.wait_for_event(HumanResponseEvent, timeout=0.03)
            return StopEvent()

    with pytest.raises(TimeoutError):
        await W(timeout=5).run()


async def test_answer_before_the_timeout_disarms_it() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_event=InputRequiredEvent(prefix="?"),
                timeout=0.1,
            )
            await asyncio.sleep(0.15)  # past the waiter's deadline
            return StopEvent(result=answer.response)

    handler = W(timeout=5).run()
    await _first(handler, InputRequiredEvent)
    handler.send_event(HumanResponseEvent(response="in time"))
    assert await handler == "in time"


async def test_state_written_before_the_wait_is_kept_for_the_rerun() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            visits = await ctx.store.get("visits", default=0)
            await ctx.store.set("visits", visits + 1)
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="?")
            )
            return StopEvent(result=(answer.response, await ctx.store.get("visits")))

    handler = W().run()
    await _first(handler, InputRequiredEvent)
    handler.send_event(HumanResponseEvent(response="r"))
    assert await handler == ("r", 2)


async def test_a_step_can_catch_exceptions_without_swallowing_the_wait() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            try:
                answer = await ctx.wait_for_event(
                    HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="?")
                )
            except Exception:  # noqa: BLE001 - the suspension must pass through
                return StopEvent(result="swallowed")
            return StopEvent(result=answer.response)

    handler = W().run()
    await _first(handler, InputRequiredEvent)
    handler.send_event(HumanResponseEvent(response="passed through"))
    assert await handler == "passed through"


async def test_events_sent_before_waiting_are_delivered_after_the_wait() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> Item | None:
            ctx.send_event(Item(n=1))  # sent before the wait: delivered once, not twice
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="?")
            )
            ctx.send_event(Item(n=int(answer.response)))
            return None

        @step
        async def join(self, ev: Item, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Item, Item])
            return None if got is None else StopEvent(result=[i.n for i in got])

    handler = W().run()
    await _first(handler, InputRequiredEvent)
    await asyncio.sleep(0.01)
    handler.send_event(HumanResponseEvent(response="2"))
    assert await asyncio.wait_for(handler, 2) == [1, 2]


async def test_wait_for_event_outside_a_step_is_an_error() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    handler = W().run()
    await handler
    with pytest.raises(WorkflowRuntimeError, match="wait_for_event"):
        await handler.ctx.wait_for_event(HumanResponseEvent)


async def test_stream_writes_before_a_wait_are_not_repeated_by_the_rerun() -> None:
    runs = 0

    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            nonlocal runs
            runs += 1
            ctx.write_event_to_stream(Item(n=1))
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="?")
            )
            ctx.write_event_to_stream(Item(n=2))
            return StopEvent(result=answer.response)

    handler = W().run()
    items = []
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            await handler.send_event(HumanResponseEvent(response="yes"))
        elif isinstance(ev, Item):
            items.append(ev.n)
    assert await handler == "yes"
    assert runs == 2  # the step ran again from the top
    assert items == [1, 2]  # but its first write was published once
