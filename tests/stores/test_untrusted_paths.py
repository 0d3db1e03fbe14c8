"""State paths reach only state data: dict keys, list indices, model fields. Never attributes.

A path comes from step code (``ctx.store.set``) and from stored data (a journal's SetState
entry, replayed by the reducer), so it is untrusted: a dunder path must not walk into
classes, modules and builtins.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from piton import (
    Context,
    HumanResponseEvent,
    PitonError,
    StartEvent,
    StateKeyError,
    StopEvent,
    Workflow,
    step,
)
from piton._core.paths import MISSING, get_path
from piton._core.reducer import set_path  # the name existing callers import
from piton.stores.sqlite import SqliteStore

EVIL = "m.__class__.__init__.__globals__.__builtins__.piton_path_test"


@pytest.fixture(autouse=True)
def _no_builtin_left() -> Any:
    yield
    if hasattr(builtins, "piton_path_test"):
        delattr(builtins, "piton_path_test")
        pytest.fail("a state path set a builtin")


def test_a_dunder_path_cannot_set_a_builtin() -> None:
    with pytest.raises(StateKeyError) as info:
        set_path({"m": StartEvent()}, EVIL, 1)
    assert not hasattr(builtins, "piton_path_test")
    assert EVIL in str(info.value) and "'__class__'" in str(info.value)


def test_a_dunder_path_cannot_be_read() -> None:
    with pytest.raises(StateKeyError, match="__class__"):
        get_path({"m": StartEvent()}, "m.__class__")
    with pytest.raises(StateKeyError, match="_private"):
        get_path({"m": {"_private": 1}}, "m._private")


@pytest.mark.parametrize(
    "path", ["", "a..b", ".a", "a.", "_x", "a._b", "a.__dict__", ".".join(["k"] * 65)]
)
def test_malformed_paths_are_refused_for_get_and_set(path: str) -> None:
    with pytest.raises(StateKeyError):
        set_path({}, path, 1)
    with pytest.raises(StateKeyError):
        get_path({}, path)


def test_non_string_path_is_refused() -> None:
    with pytest.raises(StateKeyError, match="non-empty string"):
        set_path({}, 3, 1)  # type: ignore[arg-type]  # what a damaged journal row may hold


def test_methods_and_class_attributes_of_models_are_not_state() -> None:
    ev = StartEvent(x=1)
    assert get_path({"m": ev}, "m.x") == 1
    assert get_path({"m": ev}, "m.model_fields") is MISSING
    assert get_path({"m": ev}, "m.model_dump") is MISSING
    assert get_path({"n": 5}, "n.real") is MISSING
    assert get_path({"s": "text"}, "s.upper") is MISSING
    # on a model that takes extra fields, a new key is data, never an attribute
    set_path({"m": ev}, "m.model_dump", "shadow")
    assert callable(type(ev).model_dump) and ev.model_dump()["model_dump"] == "shadow"


class Profile(BaseModel):
    name: str = ""
    tags: list[str] = []
    extra_info: dict[str, Any] = {}


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str = ""


def test_declared_fields_of_typed_state_are_reachable() -> None:
    state = {"profile": Profile(tags=["a", "b"])}
    set_path(state, "profile.name", "Ada")
    set_path(state, "profile.tags.1", "c")
    set_path(state, "profile.extra_info.city.zip", "1000")
    assert state["profile"] == Profile(
        name="Ada", tags=["a", "c"], extra_info={"city": {"zip": "1000"}}
    )
    assert get_path(state, "profile.tags.-1") == "c"
    assert get_path(state, "profile.tags.5") is MISSING


@pytest.mark.parametrize(
    ("root", "path", "segment"),
    [
        ({"p": Profile()}, "p.nickname", "nickname"),  # undeclared, no extras
        ({"p": Frozen()}, "p.name", "name"),  # frozen
        ({"n": 5}, "n.real", "real"),  # into a scalar
        ({"o": object()}, "o.x", "x"),  # into any other object
        ({"l": [1]}, "l.3", "3"),  # no such index
        ({"l": [1]}, "l.x", "x"),  # not an index
    ],
)
def test_set_path_names_the_path_and_segment_and_changes_nothing(
    root: dict[str, Any], path: str, segment: str
) -> None:
    before = repr(root)
    with pytest.raises(StateKeyError) as info:
        set_path(root, path, {"new": 1})
    assert f"'{path}'" in str(info.value) and f"segment '{segment}'" in str(info.value)
    assert repr(root) == before


async def test_ctx_store_refuses_bad_paths_and_keeps_the_state() -> None:
    outcomes: list[str] = []

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("count", 1)
            for path in ("count.__class__", "count.x.y", "__builtins__"):
                try:
                    await ctx.store.set(path, 2)
                except StateKeyError as exc:
                    outcomes.append(str(exc))
            try:
                await ctx.store.get("count.__class__", default=None)
            except StateKeyError as exc:
                outcomes.append(str(exc))
            return StopEvent(result=await ctx.store.get("count"))

    assert await W().run() == 1
    assert len(outcomes) == 4
    assert "count.__class__" in outcomes[0] and "count.x.y" in outcomes[1]


class Park(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await ctx.store.set("profile.name", "Ada")
        answer = await ctx.wait_for_event(HumanResponseEvent)
        return StopEvent(result=f"{await ctx.store.get('profile.name')} {answer.response}")


async def _parked_run(db: Path, run_id: str) -> None:
    """Park a run on an event loop of its own that then ends, as a process that exits: the
    run stays parked in the store, and nothing in this process holds it."""

    async def park() -> None:
        Park(store=SqliteStore(db)).run(run_id=run_id)
        store = SqliteStore(db)
        for _ in range(200):
            record = await store.get(run_id)
            if record is not None and record.status == "parked":
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the run did not park")

    await asyncio.wait_for(asyncio.to_thread(asyncio.run, park()), 20)


async def test_replaying_a_journal_with_a_dunder_path_fails_as_a_piton_error(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    await _parked_run(db, "evil")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, entry FROM journal WHERE run_id='evil'").fetchall()
        seq, entry = next((s, e) for s, e in rows if '"k":"SetState"' in e)
        tree = json.loads(entry)
        tree["path"] = EVIL
        tree["value"] = 1
        conn.execute(
            "UPDATE journal SET entry=? WHERE run_id='evil' AND seq=?", (json.dumps(tree), seq)
        )
    handler = Park(store=SqliteStore(db)).run(run_id="evil")
    with pytest.raises(PitonError) as info:
        await asyncio.wait_for(handler, 10)
    assert "__class__" in str(info.value)
    assert not hasattr(builtins, "piton_path_test")
