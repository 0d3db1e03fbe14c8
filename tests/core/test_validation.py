"""Validation: every structural mistake is a WorkflowValidationError naming workflow and step."""

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
    WorkflowValidationError,
    step,
)


class A(Event):
    pass


class B(Event):
    pass


class Orphan(Event):
    pass


def test_no_start_event_consumer() -> None:
    class NoStart(Workflow):
        @step
        async def only(self, ev: A) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match="NoStart") as info:
        NoStart()
    assert "StartEvent" in str(info.value)


def test_no_stop_event_producer() -> None:
    class NoStop(Workflow):
        @step
        async def first(self, ev: StartEvent) -> A:
            return A()

        @step
        async def second(self, ev: A) -> None:
            return None

    with pytest.raises(WorkflowValidationError, match="NoStop") as info:
        NoStop()
    assert "StopEvent" in str(info.value)


def test_produced_but_never_consumed() -> None:
    class Leaky(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Orphan | StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match="Leaky") as info:
        Leaky()
    assert "Orphan" in str(info.value)
    assert "never consumed" in str(info.value)


def test_consumed_but_never_produced() -> None:
    class Starved(Workflow):
        @step
        async def first(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

        @step
        async def waits(self, ev: Orphan) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match="Starved") as info:
        Starved()
    assert "Orphan" in str(info.value)
    assert "never produced" in str(info.value)


def test_unreachable_steps() -> None:
    class Island(Workflow):
        @step
        async def first(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

        @step
        async def loop_a(self, ev: A) -> B:
            return B()

        @step
        async def loop_b(self, ev: B) -> A:
            return A()

    with pytest.raises(WorkflowValidationError, match="Island") as info:
        Island()
    assert "unreachable" in str(info.value)
    assert "loop_a" in str(info.value)
    assert "loop_b" in str(info.value)


def test_step_without_event_parameter() -> None:
    with pytest.raises(WorkflowValidationError, match="no_event") as info:

        class NoEvent(Workflow):
            @step
            async def no_event(self, ctx: Context) -> StopEvent:
                return StopEvent()

    assert "event parameter" in str(info.value)


def test_step_without_any_parameter() -> None:
    with pytest.raises(WorkflowValidationError, match="bare"):

        class Bare(Workflow):
            @step
            async def bare(self) -> StopEvent:
                return StopEvent()


def test_step_without_return_annotation() -> None:
    with pytest.raises(WorkflowValidationError, match="no_return") as info:

        class NoReturn(Workflow):
            @step
            async def no_return(self, ev: StartEvent):  # type: ignore[no-untyped-def]
                return StopEvent()

    assert "return annotation" in str(info.value)


def test_return_annotation_that_is_not_an_event() -> None:
    with pytest.raises(WorkflowValidationError, match="returns_int"):

        class BadReturn(Workflow):
            @step
            async def returns_int(self, ev: StartEvent) -> int:
                return 1


def test_unannotated_parameter() -> None:
    with pytest.raises(WorkflowValidationError, match="'extra'"):

        class Untyped(Workflow):
            @step
            async def untyped(self, ev: StartEvent, extra) -> StopEvent:  # type: ignore[no-untyped-def]
                return StopEvent()


def test_two_event_parameters() -> None:
    with pytest.raises(WorkflowValidationError, match="two event parameters"):

        class Two(Workflow):
            @step
            async def both(self, a: StartEvent, b: A) -> StopEvent:
                return StopEvent()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_bad_num_workers(bad: Any) -> None:
    with pytest.raises(WorkflowValidationError, match="num_workers") as info:

        class W(Workflow):
            @step(num_workers=bad)
            async def worker(self, ev: StartEvent) -> StopEvent:
                return StopEvent()

    assert "worker" in str(info.value)


@pytest.mark.parametrize("bad", [0, -0.5, "1", True])
def test_bad_step_timeout(bad: Any) -> None:
    with pytest.raises(WorkflowValidationError, match="timeout"):

        class W(Workflow):
            @step(timeout=bad)
            async def worker(self, ev: StartEvent) -> StopEvent:
                return StopEvent()


def test_bad_retry_policy() -> None:
    with pytest.raises(WorkflowValidationError, match="retry_policy"):

        class W(Workflow):
            @step(retry_policy="thrice")  # type: ignore[arg-type]
            async def worker(self, ev: StartEvent) -> StopEvent:
                return StopEvent()


def test_step_consuming_stop_event_is_refused() -> None:
    class Eats(Workflow):
        @step
        async def first(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

        @step
        async def after(self, ev: StopEvent) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match="after"):
        Eats()


def test_two_different_start_event_types_are_refused() -> None:
    class S1(StartEvent):
        pass

    class S2(StartEvent):
        pass

    class TwoStarts(Workflow):
        @step
        async def one(self, ev: S1) -> StopEvent:
            return StopEvent()

        @step
        async def two(self, ev: S2) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match="TwoStarts"):
        TwoStarts()


