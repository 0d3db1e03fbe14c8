"""Context serialization: flat dict[str, str] snapshots, restores, resumes, and bad data."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import json
import pathlib
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from piton import (
    Context,
    ContextSerdeError,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    PickleSerializer,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowCancelledByUser,
    step,
)


class Middle(Event):
    value: int


class Item(Event):
    n: int


class Done(Event):
    n: int


class Opaque:
    """Not JSON-serializable, but picklable (module level)."""

    def __init__(self, payload: str) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.payload == self.payload

    def __hash__(self) -> int:
        return hash(self.payload)


def assert_flat(data: Any) -> None:
    assert isinstance(data, dict)
    assert data
    for key, value in data.items():
        assert isinstance(key, str)
        assert isinstance(value, str)
        json.loads(value)  # each value is a JSON string


# --- shape of the snapshot -------------------------------------------------------------


class Simple(Workflow):
    @step
    async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
        count = await ctx.store.get("count", default=0)
        await ctx.store.set("count", count + 1)
        await ctx.store.set("nested.when", "now")
        return StopEvent(result=count + 1)


async def test_to_dict_after_a_run_is_flat_str_to_str() -> None:
    w = Simple()
    handler = w.run()
    assert await handler == 1
    data = handler.ctx.to_dict()
    assert_flat(data)
    restored = Context.from_dict(Simple(), data)
    assert await restored.store.get("count") == 1
    assert await restored.store.get("nested.when") == "now"


async def test_from_dict_accepts_bytes_like_redis_hgetall() -> None:
    handler = Simple().run()
    await handler
    data = handler.ctx.to_dict()
    as_bytes = {k.encode(): v.encode() for k, v in data.items()}
    restored = Context.from_dict(Simple(), as_bytes)
    assert await restored.store.get("count") == 1


async def test_from_dict_after_json_round_trip() -> None:
    handler = Simple().run()
    await handler
    data = handler.ctx.to_dict()
    round_tripped = json.loads(json.dumps(data))
    assert round_tripped == data
    restored = Context.from_dict(Simple(), round_tripped)
    assert await restored.store.get("count") == 1
    from_text = Context.from_dict(Simple(), json.dumps(data))
    assert await from_text.store.get("count") == 1


async def test_finished_snapshot_starts_a_new_run_keeping_the_state() -> None:
    w = Simple()
    handler = w.run()
    assert await handler == 1
    data = handler.ctx.to_dict()
    w2 = Simple()
    restored = Context.from_dict(w2, data)
    assert await w2.run(ctx=restored) == 2
    again = Context.from_dict(w2, restored.to_dict())
    assert await w2.run(ctx=again) == 3


async def test_fresh_context_snapshot_starts_a_run_with_its_state() -> None:
    w = Simple()
    ctx: Context[Any] = Context(w)
    await ctx.store.set("count", 41)
    data = ctx.to_dict()
    assert_flat(data)
    assert await w.run(ctx=Context.from_dict(w, data)) == 42


async def test_the_seed_example_save_restart_restore() -> None:
    """The seed's 'Storing data in the context object' snippet, with a dict as the db."""
    db: dict[str, dict[str, str]] = {}
    w = Simple()
    handler = w.run()
    context = handler.ctx
    await handler
    db["id"] = context.to_dict()
    # ... the process restarts ...
    w = Simple()
    context = Context.from_dict(w, db["id"])
    result = await w.run(ctx=context)
    assert result == 2


async def test_state_holding_events_and_models_round_trips() -> None:
    class Note(BaseModel):
        text: str = ""

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> Middle | StopEvent:
            await ctx.store.set("event", Middle(value=3))
            await ctx.store.set("note", Note(text="hi"))
            await ctx.store.set("pairs", {(1, 2): "tuple-key"})
            await ctx.store.set("raw", b"\x00\x01")
            return StopEvent()

        @step
        async def unused(self, ev: Middle) -> StopEvent:
            return StopEvent()

    handler = W().run()
    await handler
    restored = Context.from_dict(W(), json.loads(json.dumps(handler.ctx.to_dict())))
    event = await restored.store.get("event")
    assert isinstance(event, Middle) and event.value == 3
    note = await restored.store.get("note")
    assert isinstance(note, Note) and note.text == "hi"
    assert await restored.store.get("pairs") == {(1, 2): "tuple-key"}
    assert await restored.store.get("raw") == b"\x00\x01"


