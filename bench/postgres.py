"""Durable benchmark on PostgreSQL: piton's PostgresStore next to a raw Postgres commit and DBOS.

Run from the repository root (after ``pip install -e '.[bench,postgres]'``, with a
PostgreSQL server reachable at ``--url``)::

    .venv/bin/python bench/postgres.py [--url URL] [--repeat N] [--quick] [--json PATH]

One process, one invocation, one event loop. Everything lives in scratch schemas of the
database of ``--url`` (default ``postgresql://postgres@127.0.0.1:5432/test``), named
``piton_bench_<pid>_<random>_{floor,piton,dbos}``, created at the start and dropped at
the end:

(1) ``floor``: one psycopg 3 ``AsyncConnection`` in autocommit mode, one
    ``INSERT INTO floor VALUES (...)`` per iteration: each statement is a transaction of
    its own, and with ``synchronous_commit=on`` (the server's default, printed with
    ``fsync``) the server answers once the commit's WAL record is flushed. The row is as
    large as the journal entries piton writes per commit request in its default mode
    (measured in the warm-up). The same loop on a second connection with
    ``synchronous_commit=off`` (no wait for the flush) shows how much of the floor is the
    round trip and the insert, not the disk.
(2) ``piton durable``: ``StartEvent -> 10 steps -> StopEvent`` (``_chain.py``'s ``Chain``,
    as in bench/durable.py) on ``Workflow(store="postgresql://...?schema=...",
    durability=mode)``, runs one after the other with distinct run ids, for ``"fast"`` and
    ``"strict"``: per step (run time / 10) and per write transaction the store made
    (``PostgresStore.transactions``; commit requests and journal rows are counted too).
(3) ``concurrency``: 1, 10 and 100 concurrent piton runs (``asyncio.gather``) for each
    mode, in steps per second, as a ratio to 1 run and to the floor's commits per second
    (``1e6 / floor_us``).
(4) ``DBOS``: a ``@DBOS.workflow()`` calling ten ``@DBOS.step()`` functions (``_chain.py``'s
    ``DbosApp``), with ``system_database_url`` the same database and ``dbos_system_schema``
    a scratch schema: per step, and 1/10/100 concurrent workflows. The API (sync or async)
    is DBOS's faster one in the warm-up (``--dbos-api``).

Each repetition measures every system; the order is reversed on odd repetitions (the floor
stays between piton's two modes), ``gc.collect()`` runs before each timing. Figures are
medians over ``--repeat`` repetitions (default 5); ratios are medians of the
per-repetition ratios. The goals of bench/durable.py are evaluated for each mode.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import _durable_common as shared
from _chain import MODES, STEPS, Chains, DbosApp, DbosSystem, Writes, pick_dbos_api
from _harness import (
    CpuMeter,
    Results,
    block_order,
    check_common_args,
    machine_info,
    print_figures,
    repeat,
    times,
)
from _pg_server import APP, DEFAULT_URL, Admin, Watcher, redact, with_query

from piton.errors import LeaseLost

DBOS_LABELS = {"dbos": "DBOS"}
CPU = ("process", "postgres", "other")  # whose busy cores are counted


# -- (1) the floor ------------------------------------------------------------------------------


class Floor:
    """psycopg 3 async, autocommit: one INSERT, one transaction, per iteration."""

    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema
        self.conns: dict[str, Any] = {}
        self.seq = 0
        self.entry = "x" * 300

    async def open(self) -> None:
        from psycopg import AsyncConnection

        for sync in ("on", "off"):
            conn = await AsyncConnection.connect(self.url, autocommit=True, application_name=APP)
            await conn.execute(f'SET search_path TO "{self.schema}"')
            await conn.execute(f"SET synchronous_commit TO {sync}")
            self.conns[sync] = conn
        await self.conns["on"].execute(
            "CREATE TABLE floor (run_id text NOT NULL, seq bigint NOT NULL, entry text NOT NULL, "
            "PRIMARY KEY (run_id, seq))"
        )

    async def time(self, commits: int, sync: str = "on") -> float:
        """Seconds for ``commits`` commits with ``synchronous_commit`` ``on`` or ``off``."""
        conn, entry = self.conns[sync], self.entry
        gc.collect()
        started = time.perf_counter()
        for _ in range(commits):
            self.seq += 1
            await conn.execute(
                "INSERT INTO floor VALUES ('run', %s, %s)",
                (self.seq, entry),
            )
        return time.perf_counter() - started

    async def close(self) -> None:
        for conn in self.conns.values():
            await conn.close()


# -- (2), (3) piton ---------------------------------------------------------------------------


class PgPiton(Chains):
    """``_chain.py``'s chain on ``Workflow(store=url, durability=mode)``: one PostgresStore
    per mode, both on one scratch schema."""

    def __init__(self, url: str, admin: Admin, schema: str) -> None:
        self.url = with_query(url, schema=schema, application_name=APP)
        self.admin, self.schema = admin, schema
        super().__init__({mode: self.url for mode in MODES})

        self.lost: list[str] = []  # the LeaseLost messages of timings made again

    def _journal(self) -> tuple[int, int]:
        return self.admin.journal(self.schema)

    async def concurrent(
        self, mode: str, width: int, rounds: int, tag: str
    ) -> tuple[float, Writes]:
        """As ``Chains.concurrent``; a timing in which a run failed with ``LeaseLost`` is
        made again (at most twice) and the failure recorded.

        Why: piton's lease keeper can renew a run whose creation is not committed yet; the
        store then reports it lost and the run stops with ``LeaseLost`` ("taken over by
        another process") though no other process exists. A src bug, reported; the
        benchmark counts it instead of dying.
        """
        for _ in range(3):
            try:
                return await super().concurrent(mode, width, rounds, tag)
            except LeaseLost as exc:
                self.lost.append(str(exc))
        raise RuntimeError(f"three timings in a row lost a run: {self.lost[-3:]}")

    def stores(self) -> list[Any]:
        return [wf.store for wf in self.durable.values()]

    def completed(self) -> tuple[int, int]:
        return self.admin.completed(self.schema)


# -- (4) DBOS -----------------------------------------------------------------------------------


class PgDbos(DbosSystem):
    """DBOS with its system tables in a scratch schema of the benchmark's database."""

    def __init__(self, app: DbosApp, url: str, schema: str) -> None:
        super().__init__(app, "dbos")
        parts = urlsplit(url)
        self.url = urlunsplit(parts._replace(query=""))  # libpq options would go to SQLAlchemy
        self.schema = schema

    def config(self) -> dict[str, Any]:
        return {
            "system_database_url": self.url,
            "dbos_system_schema": self.schema,
            # DBOS's engine settings otherwise: only its connections' name changes
            "db_engine_kwargs": {"connect_args": {"application_name": APP}},
        }


class SqlAudit:
    """SQLAlchemy's statements and COMMITs while ``on`` (DBOS talks to Postgres through it)."""

    def __init__(self) -> None:
        import sqlalchemy as sa

        self.on = False
        self.statements: list[str] = []
        self.commits = 0

        def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
            if self.on and sql.strip():
                self.statements.append(sql.strip().split()[0].upper())

        def commit(_conn: Any) -> None:
            if self.on:
                self.commits += 1

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", statement)
        sa.event.listen(sa.engine.Engine, "commit", commit)

    def counts(self) -> dict[str, int]:
        counts = {word: self.statements.count(word) for word in sorted(set(self.statements))}
        counts["SQLAlchemy commits"] = self.commits
        return counts


# -- the measurement ----------------------------------------------------------------------------


@contextmanager
def cpu_meter(key: str, figures: dict[str, float]) -> Iterator[None]:
    """Around a concurrent timing: the busy cores of this process, of the Postgres server's
    processes (if local) and of anything else on the machine."""
    with CpuMeter("postgres") as cpu:
        yield
    for what, value in zip(CPU, (cpu.process, cpu.server, cpu.other), strict=True):
        figures[f"{key}_cpu_{what}"] = value


async def warm_up(
    floor: Floor,
    piton: PgPiton,
    dbos: PgDbos | None,
    audit: SqlAudit | None,
    admin: Admin,
    args: argparse.Namespace,
    res: Results,
) -> None:
    """Runs outside the timings: sizes the floor's row, audits one DBOS run, picks its API."""
    floor.entry = await shared.warm_piton(piton, res)
    xids: dict[str, int] = {}
    res.notes["xids_per_run"] = xids  # write transactions the server saw, one run each
    for mode in MODES:
        before = admin.next_xid()
        await piton.concurrent(mode, 1, 1, f"xid-{mode}")
        xids[f"piton {mode}"] = admin.next_xid() - before
    for sync in ("on", "off"):
        await floor.time(20 if args.smoke else 200, sync)
    if dbos is None or audit is None:
        return
    await dbos.launch()
    try:
        await dbos.concurrent(1, 2, "warm", api="sync")
        audit.on = True
        before = admin.next_xid()
        await dbos.concurrent(1, 1, "audit", api="sync")
        xids["DBOS"] = admin.next_xid() - before
        audit.on = False
        res.notes["dbos_statements_per_run"] = audit.counts()
        steps, done = admin.dbos_checkpoints(dbos.schema, "audit-")
        res.notes["dbos_audit"] = {"step_rows": steps, "workflows_succeeded": done}
        dbos.api = await pick_dbos_api(dbos, args, res)
    finally:
        await dbos.destroy()


async def measure(args: argparse.Namespace, admin: Admin) -> Results:
    n = shared.sizes(args)
    res = Results()
    floor = Floor(args.url, admin.schema("floor"))
    piton = PgPiton(args.url, admin, admin.schema("piton"))
    dbos: PgDbos | None = None
    audit: SqlAudit | None = None
    if not args.no_dbos:
        dbos = PgDbos(DbosApp(), args.url, f"{admin.prefix}_dbos")
        admin.schemas.append(dbos.schema)  # DBOS creates it; dropped at the end all the same
        audit = SqlAudit()
    names = [] if dbos is None else [dbos.name]
    levels = args.concurrency

    async def run(block: str, rep: int, figures: dict[str, float]) -> None:
        if block == "floor":
            for sync in block_order(rep, ("on", "off")):
                seconds = await floor.time(n.floor_commits, sync)
                key = "floor_us" if sync == "on" else "floor_async_us"
                figures[key] = seconds / n.floor_commits * 1e6
        elif block in MODES:
            await shared.time_sequential(piton, block, n.durable_runs, rep, figures)
        elif block == "concurrent":
            await shared.time_concurrent(piton, levels, n.piton_conc_runs, rep, figures, cpu_meter)
        else:
            assert dbos is not None
            await shared.time_dbos(
                dbos, n.dbos_runs, n.dbos_conc_runs, levels, rep, figures, cpu_meter
            )

    def done(rep: int, figures: dict[str, float]) -> None:
        shared.floor_rates(figures, shared.systems(names), levels)
        floor_text = (
            f"floor {figures['floor_us']:.0f} us "
            f"(synchronous_commit=off {figures['floor_async_us']:.0f} us)"
        )
        shared.progress(rep, [floor_text], figures, names)

    whole = CpuMeter("postgres").__enter__()
    watcher = Watcher(args.url)
    try:
        await floor.open()
        for store in piton.stores():
            await store.open()  # creates the tables
        await warm_up(floor, piton, dbos, audit, admin, args, res)
        print(
            f"{args.repeat} repetitions: {n.floor_commits} floor commits (x2: synchronous_commit "
            f"on and off), {n.durable_runs} durable runs per mode ({', '.join(MODES)}), "
            f"{n.dbos_runs} DBOS runs; concurrency {', '.join(map(str, levels))}",
            flush=True,
        )
        checkpoints = admin.checkpoints()
        await repeat(res, args.repeat, ["fast", "floor", "strict", *names, "concurrent"], run, done)
        res.notes["checkpoints_during"] = admin.checkpoints() - checkpoints
        whole.__exit__()
        res.notes["cpu_whole_run"] = {
            "process": whole.process,
            "postgres": whole.server,
            "machine": whole.machine,
            "other": whole.other,
        }
        res.notes["piton_runs_completed"] = piton.completed()
        res.notes["piton_lease_lost"] = piton.lost
        if dbos is not None:
            steps, finished = admin.dbos_checkpoints(dbos.schema, "dbos-")
            res.notes["dbos_checkpoints"] = {"step_rows": steps, "workflows_succeeded": finished}
    finally:
        res.notes["other_sessions_busy"] = watcher.close()
        await floor.close()
        for store in piton.stores():
            await store.close()
        if dbos is not None:
            dbos.app.pool.shutdown()
    return res


# -- reporting ----------------------------------------------------------------------------------


def summarize_postgres(res: Results, args: argparse.Namespace, with_dbos: bool) -> dict[str, Any]:
    api = res.notes.get("dbos_api", "-")
    names = ["dbos"] if with_dbos else []
    levels = args.concurrency
    rows = [
        ("(1) floor: Postgres commit, synchronous_commit=on", "us/commit", "floor_us"),
        ("    the same, synchronous_commit=off (no flush wait)", "us/commit", "floor_async_us"),
        *shared.piton_rows("(2)"),
        *[(f"(4) DBOS {api} API, Postgres, per step", "us/step", "dbos_us_step")][: len(names)],
        *shared.concurrency_rows(
            "(3)", shared.system_names({name: DBOS_LABELS[name] for name in names}), levels
        ),
    ]
    summary = shared.summarize(res, levels, names, rows)
    summary["ratios"]["floor_async_over_floor"] = res.ratio("floor_async_us", "floor_us")
    for system in shared.systems(names):
        for width in levels:
            for what in CPU:
                key = f"{system}_c{width}_cpu_{what}"
                summary["accounting"][key] = res.median(key)
    return summary


def print_report(summary: dict[str, Any], res: Results, args: argparse.Namespace) -> None:
    notes, ratios, acc, levels = (
        res.notes,
        summary["ratios"],
        summary["accounting"],
        args.concurrency,
    )
    print_figures(summary["table"], width=54)
    shared.print_accounting(summary, notes, levels)
    print(
        "floor with synchronous_commit=off / on: "
        f"{times(ratios['floor_async_over_floor'])} (the rest of the floor is the flush wait)"
    )
    done, total = notes["piton_runs_completed"]
    lost = notes["piton_lease_lost"]
    print(
        f"piton runs completed in the store (both modes): {done} of {total}; timings made "
        f"again after a spurious LeaseLost (a run stopped, left 'running'): {len(lost)}"
        + (f" ({'; '.join(lost)})" if lost else "")
    )
    print(
        f"write transactions per run of {STEPS} steps on the server (transaction ids assigned "
        "server-wide, one run each in the warm-up; subtransactions count too): "
        + ", ".join(f"{k} {v}" for k, v in notes["xids_per_run"].items())
    )
    print(f"server checkpoints during the repetitions: {notes['checkpoints_during']}")
    seen = notes["other_sessions_busy"]
    print(
        "other programs' sessions busy on the server (sampled every 0.25 s during the "
        f"measurement): in {seen['share_with_other_sessions_busy']:.0%} of "
        f"{seen['samples']} samples, at most {seen['most_other_sessions_busy']} at once"
    )
    shared.print_dbos(notes, args)
    if summary["dbos"]:
        cp = notes["dbos_checkpoints"]
        print(
            f"DBOS: {cp['step_rows']} step checkpoints for {cp['workflows_succeeded']} "
            "succeeded workflows"
        )
    shared.print_throughput(summary, DBOS_LABELS, levels)
    print(
        f"busy cores during the concurrent timings (of {os.cpu_count()}): this process / the "
        "Postgres server's processes / anything else on the machine:"
    )
    for system, name in shared.system_names({n: DBOS_LABELS[n] for n in summary["dbos"]}).items():
        cores = [
            f"{w} run(s) " + " / ".join(_cores(acc[f"{system}_c{w}_cpu_{what}"]) for what in CPU)
            for w in levels
        ]
        print(f"  {name}: " + ", ".join(cores))
    whole = notes["cpu_whole_run"]
    print(
        "busy cores over the whole measurement (warm-up and repetitions): this process "
        f"{_cores(whole['process'])}, Postgres {_cores(whole['postgres'])}, anything else "
        f"{_cores(whole['other'])} (above about 0.1: other work shared the machine)"
    )
    shared.print_goals(summary, DBOS_LABELS, levels)


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="the database (default $PITON_BENCH_POSTGRES or "
        "postgresql://postgres@127.0.0.1:5432/test); scratch schemas are made in it and dropped",
    )
    shared.add_durable_args(p)
    args = p.parse_args(argv)
    check_common_args(p, args)
    if "schema" in dict(parse_qsl(urlsplit(args.url).query)):
        p.error("--url: leave ?schema= out; the benchmark makes its own scratch schemas")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    skipped = shared.check_dbos(args)
    try:
        import psycopg
    except ImportError as exc:
        sys.exit(f"bench/postgres.py needs psycopg 3: pip install -e '.[postgres]' ({exc})")
    prefix = f"piton_bench_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = Admin(args.url, prefix)
    except psycopg.OperationalError as exc:
        sys.exit(f"cannot connect to {redact(args.url)}: {exc}")
    try:
        info = machine_info(("piton", "psycopg", "dbos", "SQLAlchemy", "pydantic"))
        info["postgres url"] = redact(args.url)
        for name, value in admin.settings().items():
            info[f"pg {name}"] = value
        info["pg data directory"] = admin.data_directory()
        info["pg other sessions"] = str(admin.other_sessions())
        info["scratch schemas"] = f"{prefix}_{{floor,piton,dbos}} (dropped at the end)"
        shared.print_header(info, skipped)
        try:
            res = asyncio.run(measure(args, admin))
        finally:
            dropped = admin.drop()
        res.notes["schemas_dropped"] = dropped
        other_at_end = admin.other_sessions()
    finally:
        admin.close()
    if skipped is not None:
        res.notes["dbos_skipped"] = f"not importable: {skipped}"
    summary = summarize_postgres(res, args, not args.no_dbos)
    summary["other_sessions_at_end"] = other_at_end
    print_report(summary, res, args)
    print(f"\nscratch schemas dropped: {', '.join(dropped)}")
    print(f"other sessions on the server at the end: {other_at_end}")
    shared.print_end(summary)
    shared.save(args, info, summary, res, url=redact(args.url))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
