"""Errors, handlers and validation behave as in llama-index-workflows.

What llama-index-workflows 2.26 does was checked by running it (it is not imported here):
- no StartEvent consumer, no StopEvent producer, two StartEvent or two StopEvent types and
  a workflow without steps raise ``workflows.errors.WorkflowConfigurationError``;
- ``ContextStateError`` is raised for a Context method called in the wrong state;
- ``run(start_event=Event())`` raises ``ValueError("The 'start_event' argument must be an
  instance of 'StartEvent'.")``;
- ``add_step`` of an undecorated function raises ``WorkflowValidationError("Step function
  bad_free is missing the `@step` decorator.")``;
- a step annotation naming an undefined name raises ``WorkflowValidationError`` when the
  class is defined ("Failed to resolve type annotations ... Missing name: Missing");
- a second ``handler.stream_events()`` after the first went past the StopEvent raises
  ``WorkflowRuntimeError("All the streamed events have already been consumed.")``.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from piton import (
    Context,
    Event,
    PitonError,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowConfigurationError,
    WorkflowRuntimeError,
    WorkflowValidationError,
    step,
)
from piton.errors import ContextStateError, InvalidStartEvent, StartStopEventError


class Mid(Event):
    pass


class Start1(StartEvent):
    pass


class Start2(StartEvent):
    pass


class Stop1(StopEvent):
    pass


class Stop2(StopEvent):
    pass


# --- configuration errors -------------------------------------------------------------


def _no_start() -> type[Workflow]:
    class NoStart(Workflow):
        @step
        async def only(self, ev: Mid) -> StopEvent:
            return StopEvent()

    return NoStart


def _no_stop() -> type[Workflow]:
    class NoStop(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Mid:
            return Mid()

        @step
        async def second(self, ev: Mid) -> None:
            return None

    return NoStop


def _two_starts() -> type[Workflow]:
    class TwoStarts(Workflow):
        @step
        async def one(self, ev: Start1) -> StopEvent:
            return StopEvent()

        @step
        async def two(self, ev: Start2) -> StopEvent:
            return StopEvent()

    return TwoStarts


def _two_stops() -> type[Workflow]:
    class TwoStops(Workflow):
        @step
        async def one(self, ev: StartEvent) -> Stop1 | Stop2:
            return Stop1()

    return TwoStops


def _no_steps() -> type[Workflow]:
    class Empty(Workflow):
        pass

    return Empty


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_no_start, "no step accepts a StartEvent"),
        (_no_stop, "no step returns a StopEvent"),
        (_two_starts, "different StartEvent types (Start1, Start2)"),
        (_two_stops, "different StopEvent types (Stop1, Stop2)"),
        (_no_steps, "has no steps"),
    ],
    ids=["no-start", "no-stop", "two-starts", "two-stops", "no-steps"],
)
def test_configuration_errors_are_both_names(make: type, words: str) -> None:
    cls = make()
    for caught in (WorkflowConfigurationError, WorkflowValidationError):
        with pytest.raises(caught) as info:
            cls()
        assert isinstance(info.value, StartStopEventError)
        assert words in str(info.value)
        assert cls.__name__ in str(info.value)
    error = info.value
    assert pickle.loads(pickle.dumps(error)).args == error.args


def test_disable_validation_skips_the_start_stop_checks() -> None:
    class TwoStops(Workflow):
        @step
        async def one(self, ev: StartEvent) -> Stop1 | Stop2:
            return Stop2(result="second kind")

    result = TwoStops(disable_validation=True).run_sync()
    assert isinstance(result, Stop2)


def test_error_tree() -> None:
    assert issubclass(StartStopEventError, WorkflowConfigurationError)
    assert issubclass(StartStopEventError, WorkflowValidationError)
    assert issubclass(ContextStateError, WorkflowRuntimeError)
    assert issubclass(InvalidStartEvent, WorkflowRuntimeError)
    assert issubclass(InvalidStartEvent, ValueError)
    for cls in (StartStopEventError, ContextStateError, InvalidStartEvent):
        assert issubclass(cls, PitonError)
        assert pickle.loads(pickle.dumps(cls("m"))).args == ("m",)
    import piton.errors

    for name in ("ContextStateError", "WorkflowConfigurationError", "WorkflowValidationError"):
        assert name in piton.errors.__all__


# --- ContextStateError ----------------------------------------------------------------


class One(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="done")


async def test_context_state_errors() -> None:
    ctx = Context(One())
    with pytest.raises(ContextStateError, match="send_event"):
        ctx.send_event(Mid())  # before any run
    with pytest.raises(ContextStateError, match="collect_events"):
        ctx.collect_events(Mid(), [Mid])  # a step-only method from outside
    handler = One().run()
    await handler
    with pytest.raises(ContextStateError, match="retry_info"):
        handler.ctx.retry_info()
    with pytest.raises(WorkflowRuntimeError):  # the name piton raised before
        handler.ctx.write_event_to_stream(Mid())


async def test_a_second_run_on_a_running_context_is_a_context_state_error() -> None:
    class Waits(Workflow):
        @step
        async def wait(self, ev: StartEvent, ctx: Context) -> StopEvent:
            got = await ctx.wait_for_event(Mid)
            return StopEvent(result=type(got).__name__)

    w = Waits()
    handler = w.run()
    with pytest.raises(ContextStateError, match="already running"):
        w.run(ctx=handler.ctx)
    handler.ctx.send_event(Mid())
    assert await handler == "Mid"


# --- run(start_event=...) and add_step() --------------------------------------------------


async def test_run_with_a_start_event_that_is_not_one_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must be an instance of 'StartEvent'") as info:
        One().run(start_event=Mid())  # type: ignore[arg-type]
    assert isinstance(info.value, WorkflowRuntimeError)
    assert "Mid" in str(info.value)


async def test_run_with_a_start_event_that_is_not_one_on_a_store(tmp_path: Path) -> None:
    w = One(store=f"sqlite:///{tmp_path / 'runs.db'}")
    with pytest.raises(ValueError, match="must be an instance of 'StartEvent'"):
        w.run(start_event=Mid())  # type: ignore[arg-type]


def test_add_step_of_an_undecorated_function() -> None:
    class W(Workflow):
        @step
        async def start(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    async def bad_free(ev: StartEvent) -> StopEvent:
        return StopEvent()

    with pytest.raises(WorkflowValidationError, match="bad_free is missing the `@step` decorator"):
        W.add_step(bad_free)
    assert "bad_free" not in W._step_functions()


# --- annotations that cannot be resolved ------------------------------------------------


def test_an_unresolvable_annotation_is_reported_at_class_definition() -> None:
    with pytest.raises(WorkflowValidationError, match="Missing"):

        class W(Workflow):
            @step
            async def s(self, ev: Missing) -> StopEvent:  # type: ignore[name-defined]  # noqa: F821
                return StopEvent()

    with pytest.raises(WorkflowValidationError, match="Missing2"):

        class W2(Workflow):
            @step
            async def s(self, ev: StartEvent) -> Missing2:  # type: ignore[name-defined]  # noqa: F821
                return StopEvent()


def _run_module(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "flowmod.py").write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-c", "import flowmod"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_event_defined_later_in_the_module_still_resolves(tmp_path: Path) -> None:
    done = _run_module(
        tmp_path,
        """
        from __future__ import annotations
        from piton import Event, StartEvent, StopEvent, Workflow, step

        class W(Workflow):
            @step
            async def first(self, ev: StartEvent) -> Later:
                return Later()

            @step
            async def second(self, ev: Later) -> StopEvent:
                return StopEvent(result="ok")

        class Later(Event):
            pass

        assert W().run_sync() == "ok"
        """,
    )
    assert done.returncode == 0, done.stderr


def test_a_module_level_typo_is_reported_when_the_class_is_defined(tmp_path: Path) -> None:
    done = _run_module(
        tmp_path,
        """
        from __future__ import annotations
        from piton import Event, StartEvent, StopEvent, Workflow, step

        class W(Workflow):
            @step
            async def first(self, ev: StartEvent) -> Stopevent:
                return StopEvent()

        print("class defined")
        """,
    )
    assert done.returncode != 0
    assert "class defined" not in done.stdout
    assert "WorkflowValidationError" in done.stderr and "Stopevent" in done.stderr


# --- stream_events() twice -----------------------------------------------------------


class Chatty(Workflow):
    @step
    async def talk(self, ev: StartEvent, ctx: Context) -> StopEvent:
        ctx.write_event_to_stream(Mid())
        return StopEvent(result="bye")


async def test_a_second_stream_events_raises_and_names_the_cursor() -> None:
    handler = Chatty().run()
    first = [type(ev).__name__ async for ev in handler.stream_events()]
    assert first == ["Mid", "StopEvent"]
    with pytest.raises(WorkflowRuntimeError, match=r"already been consumed.*cursor=0"):
        async for _ in handler.stream_events():
            pass
    # the durable way: read it again from a cursor
    again = [type(ev).__name__ async for ev in handler.stream_events(cursor=0)]
    assert again == ["Mid", "StopEvent"]
    rest = [type(ev).__name__ async for ev in handler.stream_events(cursor=1)]
    assert rest == ["StopEvent"]
    assert await handler == "bye"


async def test_a_stream_left_before_the_stop_event_may_be_read_again() -> None:
    handler = Chatty().run()
    async for ev in handler.stream_events():
        assert isinstance(ev, Mid)
        break
    names = [type(ev).__name__ async for ev in handler.stream_events()]
    assert names == ["Mid", "StopEvent"]
    await handler
