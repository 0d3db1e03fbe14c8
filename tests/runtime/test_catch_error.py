"""@catch_error: a handler that recovers from steps that fail for good (in memory)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from piton import (
    Context,
    Event,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowValidationError,
    step,
)
from piton._core.graph import Catch
from piton.decorators import catch_error
from piton.events import StepFailedEvent
from piton.retry import retry_policy, stop_after_attempt, wait_none


class Boom(Exception):
    pass


class Fetched(Event):
    n: int


class Fallback(Event):
    reason: str


async def test_handler_runs_after_retries_with_the_failure() -> None:
    seen: list[StepFailedEvent] = []
    calls: list[int] = []

    class W(Workflow):
        @step(retry_policy=retry_policy(wait=wait_none(), stop=stop_after_attempt(2)))
        async def fetch(self, ev: StartEvent) -> StopEvent:
            calls.append(ev.n)
            raise Boom(f"no luck {len(calls)}")

        @catch_error
        async def recover(self, ctx: Context, ev: StepFailedEvent) -> StopEvent:
            seen.append(ev)
            return StopEvent(result=f"recovered from {ev.step_name}")

    before = datetime.now(UTC)
    assert await W().run(n=7) == "recovered from fetch"
    assert calls == [7, 7]
    [failed] = seen
    assert failed.step_name == "fetch"
    assert failed.attempts == 2
    assert isinstance(failed.input_event, StartEvent) and failed.input_event.n == 7
    assert isinstance(failed.exception, Boom) and str(failed.exception) == "no luck 2"
    assert failed.elapsed_seconds >= 0
    assert failed.failed_at.tzinfo is not None and failed.failed_at >= before.replace(
        microsecond=0
    )
    assert failed.model_dump()["exception"] == {
        "exception_type": f"{Boom.__module__}.Boom",
        "exception_message": "no luck 2",
    }


async def test_handler_output_continues_the_run() -> None:
    class W(Workflow):
        @step
        async def fetch(self, ev: StartEvent) -> Fetched:
            raise Boom("down")

        @step
        async def use(self, ev: Fetched | Fallback) -> StopEvent:
            return StopEvent(result=getattr(ev, "reason", "fetched"))

        @catch_error(for_steps=["fetch"])
        async def recover(self, ev: StepFailedEvent) -> Fallback:
            return Fallback(reason=f"fallback after {type(ev.exception).__name__}")

    assert await W().run() == "fallback after Boom"


async def test_for_steps_filters_and_the_wildcard_takes_the_rest() -> None:
    class W(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Fetched:
            if ev.where == "first":
                raise Boom("first")
            return Fetched(n=1)

        @step
        async def second(self, ev: Fetched) -> StopEvent:
            raise Boom("second")

        @catch_error(for_steps=["first"])
        async def only_first(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent(result=f"scoped:{ev.step_name}")

        @catch_error
        async def everything_else(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent(result=f"wildcard:{ev.step_name}")

    assert await W().run(where="first") == "scoped:first"
    assert await W().run(where="second") == "wildcard:second"


async def test_a_step_no_handler_covers_fails_the_run() -> None:
    class W(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Fetched:
            return Fetched(n=1)

        @step
        async def second(self, ev: Fetched) -> StopEvent:
            raise Boom("uncovered")

        @catch_error(for_steps=["first"])
        async def only_first(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent(result="never")

    with pytest.raises(Boom, match="uncovered"):
        await W().run()


def test_two_wildcard_handlers_are_refused_when_the_class_is_defined() -> None:
    with pytest.raises(WorkflowValidationError, match="only one @catch_error handler"):

        class W(Workflow):
            @step
            async def s(self, ev: StartEvent) -> StopEvent:
                return StopEvent()

            @catch_error
            async def a(self, ev: StepFailedEvent) -> StopEvent:
                return StopEvent()

            @catch_error
            async def b(self, ev: StepFailedEvent) -> StopEvent:
                return StopEvent()


@pytest.mark.parametrize(
    ("for_steps", "message"),
    [
        (["nope"], "no such step"),
        (["a"], "names the handler 'a'"),
    ],
)
def test_bad_for_steps_are_refused(for_steps: list[str], message: str) -> None:
    class W(Workflow):
        @step
        async def s(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

        @catch_error(for_steps=["s"])
        async def a(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent()

        @catch_error(for_steps=for_steps)
        async def b(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match=message):
        W()


def test_a_step_claimed_twice_is_refused() -> None:
    class W(Workflow):
        @step
        async def s(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

        @catch_error(for_steps=["s"])
        async def a(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent()

        @catch_error(for_steps=["s"])
        async def b(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowValidationError, match="named by two"):
        W()


def test_declaration_errors() -> None:
    with pytest.raises(WorkflowValidationError, match="max_recoveries"):
        catch_error(max_recoveries=0)
    with pytest.raises(WorkflowValidationError, match="for_steps"):
        catch_error(for_steps="s")  # type: ignore[arg-type]
    with pytest.raises(WorkflowValidationError, match="StepFailedEvent"):

        @catch_error
        async def wrong(self: Any, ev: StartEvent) -> StopEvent:
            return StopEvent()


async def test_budget_is_per_lineage() -> None:
    """A recovered branch that fails again is recovered up to max_recoveries, then the
    run fails with the step's error; another lineage has a budget of its own."""
    tries: list[int] = []

    class Again(Event):
        round: int

    class W(Workflow):
        @step
        async def work(self, ev: StartEvent | Again) -> StopEvent:
            tries.append(getattr(ev, "round", 0))
            raise Boom(f"fail {len(tries)}")

        @catch_error(max_recoveries=2)
        async def recover(self, ev: StepFailedEvent) -> Again:
            return Again(round=getattr(ev.input_event, "round", 0) + 1)

    with pytest.raises(Boom, match="fail 3"):
        await W().run()
    assert tries == [0, 1, 2]

    tries.clear()
    with pytest.raises(Boom, match="fail 3"):
        await W().run()  # a new run: a fresh budget
    assert tries == [0, 1, 2]