class Settings(BaseModel):
    seen: list[int] = []
    label: str = ""


async def test_typed_state_round_trips_as_its_model() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context[Settings]) -> StopEvent:
            async with ctx.store.edit_state() as state:
                state.seen.append(len(state.seen))
                state.label = "typed"
            return StopEvent(result=list((await ctx.store.get_state()).seen))

    w = W()
    handler = w.run()
    assert await handler == [0]
    restored = Context.from_dict(w, handler.ctx.to_dict())
    state = await restored.store.get_state()
    assert isinstance(state, Settings)
    assert state.label == "typed"
    assert await w.run(ctx=restored) == [0, 1]


# --- snapshots taken mid-run -----------------------------------------------------------


async def test_snapshot_from_the_handler_mid_run_resumes_the_in_flight_step() -> None:
    runs: Counter[str] = Counter()
    gate = asyncio.Event()
    in_second = asyncio.Event()

    class W(Workflow):
        @step
        async def first(self, ev: StartEvent, ctx: Context) -> Middle:
            runs["first"] += 1
            await ctx.store.set("first_done", True)
            return Middle(value=ev.x)

        @step
        async def second(self, ev: Middle, ctx: Context) -> StopEvent:
            runs["second"] += 1
            in_second.set()
            await gate.wait()
            return StopEvent(result=(ev.value, await ctx.store.get("first_done")))

    handler = W().run(x=7)
    await in_second.wait()
    data = handler.ctx.to_dict()
    assert_flat(data)
    handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler

    gate.set()
    w2 = W()
    result = await w2.run(ctx=Context.from_dict(w2, json.loads(json.dumps(data))))
    assert result == (7, True)
    assert runs == {"first": 1, "second": 2}


async def test_snapshot_inside_a_step_marks_that_step_in_flight() -> None:
    runs: Counter[str] = Counter()
    snapshots: list[dict[str, str]] = []

    class W(Workflow):
        @step
        async def first(self, ev: StartEvent, ctx: Context) -> Middle:
            runs["first"] += 1
            return Middle(value=1)

        @step
        async def second(self, ev: Middle, ctx: Context) -> Done:
            runs["second"] += 1
            await ctx.store.set("progress", "half")
            snapshots.append(ctx.to_dict())
            return Done(n=ev.value)

        @step
        async def third(self, ev: Done, ctx: Context) -> StopEvent:
            runs["third"] += 1
            return StopEvent(result=await ctx.store.get("progress"))

    w = W()
    assert await w.run() == "half"
    assert runs == {"first": 1, "second": 1, "third": 1}
    (snapshot,) = snapshots
    assert_flat(snapshot)

    restored = Context.from_dict(W(), snapshot)
    assert await restored.store.get("progress") == "half"
    assert await W().run(ctx=restored) == "half"
    # second ran again from its input; first did not
    assert runs == {"first": 1, "second": 2, "third": 2}


async def test_sync_step_can_snapshot_too() -> None:
    snapshots: list[dict[str, str]] = []

    class W(Workflow):
        @step
        def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            snapshots.append(ctx.to_dict())
            return StopEvent(result="ok")

    assert await W().run() == "ok"
    assert_flat(snapshots[0])


async def test_seed_document_loop_resumes_after_a_crash() -> None:
    """The seed's Redis example, with a dict standing in for the Redis hash."""
    redis: dict[str, dict[bytes, bytes]] = {}
    converted: list[int] = []
    crash_after: list[int] = [2]

    class DurableWorkflow(Workflow):
        @step
        async def convert_documents(self, ev: StartEvent, ctx: Context) -> StopEvent:
            converted_ids = await ctx.store.get("converted_ids", default=[])
            for doc_id in ev.ids:
                if doc_id in converted_ids:
                    continue
                if crash_after and len(converted) == crash_after[0]:
                    raise RuntimeError("the process died")
                converted.append(doc_id)
                converted_ids.append(doc_id)
                await ctx.store.set("converted_ids", converted_ids)
                redis["ctx"] = {k.encode(): v.encode() for k, v in ctx.to_dict().items()}
            return StopEvent(result=converted_ids)

    with pytest.raises(RuntimeError, match="died"):
        await DurableWorkflow().run(ids=[1, 2, 3, 4])
    assert converted == [1, 2]

    crash_after.clear()
    w = DurableWorkflow()
    restored = Context.from_dict(w, redis["ctx"])
    assert await w.run(ctx=restored) == [1, 2, 3, 4]
    assert converted == [1, 2, 3, 4]  # 1 and 2 were not converted again


