"""Events look like llama-index-workflows' events: the dict API, dumps, repr and str.

Every expected string and dict below was printed by llama-index-workflows 2.26 for the
same construction (it is not imported here). Where piton differs on purpose, the test
says so: piton dumps extra fields at the top level (llama-index-workflows nests them under
``"_data"``, and drops them from a StopEvent's dump), and ``ev["field"] = v`` on a
declared field sets that field.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from piton import (
    Context,
    Event,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowFailedEvent,
    step,
)
from piton.retry import retry_policy, stop_after_attempt, wait_none


class Fields(Event):
    x: int
    y: str = "d"


class MyStop(StopEvent):
    n: int = 0


class PlainStop(StopEvent):
    pass


# --- repr and str ---------------------------------------------------------------------

REPRS: list[tuple[Any, str, str]] = [
    # (event, repr, str) as llama-index-workflows prints them
    (Event(), "Event()", ""),
    (Event(a=1, b="s"), "Event()", ""),  # extra data is not shown
    (StartEvent(), "StartEvent()", ""),
    (StartEvent(ids=[1, 2]), "StartEvent()", ""),
    (StopEvent(), "StopEvent()", "None"),
    (StopEvent(result=3), "StopEvent(result=3)", "3"),
    (StopEvent(result="x", extra=1), "StopEvent(extra=1, result='x')", "x"),
    (Fields(x=1), "Fields(x=1, y='d')", "x=1 y='d'"),
    (Fields(x=1, z=2), "Fields(x=1, y='d')", "x=1 y='d'"),
    (MyStop(), "MyStop(n=0)", "None"),
    (MyStop(n=2, result=5), "MyStop(n=2, result=5)", "5"),
    (PlainStop(), "PlainStop()", "None"),
    (PlainStop(result=[1]), "PlainStop(result=[1])", "[1]"),
    (InputRequiredEvent(prefix="p"), "InputRequiredEvent()", ""),
]


@pytest.mark.parametrize(("event", "shown", "text"), REPRS, ids=[r[1] for r in REPRS])
def test_repr_and_str_match_the_reference(event: Any, shown: str, text: str) -> None:
    assert repr(event) == shown
    assert str(event) == text


# --- the dict API covers the extra data only --------------------------------------------


def test_dict_api_of_an_event_with_extra_data() -> None:
    ev = Event(a=1, b="s")
    assert len(ev) == 2
    assert list(ev.keys()) == ["a", "b"]
    assert list(ev.values()) == [1, "s"]
    assert list(ev.items()) == [("a", 1), ("b", "s")]
    assert list(ev) == ["a", "b"]
    assert ev.get("a") == 1 and ev.get("x") is None and ev.get("x", 7) == 7
    assert "a" in ev and "x" not in ev
    assert ev["a"] == 1
    assert ev.to_dict() == {"a": 1, "b": "s"}
    assert dict(ev) == {"a": 1, "b": "s"}


def test_declared_fields_are_not_in_the_dict_api() -> None:
    ev = Fields(x=1, z=2)
    assert len(ev) == 1
    assert list(ev.keys()) == ["z"]
    assert list(ev.values()) == [2]
    assert list(ev.items()) == [("z", 2)]
    assert list(ev) == ["z"]
    assert ev.get("x") is None
    assert "x" not in ev and "z" in ev
    assert ev.to_dict() == {"z": 2}
    with pytest.raises(KeyError):
        ev["x"]
    assert ev.x == 1  # declared fields are attributes


def test_stop_event_result_is_not_an_item() -> None:
    for ev in (StopEvent(), StopEvent(result=3), MyStop(n=2, result=5)):
        assert len(ev) == 0
        assert list(ev.keys()) == []
        assert "result" not in ev
        with pytest.raises(KeyError):
            ev["result"]
        assert ev.to_dict() == {}
    extra = StopEvent(result="x", extra=1)
    assert list(extra.items()) == [("extra", 1)]
    assert extra.result == "x"


def test_items_set_by_key_or_attribute_are_extra_data() -> None:
    ev = Event(a=1)
    ev["b"] = 2
    ev.c = 3
    assert ev.to_dict() == {"a": 1, "b": 2, "c": 3}
    assert repr(ev) == "Event()"
    # piton: a declared field's name sets the field (llama-index-workflows stores the
    # value as extra data beside the field, so ev.x and ev["x"] then disagree)
    fields = Fields(x=1)
    fields["x"] = 5
    assert fields.x == 5
    assert repr(fields) == "Fields(x=5, y='d')"


def test_an_event_is_truthy_even_without_extra_data() -> None:
    assert bool(Event()) and bool(StopEvent()) and len(Event()) == 0


# --- dumps ----------------------------------------------------------------------------


def test_stop_event_dumps_leave_out_an_unset_result() -> None:
    assert StopEvent().model_dump() == {}
    assert StopEvent().model_dump_json() == "{}"
    assert StopEvent(result=3).model_dump() == {"result": 3}
    assert MyStop().model_dump() == {"n": 0}
    assert MyStop().model_dump_json() == '{"n":0}'
    assert MyStop(n=2, result=5).model_dump_json() == '{"n":2,"result":5}'  # result last
    assert PlainStop().model_dump() == {}
    assert PlainStop(result=[1]).model_dump() == {"result": [1]}
    assert StopEvent(result=None).model_dump(mode="json") == {}


def test_stop_event_dumps_keep_extra_data() -> None:
    # piton keeps a StopEvent's extra data in its dump (llama-index-workflows drops it)
    assert StopEvent(result="x", extra=1).model_dump() == {"extra": 1, "result": "x"}


def test_event_dumps_keep_extra_data_at_the_top_level() -> None:
    # piton's dump of extra data; llama-index-workflows nests it: {"_data": {"a": 1}}
    assert Event(a=1).model_dump() == {"a": 1}
    assert Fields(x=1, z=2).model_dump() == {"x": 1, "y": "d", "z": 2}


def test_a_stop_event_round_trips_through_its_dump() -> None:
    for ev in (StopEvent(), StopEvent(result={"k": [1]}), MyStop(n=3), MyStop(n=1, result="r")):
        again = type(ev).model_validate(ev.model_dump())
        assert again.result == ev.result
        assert again.model_dump() == ev.model_dump()


def test_workflow_failed_event_dumps_the_exception_as_type_and_message() -> None:
    failed = WorkflowFailedEvent(
        step_name="s", exception=ValueError("boom"), attempts=2, elapsed_seconds=1.5
    )
    dumped = {
        "step_name": "s",
        "exception": {"exception_type": "builtins.ValueError", "exception_message": "boom"},
        "attempts": 2,
        "elapsed_seconds": 1.5,
    }
    assert failed.model_dump() == dumped
    assert failed.model_dump_json() == (
        '{"step_name":"s","exception":{"exception_type":"builtins.ValueError",'
        '"exception_message":"boom"},"attempts":2,"elapsed_seconds":1.5}'
    )
    assert repr(failed) == (
        "WorkflowFailedEvent(step_name='s', exception={'exception_type': "
        "'builtins.ValueError', 'exception_message': 'boom'}, attempts=2, "
        "elapsed_seconds=1.5)"
    )
    assert isinstance(failed.exception, ValueError)  # the attribute is the exception
    assert failed.result is None


class Boom(Exception):
    pass


async def test_the_failed_event_of_a_run_dumps_its_exception() -> None:
    class W(Workflow):
        @step(retry_policy=retry_policy(wait=wait_none(), stop=stop_after_attempt(2)))
        async def s(self, ev: StartEvent, ctx: Context) -> StopEvent:
            raise Boom("no luck")

    handler = W().run()
    events = [ev async for ev in handler.stream_events()]
    with pytest.raises(Boom):
        await asyncio.wait_for(handler, 5)
    failed = events[-1]
    assert isinstance(failed, WorkflowFailedEvent)
    dumped = failed.model_dump(mode="json")
    assert dumped["exception"] == {
        "exception_type": f"{Boom.__module__}.Boom",
        "exception_message": "no luck",
    }
    assert dumped["step_name"] == "s" and dumped["attempts"] == 2
    assert "result" not in dumped
