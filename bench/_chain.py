"""The workload of bench/durable.py and bench/postgres.py: the ten-step chain, on piton and
on DBOS.

- ``Chain``: ``StartEvent -> s0 -> ... -> s9 -> StopEvent``, each step returning a small
  event; ``Chains``: one durable ``Chain`` per durability mode and one in memory, timed
  with what the store wrote meanwhile (``Writes``); each script says how to read its
  journal back;
- ``DbosApp``: a ``@DBOS.workflow()`` calling ten ``@DBOS.step()`` functions (sync and
  async); ``DbosSystem``: one DBOS system database, launched and destroyed by the benchmark,
  each script says which; ``pick_dbos_api``: DBOS's faster API on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from _harness import Results

from piton import Event, StartEvent, StopEvent, Workflow, step

STEPS = 10
MODES = ("fast", "strict")  # Workflow(durability=...): both are measured, "fast" is the default
T = TypeVar("T")


# -- the piton workflow -------------------------------------------------------------------------


class E1(Event):
    n: int


class E2(Event):
    n: int


class E3(Event):
    n: int


class E4(Event):
    n: int


class E5(Event):
    n: int


class E6(Event):
    n: int


class E7(Event):
    n: int


class E8(Event):
    n: int


class E9(Event):
    n: int


class Chain(Workflow):
    """StartEvent -> s0 -> ... -> s9 -> StopEvent(result=10)."""

    @step
    async def s0(self, ev: StartEvent) -> E1:
        return E1(n=1)

    @step
    async def s1(self, ev: E1) -> E2:
        return E2(n=ev.n + 1)

    @step
    async def s2(self, ev: E2) -> E3:
        return E3(n=ev.n + 1)

    @step
    async def s3(self, ev: E3) -> E4:
        return E4(n=ev.n + 1)

    @step
    async def s4(self, ev: E4) -> E5:
        return E5(n=ev.n + 1)

    @step
    async def s5(self, ev: E5) -> E6:
        return E6(n=ev.n + 1)

    @step
    async def s6(self, ev: E6) -> E7:
        return E7(n=ev.n + 1)

    @step
    async def s7(self, ev: E7) -> E8:
        return E8(n=ev.n + 1)

    @step
    async def s8(self, ev: E8) -> E9:
        return E9(n=ev.n + 1)

    @step
    async def s9(self, ev: E9) -> StopEvent:
        return StopEvent(result=ev.n + 1)


def _check(result: Any) -> None:
    if result != STEPS:
        raise RuntimeError(f"the chain returned {result!r}, expected {STEPS}")


@dataclass
class Writes:
    """What a store did during one timing."""

    transactions: int = 0  # write transactions committed (one fsync each)
    commits: int = 0  # commit requests applied (several may share a transaction)
    entries: int = 0  # journal rows written
    entry_bytes: int = 0


class Chains:
    """The chain workflow for each durability mode on ``stores[mode]`` (a Store or a URL), and
    in memory; subclasses say how to read the journal back."""

    def __init__(self, stores: dict[str, Any]) -> None:
        self.durable = {
            mode: Chain(timeout=None, store=stores[mode], durability=mode) for mode in MODES
        }
        self.memory = Chain(timeout=None)
        self.ids = 0

    def _journal(self) -> tuple[int, int]:
        """(journal rows, their total size) in the store, read outside the timings."""
        raise NotImplementedError

    def _run_id(self, tag: str) -> str:
        self.ids += 1
        return f"{tag}-{self.ids}"

    async def concurrent(
        self, mode: str, width: int, rounds: int, tag: str
    ) -> tuple[float, Writes]:
        """Seconds for ``rounds`` x ``width`` durable runs in ``mode``, ``width`` at a time."""
        wf = self.durable[mode]
        store: Any = wf.store  # SqliteStore and PostgresStore count .transactions, .commits
        entries, size = self._journal()
        transactions, commits = store.transactions, store.commits
        gc.collect()
        started = time.perf_counter()
        for _ in range(rounds):
            if width == 1:
                _check(await wf.run(run_id=self._run_id(tag)))
            else:
                runs = [wf.run(run_id=self._run_id(tag)) for _ in range(width)]
                # every run ends before a failure is raised: none goes on behind the caller
                results = await asyncio.gather(*runs, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                    _check(result)
        seconds = time.perf_counter() - started
        now_entries, now_size = self._journal()
        return seconds, Writes(
            store.transactions - transactions,
            store.commits - commits,
            now_entries - entries,
            now_size - size,
        )

    async def in_memory(self, runs: int) -> float:
        wf = self.memory
        gc.collect()
        started = time.perf_counter()
        for _ in range(runs):
            _check(await wf.run())
        return time.perf_counter() - started


# -- DBOS ---------------------------------------------------------------------------------------


class DbosApp:
    """DBOS's workflows (registered once) and the launch of one system database at a time."""

    def __init__(self) -> None:
        import sqlalchemy as sa
        from dbos import DBOS, SetWorkflowID

        self.DBOS, self.SetWorkflowID = DBOS, SetWorkflowID
        self.auditing = False
        self.statements: list[str] = []

        @DBOS.step()
        def add_one(n: int) -> int:
            return n + 1

        @DBOS.workflow()
        def chain() -> int:
            n = 0
            for _ in range(STEPS):
                n = add_one(n)
            return n

        @DBOS.step()
        async def add_one_async(n: int) -> int:
            return n + 1

        @DBOS.workflow()
        async def chain_async() -> int:
            n = 0
            for _ in range(STEPS):
                n = await add_one_async(n)
            return n

        self.chain, self.chain_async = chain, chain_async
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-dbos")

        # Only for the audit in the warm-up: record the SQL of SQLite connections opened then.
        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            if self.auditing and isinstance(dbapi_conn, sqlite3.Connection):
                dbapi_conn.set_trace_callback(self.statements.append)

        sa.event.listen(sa.engine.Engine, "connect", on_connect)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """DBOS's sync API runs on a thread of the benchmark's own, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class DbosSystem:
    """One DBOS system database, launched and destroyed by the benchmark; ``config()`` says
    which (each script subclasses this for its database)."""

    def __init__(self, app: DbosApp, name: str) -> None:
        self.app = app
        self.name = name
        self.api = "sync"
        self.ids = 0

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    async def launch(self) -> None:
        DBOS = self.app.DBOS
        DBOS(config={"name": "piton-bench", "log_level": "WARNING", **self.config()})
        await self.app.in_thread(DBOS.launch)

    async def destroy(self) -> None:
        await self.app.in_thread(self.app.DBOS.destroy)
        # DBOS's async API makes DBOS's executor the loop's default one; it is shut down now
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())

    def _run_id(self, tag: str) -> str:
        self.ids += 1
        return f"{tag}-{self.ids}"

    async def concurrent(self, width: int, rounds: int, tag: str, api: str | None = None) -> float:
        """Seconds for ``rounds`` x ``width`` workflows, ``width`` at a time."""
        api = api or self.api
        if api == "async":
            return await self._async(width, rounds, tag)
        ids = [[self._run_id(tag) for _ in range(width)] for _ in range(rounds)]
        return await self.app.in_thread(self._sync, ids)

    def _sync(self, ids: list[list[str]]) -> float:
        """On a thread of its own: DBOS's sync API must not run on the event loop."""
        DBOS, SetWorkflowID, chain = self.app.DBOS, self.app.SetWorkflowID, self.app.chain
        gc.collect()
        started = time.perf_counter()
        for batch in ids:
            if len(batch) == 1:
                with SetWorkflowID(batch[0]):
                    _check(chain())
                continue
            handles = []
            for workflow_id in batch:
                with SetWorkflowID(workflow_id):
                    handles.append(DBOS.start_workflow(chain))
            for handle in handles:
                _check(handle.get_result())
        return time.perf_counter() - started

    async def _async(self, width: int, rounds: int, tag: str) -> float:
        SetWorkflowID, chain = self.app.SetWorkflowID, self.app.chain_async

        async def one(workflow_id: str) -> None:
            with SetWorkflowID(workflow_id):
                _check(await chain())

        ids = [[self._run_id(tag) for _ in range(width)] for _ in range(rounds)]
        gc.collect()
        started = time.perf_counter()
        for batch in ids:
            if len(batch) == 1:
                await one(batch[0])
            else:
                await asyncio.gather(*(one(workflow_id) for workflow_id in batch))
        return time.perf_counter() - started


def dbos_available() -> str | None:
    """None if dbos can be imported, else why not."""
    try:
        import dbos  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


async def pick_dbos_api(d: DbosSystem, args: argparse.Namespace, res: Results) -> str:
    """DBOS's faster API on this machine (sync or async), unless ``--dbos-api`` gives one.

    ``d`` is launched. Both APIs run alternately and the median cost per step of each is
    recorded in ``res.notes``, with the choice.
    """
    await d.concurrent(1, 2, "warm", api="sync")
    await d.concurrent(1, 2, "warm", api="async")
    calibration: dict[str, list[float]] = {"sync": [], "async": []}
    runs = 1 if args.smoke else 3 if args.quick else 6
    for k in range(2):
        for api in ("sync", "async") if k % 2 == 0 else ("async", "sync"):
            seconds = await d.concurrent(1, runs, "calib", api=api)
            calibration[api].append(seconds / (runs * STEPS) * 1e6)
    us = {api: statistics.median(values) for api, values in calibration.items()}
    res.notes["dbos_api_calibration_us_per_step"] = us
    chosen: str = args.dbos_api if args.dbos_api != "auto" else min(us, key=lambda a: us[a])
    res.notes["dbos_api"] = chosen
    return chosen
