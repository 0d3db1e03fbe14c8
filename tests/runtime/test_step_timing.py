"""Step outcomes in the journal name their step and how long the attempt took
(``step`` and ``took``), for people reading the journal as plain JSON (``piton show``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from piton import Context, Event, HumanResponseEvent, StartEvent, StopEvent, Workflow, step
from piton._core import inputs as i
from piton._journal_codec import decode_input, encode_input
from piton.errors import ContextSerdeError, RunNotFound
from piton.retry import retry_policy, stop_after_attempt, wait_fixed
from piton.serde import JsonSerializer, TypeResolver
from piton.stores import Store, open_store


class Mid(Event):
    n: int


class Timed(Workflow):
    @step
    async def first(self, ev: StartEvent, ctx: Context) -> Mid:
        await asyncio.sleep(0.05)
        return Mid(n=1)

    @step(retry_policy=retry_policy(wait=wait_fixed(0.01), stop=stop_after_attempt(2)))
    async def flaky(self, ev: Mid, ctx: Context) -> StopEvent:
        if await ctx.store.get("failed", default=False) is False:
            await ctx.store.set("failed", True)
            raise RuntimeError("once")
        answer = await ctx.wait_for_event(HumanResponseEvent)
        return StopEvent(result=answer.response)


async def _entries(store: Store, run_id: str) -> list[dict[str, Any]]:
    try:
        loaded = await store.load(run_id)
    except RunNotFound:
        return []
    return [json.loads(text) for _, text in loaded.entries]


async def test_step_outcomes_carry_the_step_name_and_duration(store_url: str | Store) -> None:
    reader = open_store(store_url)
    w = Timed(store=store_url, timeout=10)
    handler = w.run(run_id="timed")
    while True:
        entries = await _entries(reader, "timed")
        if any(e["k"] == "StepWaits" for e in entries):
            break
        await asyncio.sleep(0.02)
    await handler.send_event(HumanResponseEvent(response="yes"))
    assert await asyncio.wait_for(handler, 10) == "yes"
    # a store may fold a finished run's journal into its snapshot: check what is there
    entries += [e for e in await _entries(reader, "timed") if e not in entries]

    outcomes = [e for e in entries if e["k"].startswith("Step")]
    assert [(e["k"], e["step"]) for e in outcomes][:3] == [
        ("StepDone", "first"),
        ("StepFailed", "flaky"),
        ("StepWaits", "flaky"),
    ]
    assert all(e["step"] for e in outcomes)
    for e in outcomes:
        assert isinstance(e["took"], float) and e["took"] >= 0
        assert e["took"] == round(e["took"], 6)
        assert list(e)[-2:] == ["step", "took"]  # written after the older keys
    assert outcomes[0]["took"] >= 0.04  # the step's sleep


def test_entries_without_them_read_and_write_back_unchanged() -> None:
    s = JsonSerializer()
    types = TypeResolver([])
    old = '{"k":"StepDone","at":1.5,"exec_id":"x1","result":null,"sends":[]}'
    item = decode_input(old, s, types)
    assert isinstance(item, i.StepDone)
    assert item.step == "" and item.took is None
    assert encode_input(item, s) == old
    new = i.StepFailed(2.0, "x2", RuntimeError("boom"), None, "flaky", 0.25)
    text = encode_input(new, s)
    assert json.loads(text)["step"] == "flaky" and json.loads(text)["took"] == 0.25
    back = decode_input(text, s, types)
    assert isinstance(back, i.StepFailed)
    assert (back.step, back.took) == ("flaky", 0.25)


@pytest.mark.parametrize("bad", ['"step":3', '"took":"slow"'])
def test_damaged_step_or_took_is_refused(bad: str) -> None:
    text = '{"k":"StepDone","at":1.5,"exec_id":"x1",' + bad + "}"
    with pytest.raises(ContextSerdeError):
        decode_input(text, JsonSerializer(), TypeResolver([]))