async def test_snapshot_with_queued_work_and_a_partial_collect_buffer() -> None:
    runs: Counter[int] = Counter()
    gate = asyncio.Event()
    blocked = asyncio.Event()

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Item | None:
            for n in range(4):
                ctx.send_event(Item(n=n))
            return None

        @step(num_workers=1)
        async def work(self, ev: Item) -> Done:
            runs[ev.n] += 1
            if ev.n == 1:
                blocked.set()
                await gate.wait()
            return Done(n=ev.n)

        @step
        async def gather(self, ev: Done, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Done] * 4)
            return None if got is None else StopEvent(result=[e.n for e in got])

    handler = W().run()
    await blocked.wait()
    data = handler.ctx.to_dict()  # Done(0) is buffered, 1 in flight, 2 and 3 queued
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler

    gate.set()
    w = W()
    assert await w.run(ctx=Context.from_dict(w, data)) == [0, 1, 2, 3]
    assert runs == {0: 1, 1: 2, 2: 1, 3: 1}


async def test_snapshot_of_a_run_waiting_for_a_human() -> None:
    runs: Counter[str] = Counter()

    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            runs["ask"] += 1
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="name?")
            )
            return StopEvent(result=f"hello {answer.response}")

    handler = W().run()
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            break
    data = handler.ctx.to_dict()
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler

    w = W()
    handler2 = w.run(ctx=Context.from_dict(w, data))
    await asyncio.sleep(0.01)
    handler2.ctx.send_event(HumanResponseEvent(response="Ada"))
    assert await handler2 == "hello Ada"
    assert runs["ask"] == 2  # the first run, then the re-run with the answer


async def test_a_snapshot_carries_a_stopped_run_clock() -> None:
    """The time a to_dict() payload is kept is not active time: its clock is stopped, so a
    send that reaches the restored run before it begins cannot time it out (the committed
    sample tests/stores/data/wait.json, taken long ago, checks the same)."""

    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="name?")
            )
            return StopEvent(result=answer.response)

    handler = W(timeout=5).run()
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            break
    data = handler.ctx.to_dict()
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    assert json.loads(data["active_since"]) is None
    assert 0 <= json.loads(data["active_elapsed"]) < 5

    w = W(timeout=5)
    restored = w.run(ctx=Context.from_dict(w, data))
    await restored.send_event(HumanResponseEvent(response="Ada"))  # before it begins
    assert await asyncio.wait_for(restored, 10) == "Ada"


# --- serializers ---------------------------------------------------------------------


async def test_non_json_value_fails_to_dict_naming_the_key() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("conn", Opaque("secret"))
            return StopEvent()

    handler = W().run()
    await handler
    with pytest.raises(ContextSerdeError, match="conn") as info:
        handler.ctx.to_dict()
    assert "Opaque" in str(info.value)
    assert "PickleSerializer" in str(info.value)


async def test_pickle_serializer_only_when_asked() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("conn", Opaque("secret"))
            return StopEvent()

    handler = W().run()
    await handler
    data = handler.ctx.to_dict(serializer=PickleSerializer())
    assert_flat(data)
    with pytest.raises(ContextSerdeError, match="PickleSerializer"):
        Context.from_dict(W(), data)
    restored = Context.from_dict(W(), data, serializer=PickleSerializer())
    assert await restored.store.get("conn") == Opaque("secret")