def test_no_steps() -> None:
    class Empty(Workflow):
        pass

    with pytest.raises(WorkflowValidationError, match="Empty"):
        Empty()


def test_different_state_types_are_refused() -> None:
    from pydantic import BaseModel

    class S1(BaseModel):
        a: int = 0

    class S2(BaseModel):
        b: int = 0

    class Mixed(Workflow):
        @step
        async def one(self, ev: StartEvent, ctx: Context[S1]) -> A:
            return A()

        @step
        async def two(self, ev: A, ctx: Context[S2]) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match="Mixed"):
        Mixed()


def test_state_type_without_defaults_is_refused() -> None:
    from pydantic import BaseModel

    class NeedsArgs(BaseModel):
        required: int

    class W(Workflow):
        @step
        async def one(self, ev: StartEvent, ctx: Context[NeedsArgs]) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match="NeedsArgs"):
        W()


def test_input_required_produced_and_human_response_consumed_pass() -> None:
    class Hitl(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> InputRequiredEvent:
            return InputRequiredEvent(prefix="?")

        @step
        async def answer(self, ev: HumanResponseEvent) -> StopEvent:
            return StopEvent(result=ev.response)

    async def main() -> Any:
        handler = Hitl().run()
        async for ev in handler.stream_events():
            if isinstance(ev, InputRequiredEvent):
                handler.send_event(HumanResponseEvent(response="validated"))
        return await handler

    assert asyncio.run(main()) == "validated"


def test_subclasses_of_input_required_and_human_response_pass() -> None:
    class Ask(InputRequiredEvent):
        pass

    class Answer(HumanResponseEvent):
        pass

    class Hitl(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> Ask:
            return Ask()

        @step
        async def answer(self, ev: Answer) -> StopEvent:
            return StopEvent()

    compiled = Hitl()._compiled()
    assert set(compiled.specs) == {"ask", "answer"}
    assert compiled.graph.consumers(Answer) == ("answer",)


def test_disable_validation_skips_graph_checks() -> None:
    class Leaky(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Orphan | StopEvent:
            return StopEvent(result="ran")

    with pytest.raises(WorkflowValidationError):
        Leaky()
    assert Leaky(disable_validation=True).run_sync() == "ran"


def test_validation_also_at_run_for_workflows_that_skip_init() -> None:
    class Leaky(Workflow):
        def __init__(self) -> None:
            pass  # never calls super().__init__(): validation happens at run()

        @step
        async def first(self, ev: StartEvent) -> Orphan | StopEvent:
            return StopEvent()

    w = Leaky()
    with pytest.raises(WorkflowValidationError, match="Orphan"):
        w.run_sync()


def test_forward_reference_resolved_at_build() -> None:
    class Later(Workflow):
        @step
        async def first(self, ev: StartEvent) -> DefinedAfter:
            return DefinedAfter()

        @step
        async def second(self, ev: DefinedAfter) -> StopEvent:
            return StopEvent(result="ok")

    assert Later().run_sync() == "ok"


class DefinedAfter(Event):
    pass


def test_undefined_annotation_name_is_a_validation_error() -> None:
    # reported when the class is defined, as llama-index-workflows does
    with pytest.raises(WorkflowValidationError, match="NeverDefined"):

        class Broken(Workflow):
            @step
            async def first(self, ev: StartEvent) -> NeverDefined:  # type: ignore[name-defined]  # noqa: F821
                return StopEvent()
