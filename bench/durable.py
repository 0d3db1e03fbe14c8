"""Durable benchmark: piton's checkpointed steps next to the SQLite floor, piton in memory and DBOS.

Run from the repository root (after ``pip install -e '.[bench]'``)::

    .venv/bin/python bench/durable.py [--repeat N] [--quick] [--json PATH] [--dir DIR]

One process, one invocation. Every database file lives in one temporary directory, made
under ``.bench-tmp/`` in the repository (or under ``--dir``) and deleted at the end:

(1) ``floor``: a bare ``sqlite3`` connection, WAL, ``synchronous=FULL``, one
    ``BEGIN IMMEDIATE; INSERT; COMMIT`` per iteration, the row as large as the journal
    entries piton writes per commit request in its default mode (measured during the
    warm-up). One fsync per commit:
    the cost of a durable commit on this disk.
(2) ``piton durable``: ``StartEvent -> 10 steps -> StopEvent`` (each step returns a small
    event) on ``Workflow(store=SqliteStore(path), durability=mode)``, runs one after the
    other with distinct run ids, for both modes: ``"fast"`` (the default: a step may start
    while the commit of its input is on its way to disk, and quick commits merge into one
    transaction) and ``"strict"`` (a step starts only once the commit that made it runnable
    is durable). Microseconds per step (run time / 10), and per write transaction the store
    actually made (``SqliteStore.transactions``; commit requests and journal rows are
    counted too).
(3) ``piton memory``: the same workflow class without a store.
(4) ``DBOS``: a ``@DBOS.workflow()`` calling ten ``@DBOS.step()`` functions, with
    ``system_database_url=sqlite:///...``; DBOS records every step's output in its system
    database (``operation_outputs``) before the workflow goes on. Two system databases:
    DBOS's own default (SQLite's rollback journal) and the same file set to WAL beforehand.
    The API (sync or async) is DBOS's faster one, picked in the warm-up (``--dbos-api``).
(5) ``concurrency``: 1, 10 and 100 concurrent piton runs on one SqliteStore
    (``asyncio.gather`` of ``w.run()`` with distinct run ids), in steps per second, for
    each durability mode; the same for DBOS (``DBOS.start_workflow`` handles, or
    ``asyncio.gather`` with the async API). Each throughput is also given as a multiple of
    the floor's commits per second (``1e6 / floor_us``): above 1, group commit took the
    system past one fsync per step.

The warm-up writes to every WAL database until its WAL stopped growing (see
``settle_wal``). Each repetition measures every system; the order of the systems is
reversed on odd repetitions (the floor stays between piton's two modes), and
``gc.collect()`` runs before each timing. Figures are medians over the repetitions; ratios
are medians of the per-repetition ratios. The goals are evaluated for each mode.
"""

import argparse
import asyncio
import gc
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from _machine import load_average, machine_info, print_machine

from piton import Event, StartEvent, StopEvent, Workflow, step
from piton.stores import SqliteStore

STEPS = 10
ROOT = Path(__file__).resolve().parent.parent
GOAL_FLOOR = 2.0  # piton durable step / floor commit: at most
GOAL_DBOS = 3.0  # DBOS step / piton durable step: at least
GOAL_SCALE = 5.0  # throughput of the most concurrent runs / of one run: at least
MODES = ("fast", "strict")  # Workflow(durability=...): both are measured, "fast" is the default
T = TypeVar("T")


# -- the piton workflow -------------------------------------------------------------------


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


# -- (1) the floor --------------------------------------------------------------------------


