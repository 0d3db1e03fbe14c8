"""Workflow options and properties of llama-index-workflows: ``workflow_name=``,
``events``, ``skip_graph_checks=``, ``validate()`` and ``Context.get_step_context()``.

piton keeps the class name as the default ``workflow_name`` (llama-index-workflows
defaults to ``module.QualName``): durable runs are stored and matched under it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from piton import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)
from piton.decorators import catch_error
from piton.errors import WorkflowRuntimeError, WorkflowValidationError
from piton.events import StepFailedEvent
from piton.stores.base import open_store
from piton.stores.memory import MemoryStore
from piton.worker import Worker


class Middle(Event):
    n: int


class Orphan(Event):
    pass


class Ask(InputRequiredEvent):
    pass


class Flow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Middle:
        return Middle(n=1)

    @step
    async def end(self, ev: Middle) -> StopEvent:
        return StopEvent(result=ev.n)


class Dangling(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> StopEvent | Orphan:
        return StopEvent(result="ok")


class Island(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="ok")

    @step
    async def lonely(self, ev: Middle) -> Middle:
        return ev


class Human(Workflow):
    @step
    async def ask(self, ev: StartEvent) -> Ask:
        return Ask()

    @step
    async def answer(self, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=ev.response)


# -- workflow_name ---------------------------------------------------------------------


def test_the_default_name_is_the_class_name_and_an_explicit_one_wins() -> None:
    assert Flow().workflow_name == "Flow"
    assert Flow(workflow_name="convert-v2").workflow_name == "convert-v2"
    with pytest.raises(Exception, match="workflow_name must be a non-empty string"):
        Flow(workflow_name="")


async def test_an_explicit_name_is_the_durable_identity() -> None:
    store = MemoryStore()
    w = Flow(store=store, workflow_name="convert-v2")
    assert await w.run(run_id="r1") == 1
    record = await store.get("r1")
    assert record is not None and record.workflow == "convert-v2"
    plain = Flow(store=store)
    await plain.run(run_id="r2")
    record = await store.get("r2")
    assert record is not None and record.workflow == "Flow"
    with pytest.raises(WorkflowRuntimeError, match="belongs to workflow 'convert-v2'"):
        await plain.send_event("r1", Middle(n=2))


async def test_a_worker_runs_the_queued_runs_of_a_named_workflow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    named = Flow(store=url, workflow_name="convert-v2")
    await named.start(run_id="q1")
    # the same class under its default name and under the given one: two workflows
    async with Worker(url, workflows=[Flow, Flow(workflow_name="convert-v2")], poll_interval=0.05):
        assert await asyncio.wait_for(named.result("q1"), 10) == 1
    record = await open_store(url).get("q1")
    assert record is not None and record.workflow == "convert-v2"


# -- events ----------------------------------------------------------------------------


def test_events_lists_every_type_steps_take_or_return() -> None:
    assert set(Flow().events) == {StartEvent, Middle, StopEvent}
    assert set(Human().events) == {StartEvent, Ask, HumanResponseEvent, StopEvent}


# -- skip_graph_checks -----------------------------------------------------------------


def test_terminal_event_check_can_be_skipped() -> None:
    with pytest.raises(WorkflowValidationError, match="never consumed: Orphan"):
        Dangling()
    w = Dangling(skip_graph_checks={"terminal_event"})
    assert w.run_sync() == "ok"


def test_reachability_check_can_be_skipped() -> None:
    with pytest.raises(WorkflowValidationError, match="unreachable steps: lonely"):
        Island()
    with pytest.raises(WorkflowValidationError, match="unreachable steps: lonely"):
        Island(skip_graph_checks={"terminal_event"})  # the other checks still run
    assert Island(skip_graph_checks={"reachability"}).run_sync() == "ok"


def test_skipping_leaves_the_start_and_stop_checks() -> None:
    class NoStop(Workflow):
        @step
        async def begin(self, ev: StartEvent) -> None:
            return None

    with pytest.raises(WorkflowValidationError, match="no step returns a StopEvent"):
        NoStop(skip_graph_checks={"reachability", "terminal_event", "dead_end"})


def test_skipping_checks_keeps_catch_error_handlers_valid() -> None:
    class Recovers(Workflow):
        @step
        async def begin(self, ev: StartEvent) -> StopEvent | Orphan:
            raise RuntimeError("boom")

        @catch_error
        async def recover(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent(result=f"recovered from {ev.step_name}")

    assert Recovers(skip_graph_checks={"terminal_event"}).run_sync() == "recovered from begin"


def test_unknown_check_names_are_refused() -> None:
    with pytest.raises(WorkflowValidationError, match="Unknown graph check names: nope"):
        Flow(skip_graph_checks={"nope"})  # type: ignore[arg-type]


# -- validate() ------------------------------------------------------------------------


def test_validate_says_whether_the_workflow_uses_human_in_the_loop() -> None:
    assert Flow().validate() is False
    assert Human().validate() is True


def test_validate_checks_even_with_validation_disabled() -> None:
    w = Dangling(disable_validation=True)
    with pytest.raises(WorkflowValidationError, match="never consumed"):
        w.validate()
    assert (
        Dangling(disable_validation=True, skip_graph_checks={"terminal_event"}).validate() is False
    )


# -- Context.get_step_context() --------------------------------------------------------


class Seen(Event):
    what: str


def announce(
    fn: Callable[..., Awaitable[Any]],
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        Context.get_step_context().write_event_to_stream(Seen(what=fn.__name__))
        return await fn(*args, **kwargs)

    return wrapper


class Wrapped(Workflow):
    @step
    @announce
    async def begin(self, ev: StartEvent) -> Middle:
        return Middle(n=2)

    @step
    def end(self, ev: Middle) -> StopEvent:  # a sync step, in a thread
        ctx = Context.get_step_context()
        ctx.write_event_to_stream(Seen(what="end"))
        return StopEvent(result=ev.n)


async def test_get_step_context_inside_steps_async_and_sync() -> None:
    handler = Wrapped().run()
    seen = [ev.what async for ev in handler.stream_events() if isinstance(ev, Seen)]
    assert await handler == 2
    assert seen == ["begin", "end"]


async def test_get_step_context_is_the_steps_own_context() -> None:
    class Same(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            return StopEvent(result=Context.get_step_context() is ctx)

    assert await Same().run() is True


def test_get_step_context_outside_a_step_raises() -> None:
    with pytest.raises(WorkflowRuntimeError, match="only be called from within a step"):
        Context.get_step_context()


# -- typed state: Context[Base] and Context[Child] in one workflow ------------------------


class BaseState(BaseModel):
    count: int = 0


class ChildState(BaseState):
    name: str = "child"


class OtherState(BaseModel):
    other: int = 0


async def test_steps_typed_with_a_base_and_a_child_state_use_the_child() -> None:
    class Mixed(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context[BaseState]) -> Middle:
            async with ctx.store.edit_state() as state:
                state.count += 1
            return Middle(n=1)

        @step
        async def b(self, ev: Middle, ctx: Context[ChildState]) -> StopEvent:
            state = await ctx.store.get_state()
            return StopEvent(result=(type(state).__name__, state.count, state.name))

    assert await Mixed().run() == ("ChildState", 1, "child")


def test_two_unrelated_state_types_are_an_error_naming_both() -> None:
    class Unrelated(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context[BaseState]) -> Middle:
            return Middle(n=1)

        @step
        async def b(self, ev: Middle, ctx: Context[OtherState]) -> StopEvent:
            return StopEvent(result=None)

    with pytest.raises(WorkflowValidationError) as info:
        Unrelated()
    assert "BaseState" in str(info.value) and "OtherState" in str(info.value)
