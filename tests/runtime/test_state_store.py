"""The state store: ctx.store paths, whole-state access, typed state and concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from piton import (
    Context,
    DictState,
    Event,
    StartEvent,
    StateKeyError,
    StopEvent,
    Workflow,
    step,
)


class Tick(Event):
    n: int


class Tock(Event):
    n: int


async def test_get_set_with_dotted_paths_and_defaults() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("user.name", "Ada")
            await ctx.store.set("user.langs", ["py"])
            await ctx.store.set("count", 1)
            return StopEvent(
                result={
                    "name": await ctx.store.get("user.name"),
                    "user": await ctx.store.get("user"),
                    "missing": await ctx.store.get("user.age", default=36),
                    "none_default": await ctx.store.get("nope", default=None),
                    "count": await ctx.store.get("count"),
                    "first_lang": await ctx.store.get("user.langs.0"),
                }
            )

    assert await W().run() == {
        "name": "Ada",
        "user": {"name": "Ada", "langs": ["py"]},
        "missing": 36,
        "none_default": None,
        "count": 1,
        "first_lang": "py",
    }


async def test_missing_key_without_default_raises_naming_the_path() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.get("no.such.path")
            return StopEvent()

    with pytest.raises(StateKeyError, match="no.such.path") as info:
        await W().run()
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ValueError)  # what llama-index-workflows raises


async def test_get_returns_a_copy() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("items", [1])
            items = await ctx.store.get("items")
            items.append(2)  # not written back until set()
            before = await ctx.store.get("items")
            await ctx.store.set("items", items)
            return StopEvent(result=(before, await ctx.store.get("items")))

    assert await W().run() == ([1], [1, 2])


async def test_set_stores_a_copy() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            value = {"a": 1}
            await ctx.store.set("v", value)
            value["a"] = 99
            return StopEvent(result=await ctx.store.get("v"))

    assert await W().run() == {"a": 1}


async def test_empty_path_is_refused() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("", 1)
            return StopEvent()

    with pytest.raises(StateKeyError):
        await W().run()


async def test_get_state_set_state_and_edit_state_untyped() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("a", 1)
            state = await ctx.store.get_state()
            assert isinstance(state, DictState)
            assert state["a"] == 1
            assert state.a == 1
            state["b"] = 2
            await ctx.store.set_state(state)
            async with ctx.store.edit_state() as s:
                s["c"] = s["a"] + s["b"]
            await ctx.store.set_state({"replaced": True, **(await ctx.store.get_state()).to_dict()})
            return StopEvent(result=(await ctx.store.get_state()).to_dict())

    assert await W().run() == {"replaced": True, "a": 1, "b": 2, "c": 3}


async def test_edit_state_is_discarded_when_the_block_raises() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("a", 1)
            with pytest.raises(RuntimeError):
                async with ctx.store.edit_state() as s:
                    s["a"] = 2
                    raise RuntimeError("abort")
            return StopEvent(result=await ctx.store.get("a"))

    assert await W().run() == 1


class Profile(BaseModel):
    name: str = ""
    visits: int = 0
    tags: list[str] = []


async def test_typed_state_with_context_generic() -> None:
    class W(Workflow):
        @step
        async def first(self, ev: StartEvent, ctx: Context[Profile]) -> Tick:
            state = await ctx.store.get_state()
            assert isinstance(state, Profile)
            assert state.visits == 0
            state.name = ev.name
            await ctx.store.set_state(state)
            return Tick(n=1)

        @step
        async def second(self, ev: Tick, ctx: Context[Profile]) -> StopEvent:
            async with ctx.store.edit_state() as state:
                state.visits += 1
                state.tags.append("seen")
            await ctx.store.set("visits", (await ctx.store.get("visits")) + 10)
            final = await ctx.store.get_state()
            return StopEvent(result=final)

    out = await W().run(name="Ada")
    assert isinstance(out, Profile)
    assert out == Profile(name="Ada", visits=11, tags=["seen"])


async def test_typed_state_refuses_another_type() -> None:
    class Other(BaseModel):
        x: int = 0

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context[Profile]) -> StopEvent:
            await ctx.store.set_state(Other())  # type: ignore[arg-type]
            return StopEvent()

    from piton import PitonError

    with pytest.raises(PitonError, match="Profile"):
        await W().run()


async def test_typed_state_is_visible_from_the_handler() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context[Profile]) -> StopEvent:
            await ctx.store.set("name", "from-step")
            return StopEvent()

    handler = W().run()
    await handler
    state = await handler.ctx.store.get_state()
    assert isinstance(state, Profile)
    assert state.name == "from-step"


async def test_concurrent_edit_state_increments_are_exact() -> None:
    n = 50

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Tick | None:
            await ctx.store.set("count", 0)
            for i in range(n):
                ctx.send_event(Tick(n=i))
            return None

        @step(num_workers=16)
        async def bump(self, ev: Tick, ctx: Context) -> Tock:
            async with ctx.store.edit_state() as state:
                value = state["count"]
                await asyncio.sleep(0)  # give other workers a chance to interleave
                state["count"] = value + 1
            return Tock(n=ev.n)

        @step
        async def join(self, ev: Tock, ctx: Context) -> StopEvent | None:
            if ctx.collect_events(ev, [Tock] * n) is None:
                return None
            return StopEvent(result=await ctx.store.get("count"))

    assert await W().run() == n


async def test_state_written_by_one_step_is_visible_to_a_concurrent_step() -> None:
    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Tick | Tock | None:
            ctx.send_event(Tick(n=0))
            ctx.send_event(Tock(n=0))
            return None

        @step
        async def writer(self, ev: Tick, ctx: Context) -> StopEvent | None:
            await asyncio.sleep(0.01)
            await ctx.store.set("flag", "written")
            return None

        @step
        async def reader(self, ev: Tock, ctx: Context) -> StopEvent:
            for _ in range(200):
                value = await ctx.store.get("flag", default=None)
                if value is not None:
                    return StopEvent(result=value)
                await asyncio.sleep(0.005)
            return StopEvent(result="never saw it")

    assert await W().run() == "written"


async def test_state_is_fresh_for_each_run_without_ctx() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            count = await ctx.store.get("count", default=0)
            await ctx.store.set("count", count + 1)
            return StopEvent(result=count + 1)

    w = W()
    assert await w.run() == 1
    assert await w.run() == 1


async def test_state_carries_over_when_reusing_the_ctx() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            count = await ctx.store.get("count", default=0)
            await ctx.store.set("count", count + 1)
            return StopEvent(result=count + 1)

    w = W()
    handler = w.run()
    assert await handler == 1
    assert await w.run(ctx=handler.ctx) == 2
    assert await w.run(ctx=handler.ctx) == 3


async def test_state_set_before_the_run_on_a_fresh_context() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            return StopEvent(result=await ctx.store.get("seed"))

    w = W()
    ctx: Context[Any] = Context(w)
    await ctx.store.set("seed", 42)
    assert await ctx.store.get("seed") == 42
    assert await w.run(ctx=ctx) == 42


async def test_handler_ctx_store_reads_state_after_the_run() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("k", {"nested": [1, 2]})
            return StopEvent()

    handler = W().run()
    await handler
    assert await handler.ctx.store.get("k.nested") == [1, 2]
    await handler.ctx.store.set("k.other", 3)
    assert await handler.ctx.store.get("k") == {"nested": [1, 2], "other": 3}
