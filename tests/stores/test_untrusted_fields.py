"""No silent data changes: a value that cannot be stored as itself is refused, naming where.

Event fields fall back to pydantic's JSON form only for values it gives back unchanged;
``ctx.store.set`` of a value that cannot even be copied names the key.
"""

from __future__ import annotations

import asyncio
import decimal
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from piton import Context, ContextSerdeError, Event, StartEvent, StopEvent, Workflow, step
from piton.serde import JsonSerializer
from piton.stores.sqlite import SqliteStore


class Lines(Event):
    fh: Iterable[str]


opened: list[Any] = []


class ReadLines(Workflow):
    @step
    def open_it(self, ev: StartEvent) -> Lines:  # a sync step: it runs in a thread
        opened.append(open(ev.path))  # noqa: SIM115 - the handle is the point
        return Lines(fh=opened[-1])

    @step
    async def read_it(self, ev: Lines) -> StopEvent:
        return StopEvent(result="".join(ev.fh))


async def test_an_open_file_in_an_event_fails_the_durable_run_naming_type_and_field(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a\nb\n")
    try:
        assert await ReadLines().run(path=str(source)) == "a\nb\n"  # in memory: not stored
        w = ReadLines(store=SqliteStore(tmp_path / "runs.db"))
        with pytest.raises(ContextSerdeError) as info:  # before: the next step read ''
            await asyncio.wait_for(w.run(run_id="lines", path=str(source)), 10)
        assert opened[-1].read() == "a\nb\n"  # the handle was not used up
    finally:
        while opened:
            opened.pop().close()
    message = str(info.value)
    assert "Lines" in message and "'fh'" in message and "content or its path" in message


def test_encoding_refuses_a_file_without_using_it_up(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a\nb\n")
    with source.open() as fh:
        event = Lines(fh=fh)
        with pytest.raises(ContextSerdeError, match="field 'fh' of Lines"):
            JsonSerializer().encode(event)
        assert fh.read() == "a\nb\n"


class Numbers(Event):
    numbers: Iterable[int]


def test_a_generator_field_is_refused_and_not_consumed() -> None:
    seen: list[int] = []

    def numbers() -> Iterator[int]:
        for n in range(3):
            seen.append(n)
            yield n

    with pytest.raises(ContextSerdeError, match="field 'numbers' of Numbers"):
        JsonSerializer().encode(Numbers(numbers=numbers()))
    assert seen == []


class Loose(Event):
    anything: Any = None
    table: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("field", "value", "comes_back_as"),
    [
        ("anything", uuid.UUID(int=7), "str"),
        ("table", {"price": decimal.Decimal("9.99")}, "dict"),
        ("anything", object(), None),
    ],
)
def test_values_pydantic_would_change_are_refused(
    field: str, value: Any, comes_back_as: str | None
) -> None:
    with pytest.raises(ContextSerdeError, match=f"field '{field}' of Loose") as info:
        JsonSerializer().encode(Loose(**{field: value}))
    if comes_back_as is not None:
        assert f"would come back as {comes_back_as}" in str(info.value)


class Typed(Event):
    id: uuid.UUID
    prices: dict[str, decimal.Decimal]
    where: Path


def test_values_pydantic_gives_back_unchanged_are_stored() -> None:
    ser = JsonSerializer()
    event = Typed(id=uuid.UUID(int=7), prices={"a": decimal.Decimal("9.99")}, where=Path("/x"))
    back = ser.loads(ser.dumps(event), _types(Typed))
    assert back == event and isinstance(back.id, uuid.UUID)


def _types(*classes: type[Any]) -> Any:
    from piton._core.graph import type_key
    from piton.serde import TypeResolver

    return TypeResolver({type_key(c): c for c in classes})


# --- ctx.store.set of what cannot be kept ------------------------------------------------------


@pytest.mark.parametrize("make", [threading.Lock, lambda: open(__file__)])  # noqa: SIM115
async def test_store_set_of_an_uncopyable_value_names_the_key(make: Any) -> None:
    value = make()
    messages: list[str] = []

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            try:
                await ctx.store.set("resources.handle", value)
            except ContextSerdeError as exc:
                messages.append(str(exc))
            return StopEvent(result=await ctx.store.get("resources.handle", default=None))

    try:
        assert await W().run() is None  # before: a bare TypeError from deepcopy
    finally:
        if hasattr(value, "close"):
            value.close()
    assert "resources.handle" in messages[0]
    assert type(value).__qualname__ in messages[0]
    assert "instead" in messages[0]


async def test_store_set_of_an_uncopyable_value_in_a_durable_run(tmp_path: Path) -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("lock", threading.Lock())
            return StopEvent()

    with pytest.raises(ContextSerdeError, match="'lock'.*lock"):
        await asyncio.wait_for(W(store=SqliteStore(tmp_path / "r.db")).run(run_id="l"), 10)
