"""@catch_error on durable runs: a recovery is journaled like any step and survives a crash.

Every test runs on each backend through the ``store_url`` fixture; the SIGKILL test skips
memory, whose runs live in one process only.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from piton import (
    Context,
    Event,
    HumanResponseEvent,
    StartEvent,
    StopEvent,
    Worker,
    Workflow,
    step,
)
from piton.decorators import catch_error
from piton.events import StepFailedEvent
from piton.stores import Store, open_store
from test_durable import SRC, _park_and_leave, _url_for_a_process, _wait_status


class Boom(Exception):
    pass


class Again(Event):
    round: int


CALLS: dict[str, int] = {}


class Recovering(Workflow):
    @step
    async def work(self, ev: StartEvent | Again) -> StopEvent:
        CALLS["work"] = CALLS.get("work", 0) + 1
        raise Boom(f"work failed in round {getattr(ev, 'round', 0)}")

    @catch_error(max_recoveries=1)
    async def recover(self, ctx: Context, ev: StepFailedEvent) -> Again:
        answer = await ctx.wait_for_event(HumanResponseEvent)  # parks the run
        CALLS["recovered"] = CALLS.get("recovered", 0) + 1
        assert isinstance(ev.exception, Boom) and ev.attempts == 1
        return Again(round=int(answer.response))


async def test_a_parked_recovery_resumes_elsewhere_and_keeps_its_budget(
    store_url: str | Store,
) -> None:
    """The handler parks; another instance on another store object resumes it. The failed
    step is not run again, the StepFailedEvent comes back from the journal, and the
    lineage's budget (a snapshot field) is kept: the next failure fails the run."""
    CALLS.clear()
    await _park_and_leave(
        store_url, "c1", lambda: Recovering(store=store_url, snapshot_every=1).run(run_id="c1")
    )
    assert CALLS == {"work": 1}
    store = open_store(store_url)
    w2 = Recovering(store=store, snapshot_every=1)
    view = await w2.get_run("c1")
    assert view.status == "parked"
    assert [wt.step for wt in view.waiting] == ["recover"]
    again = await Recovering(store=open_store(store_url)).get_run("c1")  # replayed elsewhere
    assert (again.status, again.waiting, again.running_steps) == (
        view.status,
        view.waiting,
        view.running_steps,
    )

    handler = w2.run(run_id="c1")
    await handler.send_event(HumanResponseEvent(response="1"))
    with pytest.raises(Boom, match="round 1"):
        await asyncio.wait_for(handler, 10)
    assert CALLS == {"work": 2, "recovered": 1}  # the budget of 1 was used: no 2nd recovery
    record = await store.get("c1")
    assert record is not None and record.status == "failed"
    final = await Recovering(store=open_store(store_url)).get_run("c1")
    assert final.status == "failed" and isinstance(final.error, Boom)


HANDLER_MODULE = '''
import asyncio, os
from piton import StartEvent, StopEvent, Workflow, step
from piton.decorators import catch_error
from piton.events import StepFailedEvent


class Boom(Exception):
    pass


def log(line):
    with open(os.environ["CATCH_LOG"], "a") as f:
        f.write(line + "\\n")
        f.flush()
        os.fsync(f.fileno())


class Crashy(Workflow):
    @step
    async def fetch(self, ev: StartEvent) -> StopEvent:
        log("fetch")
        raise Boom("down")

    @catch_error(for_steps=["fetch"])
    async def recover(self, ev: StepFailedEvent) -> StopEvent:
        log("recover")
        if os.environ.get("CATCH_HANGS"):
            print("in-handler", flush=True)
            await asyncio.sleep(60)
        kind = type(ev.exception).__name__
        return StopEvent(result=f"{ev.step_name} {kind} {ev.exception} {ev.attempts}")
'''


async def test_a_recovery_survives_sigkill(
    store_url: str | Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _url_for_a_process(store_url)
    (tmp_path / "catch_mod.py").write_text(HANDLER_MODULE)
    log = tmp_path / "catch.log"
    monkeypatch.setenv("CATCH_LOG", str(log))
    script = (
        "import asyncio, sys\n"
        f"sys.path[:0] = [{SRC!r}, {str(tmp_path)!r}]\n"
        "from catch_mod import Crashy\n"
        "async def main():\n"
        "    await Crashy(store=sys.argv[1], durability='strict').run(run_id='k1')\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - a real process, killed below
        [sys.executable, "-c", script, url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "CATCH_HANGS": "1"},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.strip() == "in-handler"
    finally:
        proc.kill()  # SIGKILL
        proc.communicate()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "catch_mod", raising=False)
    crashy = importlib.import_module("catch_mod").Crashy
    store = open_store(url)
    await store.open()
    record = await store.get("k1")
    assert record is not None and record.status == "running"
    async with Worker(store, workflows=[crashy], poll_interval=0.1):
        record = await _wait_status(store, "k1", {"completed", "failed"})
    assert record.status == "completed", record.error
    # the failure was committed before the handler ran: fetch is not run again; the
    # handler, killed mid-way, runs again with the StepFailedEvent rebuilt from the journal
    assert await crashy(store=store).run(run_id="k1") == "fetch Boom down 1"
    assert log.read_text().splitlines() == ["fetch", "recover", "recover"]