async def test_context_with_pickle_serializer_set_at_construction() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("conn", Opaque(ev.tag))
            return StopEvent()

    w = W()
    ctx: Context[Any] = Context(w, serializer=PickleSerializer())
    await w.run(ctx=ctx, tag="t")
    data = ctx.to_dict()
    restored = Context.from_dict(w, data, serializer=PickleSerializer())
    assert await restored.store.get("conn") == Opaque("t")


# --- bad data -------------------------------------------------------------------------


async def _finished_snapshot() -> dict[str, str]:
    handler = Simple().run()
    await handler
    return handler.ctx.to_dict()


async def test_unknown_version_is_refused() -> None:
    data = await _finished_snapshot()
    data["version"] = json.dumps("999")
    with pytest.raises(ContextSerdeError, match="version"):
        Context.from_dict(Simple(), data)


async def test_damaged_json_value_is_refused_naming_the_key() -> None:
    data = await _finished_snapshot()
    data["state"] = '{"count": 1'
    with pytest.raises(ContextSerdeError, match="state"):
        Context.from_dict(Simple(), data)


async def test_missing_parts_are_refused() -> None:
    data = await _finished_snapshot()
    del data["state"]
    with pytest.raises(ContextSerdeError):
        Context.from_dict(Simple(), data)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"hello": '"world"'},
        "not json at all",
        b"\xff\xfe",
        "[1, 2, 3]",
    ],
)
def test_garbage_is_refused(payload: Any) -> None:
    with pytest.raises(ContextSerdeError):
        Context.from_dict(Simple(), payload)


async def test_wrong_shapes_inside_a_valid_payload_are_refused() -> None:
    data = await _finished_snapshot()
    data["work"] = json.dumps([{"nonsense": True}])
    with pytest.raises(ContextSerdeError):
        Context.from_dict(Simple(), data)
    data = await _finished_snapshot()
    data["counter"] = json.dumps("many")
    with pytest.raises(ContextSerdeError):
        Context.from_dict(Simple(), data)


async def test_unknown_type_name_is_never_imported(tmp_path: Path) -> None:
    module = "piton_test_never_import_me"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('yes')\n"
        "from pydantic import BaseModel\n"
        "class Evil(BaseModel):\n"
        "    pass\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        data = await _finished_snapshot()
        data["state"] = json.dumps(
            {"count": {"__piton__": "model", "type": f"{module}.Evil", "data": {}}}
        )
        with pytest.raises(ContextSerdeError, match=f"{module}.Evil"):
            Context.from_dict(Simple(), data)
        assert module not in sys.modules
        assert not marker.exists()
    finally:
        sys.path.remove(str(tmp_path))


async def test_event_type_unknown_to_the_workflow_is_refused() -> None:
    data = await _finished_snapshot()
    work = [
        {
            "step": "only",
            "id": "e99",
            "event": {"__piton__": "model", "type": "nowhere.Missing", "data": {}},
        }
    ]
    data["work"] = json.dumps(work)
    with pytest.raises(ContextSerdeError, match="nowhere.Missing"):
        Context.from_dict(Simple(), data)


async def test_work_for_a_step_the_workflow_lacks_is_refused() -> None:
    from piton import PitonError

    data = await _finished_snapshot()
    work = [
        {
            "step": "gone",
            "id": "e99",
            "event": {"__piton__": "model", "type": "piton.events.StartEvent", "data": {}},
        }
    ]
    data["work"] = json.dumps(work)
    with pytest.raises(PitonError, match="gone"):
        Context.from_dict(Simple(), data)