class Floor:
    """A bare sqlite3 WAL database: one row inserted per transaction, on the calling thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"{path}: journal_mode is {mode}, not wal")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE journal (run_id TEXT, seq INTEGER, entry TEXT, "
            "PRIMARY KEY (run_id, seq)) WITHOUT ROWID"
        )
        self.seq = 0
        self.entry = "x" * 300

    def time(self, commits: int) -> float:
        """Seconds for ``commits`` commits."""
        db, entry = self.db, self.entry
        gc.collect()
        started = time.perf_counter()
        for _ in range(commits):
            self.seq += 1
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO journal VALUES ('run', ?, ?)", (self.seq, entry))
            db.execute("COMMIT")
        return time.perf_counter() - started


# -- (2), (3), (5) piton ----------------------------------------------------------------------


@dataclass
class Writes:
    """What a SqliteStore did during one timing."""

    transactions: int = 0  # write transactions committed (one fsync each)
    commits: int = 0  # commit requests applied (several may share a transaction)
    entries: int = 0  # journal rows written
    entry_bytes: int = 0


class Chains:
    """The chain workflow for each durability mode on ``stores[mode]`` (a Store or a URL), and
    in memory; subclasses say how to read the journal (bench/postgres.py has one for
    PostgreSQL)."""

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


class Piton(Chains):
    def __init__(self, directory: Path) -> None:
        self.path = directory / "piton.db"
        self.store = SqliteStore(self.path)  # synchronous=FULL, WAL: the defaults
        # one store (one file, one writer thread) for both modes, measured one at a time
        super().__init__({mode: self.store for mode in MODES})

    def _journal(self) -> tuple[int, int]:
        with sqlite3.connect(self.path) as db:
            count, size = db.execute("SELECT COUNT(*), SUM(LENGTH(entry)) FROM journal").fetchone()
        db.close()
        return count, size or 0

    def completed(self) -> tuple[int, int]:
        """(runs completed, runs) in the store file."""
        with sqlite3.connect(self.path) as db:
            done, total = db.execute(
                "SELECT SUM(status = 'completed'), COUNT(*) FROM runs"
            ).fetchone()
        db.close()
        return done or 0, total


# -- (4) DBOS ---------------------------------------------------------------------------------


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

        # Only for the audit in the warm-up: record the SQL of connections opened then.
        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            if self.auditing and isinstance(dbapi_conn, sqlite3.Connection):
                dbapi_conn.set_trace_callback(self.statements.append)

        sa.event.listen(sa.engine.Engine, "connect", on_connect)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """DBOS's sync API runs on a thread of the benchmark's own, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class DbosSystem:
    """One DBOS system database, launched and destroyed by the benchmark; ``config()`` says
    which (bench/postgres.py subclasses this for PostgreSQL)."""

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


class Dbos(DbosSystem):
    """A SQLite system database: ``wal`` sets the file to WAL before DBOS opens it."""

    def __init__(self, app: DbosApp, directory: Path, wal: bool) -> None:
        super().__init__(app, "dbos-wal" if wal else "dbos")
        self.wal = wal
        self.path = directory / f"{self.name}.sqlite"
        if wal:
            with sqlite3.connect(self.path) as db:
                db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            db.close()

    def config(self) -> dict[str, Any]:
        return {"system_database_url": f"sqlite:///{self.path}"}

    def journal_mode(self) -> str:
        with sqlite3.connect(self.path) as db:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            sync = db.execute("PRAGMA synchronous").fetchone()[0]
        db.close()
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return f"journal_mode={mode}, synchronous={names.get(sync, sync)} (SQLite's default)"

    def checkpoints(self, workflow_id_prefix: str) -> tuple[int, int]:
        """(step rows in operation_outputs, finished workflows) for the ids with this prefix."""
        with sqlite3.connect(self.path) as db:
            steps = db.execute(
                "SELECT COUNT(*) FROM operation_outputs WHERE workflow_uuid LIKE ?",
                (workflow_id_prefix + "%",),
            ).fetchone()[0]
            done = db.execute(
                "SELECT COUNT(*) FROM workflow_status WHERE workflow_uuid LIKE ? "
                "AND status = 'SUCCESS'",
                (workflow_id_prefix + "%",),
            ).fetchone()[0]
        db.close()
        return steps, done


def dbos_available() -> str | None:
    """None if dbos can be imported, else why not."""
    try:
        import dbos  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


