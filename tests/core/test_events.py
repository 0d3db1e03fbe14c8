"""Events: pydantic models with dict-like extra fields, as in llama-index-workflows."""

from __future__ import annotations

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
    step,
)


class Greeting(Event):
    name: str
    punctuation: str = "!"


def test_extra_fields_read_as_attributes_and_items() -> None:
    ev = StartEvent(ids=[1, 2], topic="cats")
    assert ev.ids == [1, 2]
    assert ev["ids"] == [1, 2]
    assert ev["topic"] == "cats"
    assert ev.get("topic") == "cats"
    assert ev.get("missing") is None
    assert ev.get("missing", 7) == 7
    assert set(ev.keys()) == {"ids", "topic"}
    assert "ids" in ev
    assert "missing" not in ev
    assert len(ev) == 2


def test_iterating_an_event_gives_its_keys_like_a_dict() -> None:
    ev = StartEvent(a=1, b=2)
    assert list(ev) == ["a", "b"]
    assert {key: ev[key] for key in ev} == {"a": 1, "b": 2}
    assert dict(ev) == {"a": 1, "b": 2}
    assert list(ev.values()) == [1, 2]


def test_missing_item_raises_key_error_and_attribute_error() -> None:
    ev = StartEvent(a=1)
    with pytest.raises(KeyError):
        ev["nope"]
    with pytest.raises(AttributeError):
        _ = ev.nope


def test_item_access_prefers_a_field_named_like_a_method() -> None:
    ev = StartEvent(items=[1, 2], keys="k")
    assert ev["items"] == [1, 2]
    assert ev["keys"] == "k"
    assert ev.get("items") == [1, 2]


def test_declared_and_extra_fields_together() -> None:
    ev = Greeting(name="Ada", mood="happy")
    assert ev.name == "Ada"
    assert ev.punctuation == "!"
    assert ev.mood == "happy"
    # the dict side holds the extra fields only, as in llama-index-workflows
    assert ev["mood"] == "happy"
    with pytest.raises(KeyError):
        ev["name"]
    assert set(ev.keys()) == {"mood"}
    assert dict(ev.items()) == {"mood": "happy"}
    assert ev.to_dict() == {"mood": "happy"}


def test_setitem_updates_fields() -> None:
    ev = StartEvent(a=1)
    ev["a"] = 2
    ev["b"] = 3
    assert ev.a == 2
    assert ev.get("b") == 3
    assert ev.to_dict() == {"a": 2, "b": 3}


def test_declared_fields_are_validated() -> None:
    with pytest.raises(ValueError):
        Greeting()  # type: ignore[call-arg]


def test_an_event_without_fields_is_truthy() -> None:
    assert bool(Event())
    assert bool(StartEvent())


def test_stop_event_result_keyword_and_positional() -> None:
    assert StopEvent(result=5).result == 5
    assert StopEvent(5).result == 5
    assert StopEvent().result is None
    extra = StopEvent(result="r", note="n")
    assert extra.result == "r"
    assert extra["note"] == "n"


async def test_await_handler_gives_stop_event_result() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result={"doubled": ev.x * 2})

    assert await W().run(x=21) == {"doubled": 42}


async def test_positional_stop_event_result_reaches_handler() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent("positional")

    assert await W().run() == "positional"


class Report(StopEvent):
    title: str
    pages: int


async def test_stop_event_subclass_is_returned_as_the_instance() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> Report:
            return Report(title=ev.title, pages=3)

    out = await W().run(title="Q3")
    assert isinstance(out, Report)
    assert out.title == "Q3"
    assert out.pages == 3


class Query(StartEvent):
    question: str
    top_k: int = 3


async def test_custom_start_event_built_from_run_kwargs() -> None:
    seen: list[Any] = []

    class W(Workflow):
        @step
        async def only(self, ev: Query) -> StopEvent:
            seen.append(ev)
            return StopEvent(result=f"{ev.question}/{ev.top_k}")

    assert await W().run(question="why", top_k=5) == "why/5"
    assert await W().run(question="how") == "how/3"
    assert all(isinstance(ev, Query) for ev in seen)


async def test_custom_start_event_missing_field_fails_clearly() -> None:
    from piton import WorkflowRuntimeError

    class W(Workflow):
        @step
        async def only(self, ev: Query) -> StopEvent:
            return StopEvent()

    with pytest.raises(WorkflowRuntimeError, match="Query"):
        W().run(top_k=1)


async def test_custom_start_event_passed_as_start_event() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: Query) -> StopEvent:
            return StopEvent(result=ev.question)

    assert await W().run(start_event=Query(question="given")) == "given"


class AskUser(InputRequiredEvent):
    prompt: str


class UserSaid(HumanResponseEvent):
    text: str


def test_input_required_and_human_response_carry_extra_fields() -> None:
    ask = InputRequiredEvent(prefix="Name?", user_id=7)
    assert ask.prefix == "Name?"
    assert ask["user_id"] == 7
    answer = HumanResponseEvent(response="Ada", user_id=7)
    assert answer.response == "Ada"
    assert answer.get("user_id") == 7
    typed = AskUser(prompt="age?", hint="years")
    assert typed.prompt == "age?" and typed.hint == "years"


async def test_input_required_round_trip_through_the_stream() -> None:
    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> InputRequiredEvent:
            return InputRequiredEvent(prefix="Name?", user_id=7)

        @step
        async def answer(self, ev: HumanResponseEvent, ctx: Context) -> StopEvent:
            return StopEvent(result=f"{ev.response}#{ev.user_id}")

    handler = W().run()
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            assert ev.prefix == "Name?"
            handler.ctx.send_event(HumanResponseEvent(response="Ada", user_id=ev.user_id))
    assert await handler == "Ada#7"