async def test_two_lineages_each_have_their_budget() -> None:
    class Branch(Event):
        name: str

    class Retry(Event):
        name: str

    recovered: list[str] = []

    class W(Workflow):
        @step
        async def fan(self, ctx: Context, ev: StartEvent) -> Branch | None:
            ctx.send_event(Branch(name="a"))
            ctx.send_event(Branch(name="b"))
            return None

        @step
        async def branch(self, ev: Branch) -> Retry:
            raise Boom(ev.name)

        @step
        async def again(self, ctx: Context, ev: Retry) -> StopEvent | None:
            recovered.append(ev.name)
            if len(recovered) == 2:
                return StopEvent(result=sorted(recovered))
            return None

        @catch_error(max_recoveries=1)
        async def recover(self, ev: StepFailedEvent) -> Retry:
            return Retry(name=ev.input_event.name)

    assert await W().run() == ["a", "b"]


async def test_a_handler_that_raises_fails_the_run_with_its_error() -> None:
    class W(Workflow):
        @step
        async def s(self, ev: StartEvent) -> StopEvent:
            raise Boom("step")

        @catch_error
        async def recover(self, ev: StepFailedEvent) -> StopEvent:
            raise RuntimeError("handler broke too")

    with pytest.raises(RuntimeError, match="handler broke too"):
        await W().run()


async def test_handler_runs_with_one_worker_and_no_retry() -> None:
    class W(Workflow):
        @step
        async def s(self, ev: StartEvent) -> StopEvent:
            raise Boom("x")

        @catch_error
        async def recover(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent(result="ok")

    graph = W()._compiled().graph
    node = graph.steps["recover"]
    assert (node.num_workers, node.retry_policy) == (1, None)
    assert node.catch == Catch(None, 1)
    assert graph.catchers == {"s": ("recover", 1)}
    assert graph.consumers(StepFailedEvent) == ()  # reached by a failure only


def test_validation_and_drawing_accept_handlers() -> None:
    from piton.drawing import graph_model, to_mermaid

    class W(Workflow):
        @step
        async def fetch(self, ev: StartEvent) -> Fetched:
            return Fetched(n=1)

        @step
        async def use(self, ev: Fetched | Fallback) -> StopEvent:
            return StopEvent()

        @catch_error(for_steps=["fetch"])
        async def recover(self, ev: StepFailedEvent) -> Fallback:
            return Fallback(reason="x")

    W()  # validates: Fallback is produced by the handler, the handler is reachable
    text = to_mermaid(graph_model(W))
    assert "recover" in text


async def test_no_handler_keeps_failing_as_before() -> None:
    class W(Workflow):
        @step
        async def s(self, ev: StartEvent) -> StopEvent:
            raise Boom("plain")

    assert W()._compiled().graph.catchers == {}
    with pytest.raises(Boom, match="plain"):
        await W().run()