async def test_snapshots_from_a_threaded_step_while_other_steps_write() -> None:
    class Write(Event):
        pass

    class Snap(Event):
        pass

    class W(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Write | Snap | None:
            ctx.send_event(Write())
            ctx.send_event(Snap())
            return None

        @step
        async def writer(self, ev: Write, ctx: Context) -> None:
            for i in range(4000):
                await ctx.store.set(f"k{i}", i)
                if i % 10 == 0:
                    await asyncio.sleep(0)
            await ctx.store.set("done", True)
            return None

        @step
        def snapper(self, ev: Snap, ctx: Context) -> StopEvent:
            while True:
                data = ctx.to_dict()
                if json.loads(data["state"]).get("done"):
                    return StopEvent(result=len(json.loads(data["state"])))

    assert await W(timeout=30).run() == 4001


async def test_snapshot_during_a_retry_back_off_resumes_the_retry() -> None:
    from piton.retry import retry_policy, stop_after_attempt, wait_fixed

    attempts: list[int] = []
    failed_once = asyncio.Event()

    class W(Workflow):
        @step(retry_policy=retry_policy(wait=wait_fixed(0.2), stop=stop_after_attempt(3)))
        async def flaky(self, ev: StartEvent, ctx: Context) -> StopEvent:
            attempts.append(ctx.retry_info().retry_number)
            if ctx.retry_info().retry_number == 0:
                failed_once.set()
                raise RuntimeError("first attempt fails")
            return StopEvent(result=ctx.retry_info().retry_number)

    handler = W().run()
    await failed_once.wait()
    await asyncio.sleep(0.01)  # now in the back-off
    data = handler.ctx.to_dict()
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    assert attempts == [0]

    w = W()
    assert await w.run(ctx=Context.from_dict(w, json.loads(json.dumps(data)))) == 1
    assert attempts == [0, 1]


async def test_restored_waiter_keeps_its_timeout() -> None:
    outcomes: list[str] = []

    class W(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            try:
                await ctx.wait_for_event(
                    HumanResponseEvent, waiter_event=InputRequiredEvent(), timeout=0.1
                )
            except TimeoutError:
                outcomes.append("timed out")
                return StopEvent(result="timed out")
            return StopEvent(result="answered")

    handler = W().run()
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            break
    data = handler.ctx.to_dict()
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler

    w = W(timeout=5)
    assert await w.run(ctx=Context.from_dict(w, data)) == "timed out"
    assert outcomes == ["timed out"]


async def test_snapshot_of_a_failed_run_starts_a_new_run_with_its_state() -> None:
    class Boom(Exception):
        pass

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            tries = await ctx.store.get("tries", default=0) + 1
            await ctx.store.set("tries", tries)
            if tries == 1:
                raise Boom("first run fails")
            return StopEvent(result=tries)

    w = W()
    handler = w.run()
    with pytest.raises(Boom):
        await handler
    data = handler.ctx.to_dict()
    assert_flat(data)
    assert await w.run(ctx=Context.from_dict(w, data)) == 2


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Rich(Event):
    id: uuid.UUID
    color: Color
    price: decimal.Decimal
    path: pathlib.Path
    when: datetime.datetime


class RichState(BaseModel):
    owner: uuid.UUID | None = None
    colors: list[Color] = []


async def test_fields_of_types_pydantic_serializes_round_trip() -> None:
    made = Rich(
        id=uuid.uuid4(),
        color=Color.BLUE,
        price=decimal.Decimal("9.99"),
        path=pathlib.Path("/data/in.csv"),
        when=datetime.datetime(2024, 5, 1, 12, 30),
    )
    snapshots: list[dict[str, str]] = []

    class W(Workflow):
        @step
        async def first(self, ev: StartEvent, ctx: Context[RichState]) -> Rich:
            async with ctx.store.edit_state() as state:
                state.owner = made.id
                state.colors = [Color.RED, Color.BLUE]
            return made

        @step
        async def second(self, ev: Rich, ctx: Context[RichState]) -> StopEvent:
            snapshots.append(ctx.to_dict())  # `ev` is in flight: stored in the snapshot
            return StopEvent(result=ev)

    w = W()
    assert await w.run() == made
    restored = Context.from_dict(w, json.loads(json.dumps(snapshots[0])))
    state = await restored.store.get_state()
    assert state.owner == made.id and state.colors == [Color.RED, Color.BLUE]
    again = await w.run(ctx=restored)
    assert isinstance(again, Rich)
    assert again == made
    assert isinstance(again.id, uuid.UUID) and again.color is Color.BLUE


async def test_unserializable_value_in_a_declared_any_field_still_fails() -> None:
    class Holder(Event):
        thing: Any

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("holder", Holder(thing=Opaque("x")))
            return StopEvent()

    handler = W().run()
    await handler
    with pytest.raises(ContextSerdeError, match="thing"):
        handler.ctx.to_dict()
