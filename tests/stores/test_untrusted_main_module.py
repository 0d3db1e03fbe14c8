"""A run started by ``python app.py`` (types stored as ``__main__.X``) resumes in a worker
that imports ``app`` (types known as ``app.X``): event identity does not depend on __main__."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from piton._core.graph import type_key
from piton.events import Event
from piton.serde import JsonSerializer, TypeResolver

SRC = str(Path(__file__).resolve().parents[2] / "src")

APP = textwrap.dedent(
    """
    import asyncio
    import os
    import sys

    from piton import Context, Event, StartEvent, StopEvent, Workflow, step
    from piton.stores.sqlite import SqliteStore


    class Transformed(Event):
        text: str


    class Answer(Event):
        reply: str


    class Flow(Workflow):
        @step
        async def start(self, ev: StartEvent) -> Transformed:
            return Transformed(text=ev.text.upper())

        @step
        async def ask(self, ev: Transformed, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(Answer, waiter_id=os.environ.get("WAITER_ID"))
            return StopEvent(result=f"{ev.text} {answer.reply}")


    async def park(db: str) -> None:
        handler = Flow(store=SqliteStore(db)).run(run_id="m1", text="hello")
        store = SqliteStore(db)
        for _ in range(400):
            record = await store.get("m1")
            if record is not None and record.status == "parked":
                print(type(handler).__name__, "parked", Transformed.__module__)
                return
            await asyncio.sleep(0.05)
        raise SystemExit("the run did not park")


    if __name__ == "__main__":
        asyncio.run(park(sys.argv[1]))
    """
)

RESUME = textwrap.dedent(
    """
    import asyncio
    import sys

    from piton.stores.sqlite import SqliteStore

    import app


    async def main(db: str) -> None:
        handler = app.Flow(store=SqliteStore(db)).run(run_id="m1")
        await handler.send_event(app.Answer(reply="world"))
        print(await asyncio.wait_for(handler, float(sys.argv[2])), app.Transformed.__module__)


    asyncio.run(main(sys.argv[1]))
    """
)


def _python(args: list[str], cwd: Path, waiter_id: str | None) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(cwd)])}
    env.pop("PITON_STORE", None)
    env.pop("WAITER_ID", None)
    if waiter_id is not None:
        env["WAITER_ID"] = waiter_id
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(
    "waiter_id",
    [
        "answer",
        None,
    ],
)
def test_a_run_started_as_main_resumes_in_a_process_that_imports_the_module(
    tmp_path: Path, waiter_id: str | None
) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "resume.py").write_text(RESUME)
    db = str(tmp_path / "runs.db")
    assert _python(["app.py", db], tmp_path, waiter_id).endswith("parked __main__")
    wait = "20" if waiter_id else "3"
    assert _python(["resume.py", db, wait], tmp_path, waiter_id) == "HELLO world app"


def _two_named(module: str, name: str) -> tuple[type[Event], type[Event]]:
    """Two event classes that look defined in ``module``, the first one called ``name``."""

    class Named(Event):
        text: str = ""

    class Other(Event):
        pass

    for cls, qualname in ((Named, name), (Other, name + "Other")):
        cls.__module__, cls.__name__, cls.__qualname__ = module, qualname, qualname
    return Named, Other


@pytest.mark.parametrize(("stored", "known"), [("__main__", "app"), ("app", "__main__")])
def test_the_resolver_matches_main_and_module_names_both_ways(stored: str, known: str) -> None:
    name = f"Transformed{known.strip('_').title()}"
    named, other = _two_named(known, name)
    types = TypeResolver({type_key(named): named, type_key(other): other})
    assert types.resolve(f"{stored}.{name}", Event) is named
    ser = JsonSerializer()
    tree = {"__piton__": "model", "type": f"{stored}.{name}", "data": {"text": "x"}}
    assert ser.decode(tree, types) == named(text="x")


def test_the_resolver_refuses_an_ambiguous_main_name() -> None:
    first, _ = _two_named("app", "Twice")
    second, _ = _two_named("lib", "Twice")
    types = TypeResolver({type_key(first): first, type_key(second): second})
    assert types.resolve("__main__.Twice", Event) is None
    assert TypeResolver().resolve("__main__.Twice", Event) is None  # among loaded ones too
