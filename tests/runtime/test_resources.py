"""Resources: Annotated[T, Resource(factory)] injection, sync and async factories, caching."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Annotated, Any

import pytest

from piton import (
    Context,
    Event,
    Resource,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)


class Client:
    ids = itertools.count()

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.id = next(self.ids)


class Next(Event):
    pass


made: list[Client] = []


def make_client() -> Client:
    client = Client("sync")
    made.append(client)
    return client


async def make_async_client() -> Client:
    await asyncio.sleep(0)
    client = Client("async")
    made.append(client)
    return client


def make_fresh() -> Client:
    client = Client("fresh")
    made.append(client)
    return client


@pytest.fixture(autouse=True)
def _reset() -> None:
    made.clear()


class Shared(Workflow):
    @step
    async def first(
        self, ev: StartEvent, ctx: Context, client: Annotated[Client, Resource(make_client)]
    ) -> Next:
        await ctx.store.set("first", client.id)
        return Next()

    @step
    async def second(
        self, ev: Next, ctx: Context, client: Annotated[Client, Resource(make_client)]
    ) -> StopEvent:
        return StopEvent(result=(await ctx.store.get("first"), client.id, client.kind))


async def test_sync_factory_is_injected_and_cached_across_steps() -> None:
    first, second, kind = await Shared().run()
    assert first == second
    assert kind == "sync"
    assert len(made) == 1


async def test_cached_resource_is_shared_across_runs_of_one_instance() -> None:
    w = Shared()
    one = await w.run()
    two = await w.run()
    assert one[1] == two[1]
    assert len(made) == 1


async def test_each_workflow_instance_has_its_own_cached_resources() -> None:
    one = await Shared().run()
    two = await Shared().run()
    assert one[1] != two[1]
    assert len(made) == 2


async def test_async_factory() -> None:
    class W(Workflow):
        @step
        async def only(
            self, ev: StartEvent, client: Annotated[Client, Resource(make_async_client)]
        ) -> StopEvent:
            return StopEvent(result=client.kind)

    assert await W().run() == "async"
    assert [c.kind for c in made] == ["async"]


async def test_cache_false_makes_a_new_object_each_time() -> None:
    class W(Workflow):
        @step
        async def first(
            self,
            ev: StartEvent,
            ctx: Context,
            client: Annotated[Client, Resource(make_fresh, cache=False)],
        ) -> Next:
            await ctx.store.set("first", client.id)
            return Next()

        @step
        async def second(
            self,
            ev: Next,
            ctx: Context,
            client: Annotated[Client, Resource(make_fresh, cache=False)],
        ) -> StopEvent:
            return StopEvent(result=(await ctx.store.get("first"), client.id))

    w = W()
    first, second = await w.run()
    assert first != second
    await w.run()
    assert len(made) == 4
    assert len({c.id for c in made}) == 4


async def test_resource_in_a_sync_step() -> None:
    class W(Workflow):
        @step
        def only(
            self, ev: StartEvent, client: Annotated[Client, Resource(make_client)]
        ) -> StopEvent:
            return StopEvent(result=client.kind)

    assert await W().run() == "sync"


async def test_concurrent_steps_create_a_cached_resource_once() -> None:
    created = 0

    async def slow_factory() -> dict[str, int]:
        nonlocal created
        created += 1
        await asyncio.sleep(0.01)
        return {"n": created}

    class Part(Event):
        n: int

    class W(Workflow):
        @step
        async def fan(self, ev: StartEvent, ctx: Context) -> Part | None:
            for i in range(6):
                ctx.send_event(Part(n=i))
            return None

        @step(num_workers=6)
        async def use(
            self, ev: Part, ctx: Context, res: Annotated[dict[str, int], Resource(slow_factory)]
        ) -> StopEvent | None:
            got = ctx.collect_events(ev, [Part] * 6)
            return None if got is None else StopEvent(result=res["n"])

    assert await W().run() == 1
    assert created == 1


async def test_resources_are_not_serialized() -> None:
    handler = Shared().run()
    await handler
    data = handler.ctx.to_dict()
    assert "Client" not in json.dumps(data)


async def test_seed_style_factory_accepting_args() -> None:
    def get_client(*args: Any, **kwargs: Any) -> Client:
        return Client("seed")

    class W(Workflow):
        @step
        async def only(
            self, ev: StartEvent, client: Annotated[Client, Resource(get_client)]
        ) -> StopEvent:
            return StopEvent(result=client.kind)

    assert await W().run() == "seed"


def test_resource_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        Resource("not callable")  # type: ignore[arg-type]


async def test_a_failing_factory_fails_the_run_with_its_error() -> None:
    def broken() -> Client:
        raise ConnectionError("cannot connect")

    class W(Workflow):
        @step
        async def only(
            self, ev: StartEvent, client: Annotated[Client, Resource(broken)]
        ) -> StopEvent:
            return StopEvent()

    with pytest.raises(ConnectionError, match="cannot connect"):
        await W().run()
