"""Stored errors are untrusted: they rebuild only as Exception subclasses, and journal and
snapshot decoding rebuilds them without calling any of their code (promise 11)."""

from __future__ import annotations

import asyncio
import json
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from piton import Context, PitonError, StartEvent, StopEvent, Workflow, step
from piton._core import inputs as inp
from piton._journal_codec import decode_input, encode_input
from piton.serde import JsonSerializer, StoredError, TypeResolver
from piton.stores.sqlite import SqliteStore

calls: list[str] = []


class Sneaky(Exception):
    """Every piece of its own code leaves a mark in ``calls``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Sneaky:
        calls.append("new")
        return super().__new__(cls, *args)

    def __init__(self, message: str, *, code: int) -> None:
        calls.append("init")
        super().__init__(message)
        self.code = code

    def __setstate__(self, state: Any) -> None:
        calls.append("setstate")


class Marked(Exception):
    def __init__(self, message: str) -> None:
        calls.append("init")
        super().__init__(message)


class DiskFull(OSError):
    def __init__(self, *args: Any) -> None:
        calls.append("init")
        super().__init__(*args)


ser = JsonSerializer()


def _stored(type_name: str, *args: Any) -> dict[str, Any]:
    return {"__piton__": "error", "type": type_name, "args": list(args), "message": "bye"}


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


# --- only Exception subclasses come back as themselves -------------------------------------


@pytest.mark.parametrize(
    "type_name",
    [
        "builtins.SystemExit",
        "builtins.KeyboardInterrupt",
        "builtins.GeneratorExit",
        "SystemExit",
        "asyncio.exceptions.CancelledError",
        "piton.context.WaitingForEvent",
    ],
)
@pytest.mark.parametrize("construct", [True, False])
def test_base_exceptions_come_back_as_stored_errors(type_name: str, construct: bool) -> None:
    error = ser.decode_error(_stored(type_name, "bye"), TypeResolver(), construct=construct)
    assert isinstance(error, StoredError) and isinstance(error, PitonError)
    assert error.type_name == type_name and error.message == "bye"
    assert str(error) == f"{type_name}: bye"


def test_a_known_type_that_is_not_an_exception_is_a_stored_error() -> None:
    types = TypeResolver({"piton.events.StartEvent": StartEvent})
    error = ser.decode_error(_stored("piton.events.StartEvent"), types)
    assert isinstance(error, StoredError)
    assert isinstance(ser.decode_error(_stored("nowhere.Gone"), types), StoredError)


def test_stored_error_pickles_with_its_parts() -> None:
    error = pickle.loads(pickle.dumps(StoredError("app.Boom", "it broke")))
    assert (error.type_name, error.message, str(error)) == (
        "app.Boom",
        "it broke",
        "app.Boom: it broke",
    )


class Fails(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "type_name",
    [
        "builtins.SystemExit",
        "builtins.KeyboardInterrupt",
        "builtins.GeneratorExit",
        "asyncio.exceptions.CancelledError",
    ],
)
async def test_a_stored_run_error_never_raises_a_base_exception(
    tmp_path: Path, type_name: str
) -> None:
    db = tmp_path / "runs.db"
    with pytest.raises(RuntimeError, match="boom"):
        await Fails(store=SqliteStore(db)).run(run_id="r")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE runs SET error=? WHERE run_id='r'", (json.dumps(_stored(type_name, "bye")),)
        )
    caught: BaseException | None = None
    try:
        await asyncio.wait_for(Fails(store=SqliteStore(db)).run(run_id="r"), 10)
    except BaseException as exc:  # noqa: BLE001 - before the fix: SystemExit and friends
        caught = exc
    assert isinstance(caught, StoredError), repr(caught)
    assert caught.type_name == type_name


# --- construct=False: no user code at all ----------------------------------------------------


def test_construct_false_calls_no_code_of_the_error() -> None:
    tree = ser.encode_error(Sneaky("boom", code=3))
    calls.clear()
    error = ser.decode_error(tree, TypeResolver(), construct=False)
    assert type(error) is Sneaky
    assert error.args == ("boom",)
    assert calls == []
    with pytest.raises(Sneaky):
        raise error


def test_a_keyword_only_constructor_round_trips_as_its_own_type() -> None:
    tree = json.loads(json.dumps(ser.encode_error(Sneaky("boom", code=3))))
    error = ser.decode_error(tree, TypeResolver(), construct=False)
    assert type(error) is Sneaky and error.args == ("boom",)
    # construct=True tries the constructor; when it refuses the args, the bare instance
    error = ser.decode_error(tree, TypeResolver(), construct=True)
    assert type(error) is Sneaky and error.args == ("boom",)


def test_construct_false_works_for_builtin_bases_with_their_own_new() -> None:
    tree = ser.encode_error(DiskFull(28, "No space left"))
    calls.clear()
    error = ser.decode_error(tree, TypeResolver(), construct=False)
    assert type(error) is DiskFull and error.args == (28, "No space left")
    assert calls == []
    error = ser.decode_error(
        ser.encode_error(json.JSONDecodeError("bad", "doc", 1)), TypeResolver(), construct=False
    )
    assert type(error) is json.JSONDecodeError and error.args[0].startswith("bad")


def test_construct_true_calls_the_constructor() -> None:
    error = ser.decode_error(ser.encode_error(ValueError("x", 1)), TypeResolver())
    assert type(error) is ValueError and error.args == ("x", 1)


def test_journal_entries_rebuild_errors_without_their_code() -> None:
    text = encode_input(inp.StepFailed(at=1.0, exec_id="x1", error=Sneaky("boom", code=3)), ser)
    calls.clear()
    entry = decode_input(text, ser, TypeResolver())
    assert type(entry.error) is Sneaky and entry.error.args == ("boom",)
    assert calls == []
    entry = decode_input(text, ser, TypeResolver(), construct=True)
    assert type(entry.error) is Sneaky and calls == ["new"]  # __init__ refused the args


async def test_snapshots_rebuild_errors_without_their_code() -> None:
    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("last", Marked("kept in state"))
            return StopEvent()

    handler = W().run()
    await handler
    data = handler.ctx.to_dict()
    calls.clear()
    restored = Context.from_dict(W(), data)
    assert calls == []
    last = await restored.store.get("last")
    assert type(last) is Marked and last.args == ("kept in state",)
