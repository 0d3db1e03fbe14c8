"""piton.testing.WorkflowTestRunner: llama-index-workflows' test runner, same API.

``WorkflowTestRunner(w).run(start_event=, ctx=, expose_internal=True, exclude_events=None)``
returns a result with ``collected``, ``event_types``, ``result`` and ``ctx``.
"""

from __future__ import annotations

import pytest

from piton import Context, Event, StartEvent, StopEvent, Workflow, step
from piton.testing import WorkflowTestResult, WorkflowTestRunner


class Progress(Event):
    n: int


class Note(Event):
    text: str


class Greet(StartEvent):
    name: str = "Adam"


class Greeting(Workflow):
    @step
    async def greet(self, ev: Greet, ctx: Context) -> StopEvent:
        for n in range(3):
            ctx.write_event_to_stream(Progress(n=n))
        ctx.write_event_to_stream(Note(text="done"))
        await ctx.store.set("greeted", ev.name)
        return StopEvent(result=f"hello {ev.name}!")


class Broken(Workflow):
    @step
    async def fail(self, ev: StartEvent) -> StopEvent:
        raise RuntimeError("boom")


async def test_collects_the_streamed_events_and_the_result() -> None:
    outcome = await WorkflowTestRunner(Greeting()).run(start_event=Greet(name="Eve"))
    assert isinstance(outcome, WorkflowTestResult)
    assert outcome.result == "hello Eve!"
    assert [type(e) for e in outcome.collected] == [Progress, Progress, Progress, Note, StopEvent]
    assert [e.n for e in outcome.collected if isinstance(e, Progress)] == [0, 1, 2]
    assert outcome.event_types == {Progress: 3, Note: 1, StopEvent: 1}
    assert await outcome.ctx.store.get("greeted") == "Eve"


async def test_exclude_events_drops_exactly_those_types() -> None:
    outcome = await WorkflowTestRunner(Greeting()).run(
        start_event=Greet(), exclude_events=[Progress, StopEvent]
    )
    assert [type(e) for e in outcome.collected] == [Note]
    assert outcome.event_types == {Note: 1}
    assert outcome.result == "hello Adam!"


async def test_expose_internal_is_accepted_and_piton_streams_no_internal_events() -> None:
    shown = await WorkflowTestRunner(Greeting()).run(start_event=Greet(), expose_internal=True)
    hidden = await WorkflowTestRunner(Greeting()).run(start_event=Greet(), expose_internal=False)
    assert shown.event_types == hidden.event_types == {Progress: 3, Note: 1, StopEvent: 1}


async def test_default_start_event_and_a_given_context() -> None:
    w = Greeting()
    ctx = Context(w)
    outcome = await WorkflowTestRunner(w).run(ctx=ctx)  # Greet() built without fields
    assert outcome.result == "hello Adam!"
    assert outcome.ctx is ctx


async def test_a_failing_run_raises_its_error() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        await WorkflowTestRunner(Broken()).run()