# -- the measurement --------------------------------------------------------------------------


@dataclass
class Results:
    reps: list[dict[str, float]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def median(self, key: str) -> float | None:
        values = [rep[key] for rep in self.reps if key in rep]
        return statistics.median(values) if values else None

    def spread(self, key: str) -> tuple[float, float] | None:
        values = [rep[key] for rep in self.reps if key in rep]
        return (min(values), max(values)) if values else None

    def ratio(self, top: str, bottom: str) -> float | None:
        values = [rep[top] / rep[bottom] for rep in self.reps if top in rep and rep.get(bottom)]
        return statistics.median(values) if values else None


@dataclass
class Sizes:
    floor_commits: int
    durable_runs: int
    memory_runs: int
    dbos_runs: int
    piton_conc_runs: int  # runs per concurrency level (at least one round)
    dbos_conc_runs: int


def sizes(args: argparse.Namespace) -> Sizes:
    if args.smoke:  # does the benchmark run at all? (tests/test_bench_smoke.py)
        return Sizes(20, 2, 10, 2, 4, 2)
    if args.quick:
        return Sizes(100, 12, 60, 5, 20, 5)
    return Sizes(500, 60, 300, 20, 200, 20)


def wal_size(path: Path) -> int:
    try:
        return Path(f"{path}-wal").stat().st_size
    except FileNotFoundError:
        return 0


async def settle_wal(path: Path, write: Callable[[], Awaitable[object]], limit: int) -> int:
    """Write until the WAL of ``path`` reached its steady size; return the number of writes.

    A WAL grows until SQLite's automatic checkpoint (1,000 pages), then is rewritten from
    its start. While it grows, every fsync also has to persist the file's new size, and
    a commit costs about twice as much on this kind of disk: the floor and the stores are
    compared once their WALs stopped growing, as in a long-running process.
    """
    with sqlite3.connect(path) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    db.close()
    full = 32 + pages * (page + 24)
    done = 0
    while wal_size(path) < full and done < limit:
        await write()
        done += 1
    for _ in range(max(done // 10, 2)):  # and on, past the checkpoint: the WAL wraps
        await write()
        done += 1
    return done


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


async def warm_up(
    floor: Floor, piton: Piton, dboses: list[Dbos], args: argparse.Namespace, res: Results
) -> None:
    """Runs outside the timings: sizes the floor's row, settles every WAL, picks DBOS's API."""
    await piton.in_memory(20)
    for mode in MODES:
        _, writes = await piton.concurrent(mode, 1, 3, f"warm-{mode}")
        await piton.concurrent(mode, 10, 1, f"warm-{mode}")
        res.notes[f"piton_{mode}_journal_bytes_per_commit"] = writes.entry_bytes / max(
            writes.commits, 1
        )
        res.notes[f"piton_{mode}_journal_bytes_per_txn"] = writes.entry_bytes / max(
            writes.transactions, 1
        )
        res.notes[f"piton_{mode}_journal_bytes_per_entry"] = writes.entry_bytes / max(
            writes.entries, 1
        )
    # the floor's row: what the default mode writes per commit request (as before the modes)
    per_commit = res.notes["piton_fast_journal_bytes_per_commit"]
    floor.entry = "x" * max(int(round(per_commit, -1)), 50)
    res.notes["floor_row_bytes"] = len(floor.entry)
    settled: dict[str, int] = {}
    res.notes["wal_warm_up"] = settled
    if not args.smoke:

        async def floor_commits() -> None:
            floor.time(50)

        async def piton_runs() -> None:
            await piton.concurrent("fast", 1, 5, "settle")

        settled["floor commits"] = 50 * await settle_wal(floor.path, floor_commits, 200)
        settled["piton runs"] = 5 * await settle_wal(piton.path, piton_runs, 100)
    if not dboses:
        return
    first, app = dboses[0], dboses[0].app
    app.auditing = True  # the connections opened from now until the destroy() below
    await first.launch()
    try:
        # the audit: which SQL does one DBOS workflow of 10 steps run? (sync API)
        await first.concurrent(1, 1, "warm", api="sync")
        app.statements.clear()
        await first.concurrent(1, 1, "audit", api="sync")
        app.auditing = False
        statements = [s.strip().split()[0].upper() for s in app.statements if s.strip()]
        res.notes["dbos_statements_per_run"] = {
            word: statements.count(word) for word in sorted(set(statements))
        }
        steps, done = first.checkpoints("audit-")
        res.notes["dbos_audit"] = {"step_rows": steps, "workflows_succeeded": done}
        app.statements.clear()
        api = await pick_dbos_api(first, args, res)
        for d in dboses:
            d.api = api
    finally:
        await first.destroy()
    if not args.smoke:
        wal = next(d for d in dboses if d.wal)
        await wal.launch()
        try:

            async def dbos_runs() -> None:
                await wal.concurrent(1, 5, "settle")

            settled["dbos-wal runs"] = 5 * await settle_wal(wal.path, dbos_runs, 100)
        finally:
            await wal.destroy()


def block_order(rep: int, names: list[str]) -> list[str]:
    return names if rep % 2 == 0 else names[::-1]


async def measure(args: argparse.Namespace, directory: Path) -> Results:
    n = sizes(args)
    res = Results()
    floor = Floor(directory / "floor.db")
    piton = Piton(directory)
    dboses: list[Dbos] = []
    if not args.no_dbos:
        app = DbosApp()
        dboses = [Dbos(app, directory, wal=False), Dbos(app, directory, wal=True)]
    levels = args.concurrency
    try:
        await piton.store.open()  # creates the schema
        await warm_up(floor, piton, dboses, args, res)
        # the floor between piton's two modes: the cost of an fsync drifts, and each mode is
        # compared with the floor measured next to it in the same repetition
        blocks = ["fast", "floor", "strict", "memory", *[d.name for d in dboses], "concurrent"]
        print(
            f"{args.repeat} repetitions: {n.floor_commits} floor commits, {n.durable_runs} "
            f"durable runs per mode ({', '.join(MODES)}), {n.memory_runs} in-memory runs, "
            f"{n.dbos_runs} DBOS runs per database; concurrency {', '.join(map(str, levels))}"
        )
        for rep in range(args.repeat):
            figures: dict[str, float] = {}
            for block in block_order(rep, blocks):
                if block == "floor":
                    seconds = floor.time(n.floor_commits)
                    figures["floor_us"] = seconds / n.floor_commits * 1e6
                elif block in MODES:
                    key = f"piton_{block}"
                    seconds, w = await piton.concurrent(
                        block, 1, n.durable_runs, f"{block}-seq{rep}"
                    )
                    steps = n.durable_runs * STEPS
                    figures[f"{key}_us_step"] = seconds / steps * 1e6
                    figures[f"{key}_us_txn"] = seconds / w.transactions * 1e6
                    figures[f"{key}_txn_per_run"] = w.transactions / n.durable_runs
                    figures[f"{key}_commits_per_run"] = w.commits / n.durable_runs
                    figures[f"{key}_entries_per_run"] = w.entries / n.durable_runs
                elif block == "memory":
                    seconds = await piton.in_memory(n.memory_runs)
                    figures["memory_us_step"] = seconds / (n.memory_runs * STEPS) * 1e6
                elif block == "concurrent":
                    for width in levels if rep % 2 == 0 else levels[::-1]:
                        rounds = max(n.piton_conc_runs // width, 1)
                        for mode in block_order(rep, list(MODES)):
                            key = f"piton_{mode}_c{width}"
                            seconds, w = await piton.concurrent(
                                mode, width, rounds, f"{mode}-c{width}r{rep}"
                            )
                            steps = rounds * width * STEPS
                            figures[f"{key}_steps_s"] = steps / seconds
                            figures[f"{key}_steps_txn"] = steps / w.transactions
                else:
                    d = next(d for d in dboses if d.name == block)
                    await d.launch()
                    try:
                        seconds = await d.concurrent(1, n.dbos_runs, f"{d.name}-seq{rep}")
                        figures[f"{d.name}_us_step"] = seconds / (n.dbos_runs * STEPS) * 1e6
                        for width in levels if rep % 2 == 0 else levels[::-1]:
                            rounds = max(n.dbos_conc_runs // width, 1)
                            seconds = await d.concurrent(width, rounds, f"{d.name}-c{width}r{rep}")
                            figures[f"{d.name}_c{width}_steps_s"] = rounds * width * STEPS / seconds
                    finally:
                        await d.destroy()
            # throughput in units of the floor's commits per second (1e6 / floor_us): above
            # 1, commits are shared, a step costs less than one fsync of its own
            for system in (*(f"piton_{mode}" for mode in MODES), *(d.name for d in dboses)):
                for width in levels:
                    rate = figures[f"{system}_c{width}_steps_s"]
                    figures[f"{system}_c{width}_over_floor_rate"] = rate * figures["floor_us"] / 1e6
            res.reps.append(figures)
            _progress(rep, figures, dboses)
        res.notes["piton_runs_completed"] = piton.completed()
        for d in dboses:
            res.notes[f"{d.name}_journal"] = d.journal_mode()
            steps, done = d.checkpoints(f"{d.name}-")
            res.notes[f"{d.name}_checkpoints"] = {"step_rows": steps, "workflows_succeeded": done}
    finally:
        floor.db.close()
        await piton.store.close()
        if dboses:
            dboses[0].app.pool.shutdown()
    return res


def _progress(rep: int, f: dict[str, float], dboses: list[Dbos]) -> None:
    parts = [
        f"floor {f['floor_us']:.0f} us",
        *(f"piton {mode} {f[f'piton_{mode}_us_step']:.0f} us/step" for mode in MODES),
        f"memory {f['memory_us_step']:.1f} us/step",
    ]
    parts += [f"{d.name} {f[d.name + '_us_step']:.0f} us/step" for d in dboses]
    print(f"  rep {rep + 1}: " + ", ".join(parts), flush=True)


# -- reporting --------------------------------------------------------------------------------


def summarize(res: Results, args: argparse.Namespace, dbos_names: list[str]) -> dict[str, Any]:
    low, high = args.concurrency[0], args.concurrency[-1]
    api = res.notes.get("dbos_api", "-")
    rows: list[tuple[str, str, str]] = [
        ("(1) floor: SQLite WAL commit, synchronous=FULL", "us/commit", "floor_us"),
    ]
    for mode in MODES:
        rows.append((f"(2) piton durable {mode}, per step", "us/step", f"piton_{mode}_us_step"))
        rows.append(
            (f"    piton durable {mode}, per write transaction", "us/txn", f"piton_{mode}_us_txn")
        )
    rows.append(("(3) piton in memory, per step", "us/step", "memory_us_step"))
    labels = {"dbos": "default journal", "dbos-wal": "WAL journal"}
    for name in dbos_names:
        rows.append((f"(4) DBOS {api} API, {labels[name]}, per step", "us/step", f"{name}_us_step"))
    for mode in MODES:
        for width in args.concurrency:
            rows.append(
                (
                    f"(5) piton {mode}, {width} concurrent run(s)",
                    "steps/s",
                    f"piton_{mode}_c{width}_steps_s",
                )
            )
    for name in dbos_names:
        for width in args.concurrency:
            rows.append(
                (
                    f"(5) DBOS {labels[name]}, {width} concurrent",
                    "steps/s",
                    f"{name}_c{width}_steps_s",
                )
            )
    table = []
    for label, unit, key in rows:
        spread = res.spread(key)
        table.append(
            {
                "figure": label,
                "unit": unit,
                "key": key,
                "median": res.median(key),
                "min": spread[0] if spread else None,
                "max": spread[1] if spread else None,
            }
        )
    ratios: dict[str, float | None] = {
        "piton_strict_over_fast": res.ratio("piton_strict_us_step", "piton_fast_us_step"),
    }
    goals: dict[str, bool | None] = {}
    accounting: dict[str, float | None] = {}
    for mode in MODES:
        k = f"piton_{mode}"
        ratios[f"{k}_step_over_floor"] = res.ratio(f"{k}_us_step", "floor_us")
        ratios[f"{k}_txn_over_floor"] = res.ratio(f"{k}_us_txn", "floor_us")
        ratios[f"{k}_durable_over_memory"] = res.ratio(f"{k}_us_step", "memory_us_step")
        ratios[f"{k}_scale"] = res.ratio(f"{k}_c{high}_steps_s", f"{k}_c{low}_steps_s")
        goals[f"{k}_step_over_floor_at_most_2"] = _le(ratios[f"{k}_step_over_floor"], GOAL_FLOOR)
        for name in dbos_names:
            ratios[f"{name}_over_{k}"] = res.ratio(f"{name}_us_step", f"{k}_us_step")
            goals[f"{name}_over_{k}_at_least_3"] = _ge(ratios[f"{name}_over_{k}"], GOAL_DBOS)
        goals[f"{k}_scale_at_least_5"] = _ge(ratios[f"{k}_scale"], GOAL_SCALE)
        for what in ("entries_per_run", "commits_per_run", "txn_per_run"):
            accounting[f"{k}_{what}"] = res.median(f"{k}_{what}")
        for width in args.concurrency:
            accounting[f"{k}_c{width}_steps_per_txn"] = res.median(f"{k}_c{width}_steps_txn")
    for name in dbos_names:
        ratios[f"{name}_scale"] = res.ratio(f"{name}_c{high}_steps_s", f"{name}_c{low}_steps_s")
    for system in (*(f"piton_{mode}" for mode in MODES), *dbos_names):
        for width in args.concurrency[1:]:
            ratios[f"{system}_c{width}_over_c{low}"] = res.ratio(
                f"{system}_c{width}_steps_s", f"{system}_c{low}_steps_s"
            )
        # steps/s over the floor's commits/s, the median of the per-repetition values
        for width in args.concurrency:
            ratios[f"{system}_c{width}_over_floor_rate"] = res.median(
                f"{system}_c{width}_over_floor_rate"
            )
    floor_us = res.median("floor_us")
    return {
        "table": table,
        "ratios": ratios,
        "goals": goals,
        "accounting": accounting,
        "floor_commits_per_s": 1e6 / floor_us if floor_us else None,
        "modes": list(MODES),
        "dbos": dbos_names,
    }


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _ge(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def print_report(summary: dict[str, Any], res: Results, args: argparse.Namespace) -> None:
    head = f"{'figure':<52} {'unit':>9} {'median':>9} {'min':>9} {'max':>9}"
    print()
    print(head)
    print("-" * len(head))
    for r in summary["table"]:
        print(
            f"{r['figure']:<52} {r['unit']:>9} {_num(r['median']):>9} "
            f"{_num(r['min']):>9} {_num(r['max']):>9}"
        )
    acc, notes, ratios = summary["accounting"], res.notes, summary["ratios"]
    high, low = args.concurrency[-1], args.concurrency[0]
    print()
    for mode in MODES:
        k = f"piton_{mode}"
        print(
            f"piton {mode}, per run of {STEPS} steps: {_num(acc[f'{k}_entries_per_run'])} "
            f"journal entries in {_num(acc[f'{k}_commits_per_run'])} commit requests and "
            f"{_num(acc[f'{k}_txn_per_run'])} write transactions (the run's creation included)"
        )
        print(
            f"piton {mode}, steps per write transaction: "
            + ", ".join(
                f"{w} run(s) {_num(acc[f'{k}_c{w}_steps_per_txn'])}" for w in args.concurrency
            )
        )
    print(
        f"floor row: {notes['floor_row_bytes']} bytes (piton fast wrote "
        f"{notes['piton_fast_journal_bytes_per_commit']:.0f} journal bytes per commit request, "
        f"{notes['piton_fast_journal_bytes_per_txn']:.0f} per write transaction, "
        f"{notes['piton_fast_journal_bytes_per_entry']:.0f} per entry; strict "
        f"{notes['piton_strict_journal_bytes_per_commit']:.0f} per commit request, "
        f"{notes['piton_strict_journal_bytes_per_txn']:.0f} per write transaction)"
    )
    if notes["wal_warm_up"]:
        print(
            "WAL warm-up, until each WAL stopped growing: "
            + ", ".join(f"{v} {k}" for k, v in notes["wal_warm_up"].items())
        )
    done, total = notes["piton_runs_completed"]
    print(f"piton runs completed in the store (both modes): {done} of {total}")
    if "dbos_api" in notes:
        cal = notes["dbos_api_calibration_us_per_step"]
        how = "given by --dbos-api" if args.dbos_api != "auto" else "the faster in the warm-up"
        print(
            f"DBOS API: {notes['dbos_api']} ({how}: sync {cal['sync']:.0f} us/step, "
            f"async {cal['async']:.0f} us/step)"
        )
        sql = notes["dbos_statements_per_run"]
        audit = notes["dbos_audit"]
        print(
            f"DBOS, one audited run of {STEPS} steps: {sql.get('COMMIT', 0)} COMMITs, "
            f"{sql.get('BEGIN', 0)} BEGINs, {sql.get('INSERT', 0)} INSERTs, "
            f"{sql.get('SELECT', 0)} SELECTs, {sql.get('UPDATE', 0)} UPDATEs; "
            f"{audit['step_rows']} step rows in operation_outputs"
        )
        for name in ("dbos", "dbos-wal"):
            if f"{name}_journal" in notes:
                cp = notes[f"{name}_checkpoints"]
                print(
                    f"{name}: {notes[f'{name}_journal']}; {cp['step_rows']} step checkpoints "
                    f"for {cp['workflows_succeeded']} workflows"
                )
    elif args.no_dbos:
        print(f"DBOS: not measured ({notes.get('dbos_skipped', '--no-dbos')})")
    systems = [*(f"piton_{mode}" for mode in MODES), *summary["dbos"]]
    names = {f"piton_{mode}": f"piton {mode}" for mode in MODES}
    for system in systems:
        gains = [
            f"{w} runs {_ratio(ratios.get(f'{system}_c{w}_over_c{low}'))}"
            for w in args.concurrency[1:]
        ]
        print(f"{names.get(system, system)} throughput over {low} run(s): " + ", ".join(gains))
    rate = summary["floor_commits_per_s"]
    print(f"steps/s over the floor's commits/s (1e6 / floor us = {_num(rate)}/s):")
    for system in systems:
        print(
            f"  {names.get(system, system)}: "
            + ", ".join(
                f"{w} run(s) {_ratio(ratios.get(f'{system}_c{w}_over_floor_rate'))}"
                for w in args.concurrency
            )
        )
    for mode in MODES:
        k = f"piton_{mode}"
        print(
            f"piton {mode}: durable step / in-memory step "
            f"{_ratio(ratios[f'{k}_durable_over_memory'])}; per write transaction / floor "
            f"{_ratio(ratios[f'{k}_txn_over_floor'])}"
        )
    print(f"piton strict step / fast step: {_ratio(ratios['piton_strict_over_fast'])}")
    goals = summary["goals"]
    labels = {"dbos": "DBOS step", "dbos-wal": "DBOS (WAL) step"}
    for mode in MODES:
        k = f"piton_{mode}"
        lines = [
            (
                f"piton {mode} step / floor commit  <= {GOAL_FLOOR:g}x",
                ratios[f"{k}_step_over_floor"],
                goals[f"{k}_step_over_floor_at_most_2"],
            )
        ]
        for name in summary["dbos"]:
            lines.append(
                (
                    f"{labels[name]} / piton {mode} step  >= {GOAL_DBOS:g}x",
                    ratios[f"{name}_over_{k}"],
                    goals[f"{name}_over_{k}_at_least_3"],
                )
            )
        lines.append(
            (
                f"piton {mode} {high}-run / {low}-run throughput  >= {GOAL_SCALE:g}x",
                ratios[f"{k}_scale"],
                goals[f"{k}_scale_at_least_5"],
            )
        )
        default = " (the default)" if mode == MODES[0] else ""
        print()
        print(f'goals for durability="{mode}"{default}:')
        for text, value, ok in lines:
            print(f"goal: {text:<50} {_ratio(value):>8}  {_pf(ok)}")
        text = f"piton {mode} {high}-run steps/s / floor commits/s"
        print(
            f"info: {text:<50} {_ratio(ratios[f'{k}_c{high}_over_floor_rate']):>8}  "
            "(no goal; above 1x: past one fsync per step)"
        )
    if summary["dbos"]:
        print()
    for name in summary["dbos"]:
        print(
            f"(for comparison: {name} {high}-run / {low}-run throughput "
            f"{_ratio(ratios[f'{name}_scale'])}, {high}-run steps/s / floor commits/s "
            f"{_ratio(ratios[f'{name}_c{high}_over_floor_rate'])})"
        )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pf(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options every durable benchmark takes (this one and postgres.py)."""
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 5, quick 2)")
    p.add_argument("--quick", action="store_true", help="a smoke test of about 20 s")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="1 repetition of tiny workloads: checks that it runs, measures nothing (for tests)",
    )
    p.add_argument("--json", metavar="PATH", help="also write machine info and figures as JSON")
    p.add_argument(
        "--concurrency",
        default="1,10,100",
        help="concurrent runs, comma-separated, ascending (default 1,10,100)",
    )
    p.add_argument("--no-dbos", action="store_true", help="leave DBOS out")
    p.add_argument(
        "--dbos-api",
        choices=["auto", "sync", "async"],
        default="auto",
        help="DBOS API to time (default auto: the faster one in the warm-up)",
    )


def check_common_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in and check what add_common_args added (``p.error`` exits on a bad value)."""
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 2 if args.quick else 5
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    try:
        args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        p.error("--concurrency takes integers, e.g. 1,10,100")
    if not args.concurrency or sorted(args.concurrency) != args.concurrency:
        p.error("--concurrency takes ascending integers, e.g. 1,10,100")
    if args.concurrency[0] < 1:
        p.error("--concurrency levels must be >= 1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_common_args(p)
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="make the temporary directory for the databases here (default: .bench-tmp/ in "
        "the repository, i.e. the repository's disk)",
    )
    args = p.parse_args(argv)
    check_common_args(p, args)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    skipped = None if args.no_dbos else dbos_available()
    if skipped is not None:
        args.no_dbos = True
    info = machine_info(("piton", "dbos", "SQLAlchemy", "pydantic"))
    info["sqlite"] = sqlite3.sqlite_version
    parent = Path(args.dir) if args.dir else ROOT / ".bench-tmp"
    parent.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="durable-", dir=parent))
    info["databases in"] = f"{directory} (deleted at the end)"
    print_machine(info)
    if skipped is not None:
        print(f"DBOS is not importable ({skipped}); it is left out")
    print()
    try:
        res = asyncio.run(measure(args, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if not args.dir:
            try:
                parent.rmdir()  # only if nothing else is in it
            except OSError:
                pass
    if skipped is not None:
        res.notes["dbos_skipped"] = f"not importable: {skipped}"
    dbos_names = [] if args.no_dbos else ["dbos", "dbos-wal"]
    summary = summarize(res, args, dbos_names)
    summary["load_average_at_end"] = load_average()
    print_report(summary, res, args)
    print(f"\nload average at the end: {summary['load_average_at_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "args": vars(args),
                    **summary,
                    "notes": res.notes,
                    "repetitions": res.reps,
                },
                f,
                indent=2,
            )
            f.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
