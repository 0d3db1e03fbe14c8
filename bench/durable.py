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
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _durable_common as shared
from _chain import MODES, STEPS, Chains, DbosApp, DbosSystem, pick_dbos_api
from _harness import (
    Results,
    check_common_args,
    machine_info,
    print_figures,
    repeat,
    scratch_dir,
    times,
)

from piton.stores import SqliteStore

DBOS_LABELS = {"dbos": "DBOS", "dbos-wal": "DBOS (WAL)"}
JOURNALS = {"dbos": "default journal", "dbos-wal": "WAL journal"}


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


# -- (2), (3), (5) piton, (4) DBOS: _chain.py's workload on SQLite ------------------------------


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


# -- the measurement --------------------------------------------------------------------------


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


async def warm_up(
    floor: Floor, piton: Piton, dboses: list[Dbos], args: argparse.Namespace, res: Results
) -> None:
    """Runs outside the timings: sizes the floor's row, settles every WAL, picks DBOS's API."""
    await piton.in_memory(20)
    floor.entry = await shared.warm_piton(piton, res)
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


async def measure(args: argparse.Namespace, directory: Path) -> Results:
    n = shared.sizes(args)
    res = Results()
    floor = Floor(directory / "floor.db")
    piton = Piton(directory)
    dboses: list[Dbos] = []
    if not args.no_dbos:
        app = DbosApp()
        dboses = [Dbos(app, directory, wal=False), Dbos(app, directory, wal=True)]
    names = [d.name for d in dboses]
    levels = args.concurrency

    async def run(block: str, rep: int, figures: dict[str, float]) -> None:
        if block == "floor":
            figures["floor_us"] = floor.time(n.floor_commits) / n.floor_commits * 1e6
        elif block in MODES:
            await shared.time_sequential(piton, block, n.durable_runs, rep, figures)
        elif block == "memory":
            seconds = await piton.in_memory(n.memory_runs)
            figures["memory_us_step"] = seconds / (n.memory_runs * STEPS) * 1e6
        elif block == "concurrent":
            await shared.time_concurrent(piton, levels, n.piton_conc_runs, rep, figures)
        else:
            d = dboses[names.index(block)]
            await shared.time_dbos(d, n.dbos_runs, n.dbos_conc_runs, levels, rep, figures)

    def done(rep: int, figures: dict[str, float]) -> None:
        shared.floor_rates(figures, shared.systems(names), levels)
        shared.progress(rep, [f"floor {figures['floor_us']:.0f} us"], figures, names)

    try:
        await piton.store.open()  # creates the schema
        await warm_up(floor, piton, dboses, args, res)
        print(
            f"{args.repeat} repetitions: {n.floor_commits} floor commits, {n.durable_runs} "
            f"durable runs per mode ({', '.join(MODES)}), {n.memory_runs} in-memory runs, "
            f"{n.dbos_runs} DBOS runs per database; concurrency {', '.join(map(str, levels))}"
        )
        # the floor between piton's two modes: the cost of an fsync drifts, and each mode is
        # compared with the floor measured next to it in the same repetition
        blocks = ["fast", "floor", "strict", "memory", *names, "concurrent"]
        await repeat(res, args.repeat, blocks, run, done)
        res.notes["piton_runs_completed"] = piton.completed()
        for d in dboses:
            res.notes[f"{d.name}_journal"] = d.journal_mode()
            steps, finished = d.checkpoints(f"{d.name}-")
            res.notes[f"{d.name}_checkpoints"] = {
                "step_rows": steps,
                "workflows_succeeded": finished,
            }
    finally:
        floor.db.close()
        await piton.store.close()
        if dboses:
            dboses[0].app.pool.shutdown()
    return res


# -- reporting --------------------------------------------------------------------------------


def summarize_sqlite(
    res: Results, args: argparse.Namespace, dbos_names: list[str]
) -> dict[str, Any]:
    api = res.notes.get("dbos_api", "-")
    rows = [
        ("(1) floor: SQLite WAL commit, synchronous=FULL", "us/commit", "floor_us"),
        *shared.piton_rows("(2)"),
        ("(3) piton in memory, per step", "us/step", "memory_us_step"),
        *(
            (f"(4) DBOS {api} API, {JOURNALS[name]}, per step", "us/step", f"{name}_us_step")
            for name in dbos_names
        ),
        *shared.concurrency_rows(
            "(5)",
            shared.system_names({name: f"DBOS {JOURNALS[name]}" for name in dbos_names}),
            args.concurrency,
        ),
    ]
    summary = shared.summarize(res, args.concurrency, dbos_names, rows)
    for mode in MODES:
        k = f"piton_{mode}"
        summary["ratios"][f"{k}_durable_over_memory"] = res.ratio(f"{k}_us_step", "memory_us_step")
    return summary


def print_report(summary: dict[str, Any], res: Results, args: argparse.Namespace) -> None:
    notes, ratios, levels = res.notes, summary["ratios"], args.concurrency
    print_figures(summary["table"])
    shared.print_accounting(summary, notes, levels)
    if notes["wal_warm_up"]:
        print(
            "WAL warm-up, until each WAL stopped growing: "
            + ", ".join(f"{v} {k}" for k, v in notes["wal_warm_up"].items())
        )
    done, total = notes["piton_runs_completed"]
    print(f"piton runs completed in the store (both modes): {done} of {total}")
    shared.print_dbos(notes, args)
    for name in summary["dbos"]:
        cp = notes[f"{name}_checkpoints"]
        print(
            f"{name}: {notes[f'{name}_journal']}; {cp['step_rows']} step checkpoints "
            f"for {cp['workflows_succeeded']} workflows"
        )
    shared.print_throughput(summary, DBOS_LABELS, levels)
    for mode in MODES:
        print(
            f"piton {mode}: durable step / in-memory step "
            f"{times(ratios[f'piton_{mode}_durable_over_memory'])}"
        )
    shared.print_goals(summary, DBOS_LABELS, levels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    shared.add_durable_args(p)
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
    skipped = shared.check_dbos(args)
    info = machine_info(("piton", "dbos", "SQLAlchemy", "pydantic"))
    info["sqlite"] = sqlite3.sqlite_version
    with scratch_dir("durable-", args.dir) as directory:
        info["databases in"] = f"{directory} (deleted at the end)"
        shared.print_header(info, skipped)
        res = asyncio.run(measure(args, directory))
    if skipped is not None:
        res.notes["dbos_skipped"] = f"not importable: {skipped}"
    summary = summarize_sqlite(res, args, [] if args.no_dbos else ["dbos", "dbos-wal"])
    print_report(summary, res, args)
    print()
    shared.print_end(summary)
    shared.save(args, info, summary, res)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
