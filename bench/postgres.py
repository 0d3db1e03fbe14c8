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
(2) ``piton durable``: ``StartEvent -> 10 steps -> StopEvent`` (bench/durable.py's
    ``Chain``) on ``Workflow(store="postgresql://...?schema=...", durability=mode)``, runs
    one after the other with distinct run ids, for ``"fast"`` and ``"strict"``: per step
    (run time / 10) and per write transaction the store made (``PostgresStore.transactions``;
    commit requests and journal rows are counted too).
(3) ``concurrency``: 1, 10 and 100 concurrent piton runs (``asyncio.gather``) for each
    mode, in steps per second, as a ratio to 1 run and to the floor's commits per second
    (``1e6 / floor_us``).
(4) ``DBOS``: a ``@DBOS.workflow()`` calling ten ``@DBOS.step()`` functions (bench/durable.py's
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
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from _machine import load_average, machine_info, print_machine
from durable import (
    GOAL_DBOS,
    GOAL_FLOOR,
    GOAL_SCALE,
    MODES,
    STEPS,
    Chains,
    DbosApp,
    DbosSystem,
    Results,
    Writes,
    _ge,
    _le,
    _num,
    _pf,
    _ratio,
    add_common_args,
    block_order,
    check_common_args,
    dbos_available,
    pick_dbos_api,
)

from piton.errors import LeaseLost

DEFAULT_URL = os.environ.get("PITON_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
# every connection of this benchmark names itself so: any other session is another client's
APP = f"piton-bench-{os.getpid()}"
NAMES = {"piton_fast": "piton fast", "piton_strict": "piton strict", "dbos": "DBOS"}
SETTINGS = (
    "server_version",
    "synchronous_commit",
    "fsync",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "checkpoint_timeout",
    "max_wal_size",
)


def with_query(url: str, **params: str) -> str:
    """``url`` with these query parameters set (replacing any of the same name)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


def redact(url: str) -> str:
    """``url`` without its password, for the report."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


# -- the server, outside the timings ----------------------------------------------------------


class Admin:
    """A plain (blocking) connection for setup, accounting and cleanup, never used while timing."""

    def __init__(self, url: str, prefix: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, application_name=APP)
        self.prefix = prefix
        self.schemas: list[str] = []

    def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def schema(self, suffix: str) -> str:
        """A scratch schema, created now and dropped by ``drop()``."""
        name = f"{self.prefix}_{suffix}"
        self.schemas.append(name)
        self.conn.execute(f'CREATE SCHEMA "{name}"')
        return name

    def drop(self) -> list[str]:
        dropped = []
        for name in self.schemas:
            self.conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            dropped.append(name)
        self.schemas.clear()
        return dropped

    def settings(self) -> dict[str, str]:
        return {name: self.value(f"SHOW {name}") for name in SETTINGS}

    def data_directory(self) -> str:
        """Where the server keeps its files, and on which filesystem (if the server is local)."""
        try:
            path = self.value("SHOW data_directory")
        except Exception as exc:  # not a superuser
            self.conn.rollback()
            return f"unknown ({type(exc).__name__})"
        mount = ("", "?", "?")
        try:
            with open("/proc/mounts") as f:
                for line in f:
                    device, point, fstype = line.split()[:3]
                    inside = path == point or path.startswith(point.rstrip("/") + "/")
                    if inside and len(point) >= len(mount[0]):
                        mount = (point, device, fstype)
        except OSError:
            pass
        if not os.path.isdir(path) or not mount[0]:
            return f"{path} (not on this machine, or not visible to this user)"
        return f"{path} ({mount[2]} on {mount[1]}, mounted at {mount[0]})"

    def checkpoints(self) -> int:
        """Checkpoints the server made so far (they make the next commits write more WAL)."""
        try:  # PostgreSQL 17 and later
            return int(
                self.value("SELECT num_timed + num_requested FROM pg_stat_checkpointer") or 0
            )
        except Exception:
            return int(
                self.value("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter") or 0
            )

    def next_xid(self) -> int:
        """The next transaction id: the server assigns one to every transaction (and
        subtransaction) that writes, so the difference counts write transactions, server-wide.
        Reading it assigns none."""
        return int(self.value("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"))

    def other_sessions(self) -> int:
        """Client connections of other programs to the server: other users of the server."""
        return int(self.value(_FOREIGN.format(states="")))

    def journal(self, schema: str) -> tuple[int, int]:
        row = self.conn.execute(
            f'SELECT COUNT(*), COALESCE(SUM(octet_length(entry)), 0) FROM "{schema}".journal'
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def completed(self, schema: str) -> tuple[int, int]:
        row = self.conn.execute(
            f"SELECT COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FROM \"{schema}\".runs"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def dbos_checkpoints(self, schema: str, prefix: str) -> tuple[int, int]:
        """(step rows in operation_outputs, succeeded workflows) for the ids with this prefix."""
        steps = self.value(
            f'SELECT COUNT(*) FROM "{schema}".operation_outputs WHERE workflow_uuid LIKE %s',
            (prefix + "%",),
        )
        done = self.value(
            f'SELECT COUNT(*) FROM "{schema}".workflow_status WHERE workflow_uuid LIKE %s '
            "AND status = 'SUCCESS'",
            (prefix + "%",),
        )
        return int(steps), int(done)

    def close(self) -> None:
        self.conn.close()


_FOREIGN = (
    "SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
    f"AND application_name <> '{APP}' AND pid <> pg_backend_pid(){{states}}"
)


class Watcher:
    """Samples, on a thread of its own and a connection of its own, how many other
    programs' sessions are busy on the server (running a statement or inside a
    transaction), every ``period`` seconds: the benchmark's figures are only its own when
    there are none."""

    def __init__(self, url: str, period: float = 0.25) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, application_name=APP)
        self.period = period
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="bench-watcher", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        sql = _FOREIGN.format(states=" AND state <> 'idle'")
        while not self.stop.wait(self.period):
            row = self.conn.execute(sql).fetchone()
            self.samples.append(int(row[0]) if row else 0)

    def close(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self.conn.close()
        busy = [n for n in self.samples if n]
        return {
            "samples": len(self.samples),
            "share_with_other_sessions_busy": len(busy) / max(len(self.samples), 1),
            "most_other_sessions_busy": max(self.samples, default=0),
        }


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
    """bench/durable.py's chain on ``Workflow(store=url, durability=mode)``: one
    PostgresStore per mode, both on one scratch schema."""

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


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _postgres_seconds() -> float:
    """CPU seconds used so far by the processes named ``postgres`` on this machine (the
    server's backends, when the server is local and its processes are visible; else 0)."""
    total = 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        name, rest = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :]
        if name.startswith("postgres"):
            fields = rest.split()
            # utime, stime, and cutime, cstime: the postmaster's reaped backends (DBOS's
            # connections end with each destroy()) stay counted
            total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How many cores were busy during a timing: this process, the Postgres server's
    processes (if local), and the whole machine; the rest of the machine's (``other``) is
    whatever else ran meanwhile (another user's tests, say), which skews the figures."""

    def __enter__(self) -> CpuMeter:
        self.ticks, self.pg = _machine_ticks(), _postgres_seconds()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        wall = time.perf_counter() - self.wall
        self.process = (time.process_time() - self.cpu) / wall
        busy, total = (now - then for now, then in zip(_machine_ticks(), self.ticks, strict=True))
        self.postgres = (_postgres_seconds() - self.pg) / wall
        self.machine = busy / total * (os.cpu_count() or 1) if total else float("nan")
        self.other = max(self.machine - self.process - self.postgres, 0.0)


@dataclass
class Sizes:
    floor_commits: int
    durable_runs: int
    dbos_runs: int
    piton_conc_runs: int  # runs per concurrency level (at least one round)
    dbos_conc_runs: int


def sizes(args: argparse.Namespace) -> Sizes:
    if args.smoke:  # does the benchmark run at all? (tests/test_bench_smoke.py)
        return Sizes(20, 2, 2, 4, 2)
    if args.quick:
        return Sizes(100, 12, 5, 20, 5)
    return Sizes(500, 60, 20, 200, 20)


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
    for mode in MODES:
        _, writes = await piton.concurrent(mode, 1, 3, f"warm-{mode}")
        await piton.concurrent(mode, 10, 1, f"warm-{mode}")
        res.notes[f"piton_{mode}_journal_bytes_per_commit"] = writes.entry_bytes / max(
            writes.commits, 1
        )
        res.notes[f"piton_{mode}_journal_bytes_per_txn"] = writes.entry_bytes / max(
            writes.transactions, 1
        )
    xids: dict[str, int] = {}
    res.notes["xids_per_run"] = xids  # write transactions the server saw, one run each
    for mode in MODES:
        before = admin.next_xid()
        await piton.concurrent(mode, 1, 1, f"xid-{mode}")
        xids[f"piton {mode}"] = admin.next_xid() - before
    per_commit = res.notes["piton_fast_journal_bytes_per_commit"]
    floor.entry = "x" * max(int(round(per_commit, -1)), 50)
    res.notes["floor_row_bytes"] = len(floor.entry)
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
    n = sizes(args)
    res = Results()
    floor = Floor(args.url, admin.schema("floor"))
    piton = PgPiton(args.url, admin, admin.schema("piton"))
    dbos: PgDbos | None = None
    audit: SqlAudit | None = None
    if not args.no_dbos:
        dbos = PgDbos(DbosApp(), args.url, f"{admin.prefix}_dbos")
        admin.schemas.append(dbos.schema)  # DBOS creates it; dropped at the end all the same
        audit = SqlAudit()
    levels = args.concurrency
    whole = CpuMeter().__enter__()
    watcher = Watcher(args.url)
    try:
        await floor.open()
        for store in piton.stores():
            await store.open()  # creates the tables
        await warm_up(floor, piton, dbos, audit, admin, args, res)
        blocks = ["fast", "floor", "strict", *(["dbos"] if dbos else []), "concurrent"]
        print(
            f"{args.repeat} repetitions: {n.floor_commits} floor commits (x2: synchronous_commit "
            f"on and off), {n.durable_runs} durable runs per mode ({', '.join(MODES)}), "
            f"{n.dbos_runs} DBOS runs; concurrency {', '.join(map(str, levels))}",
            flush=True,
        )
        res.notes["checkpoints_before"] = admin.checkpoints()
        for rep in range(args.repeat):
            figures: dict[str, float] = {}
            for block in block_order(rep, blocks):
                if block == "floor":
                    for sync in ("on", "off") if rep % 2 == 0 else ("off", "on"):
                        seconds = await floor.time(n.floor_commits, sync)
                        key = "floor_us" if sync == "on" else "floor_async_us"
                        figures[key] = seconds / n.floor_commits * 1e6
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
                elif block == "concurrent":
                    for width in levels if rep % 2 == 0 else levels[::-1]:
                        rounds = max(n.piton_conc_runs // width, 1)
                        for mode in block_order(rep, list(MODES)):
                            key = f"piton_{mode}_c{width}"
                            with CpuMeter() as cpu:
                                seconds, w = await piton.concurrent(
                                    mode, width, rounds, f"{mode}-c{width}r{rep}"
                                )
                            steps = rounds * width * STEPS
                            figures[f"{key}_steps_s"] = steps / seconds
                            figures[f"{key}_steps_txn"] = steps / w.transactions
                            for what in ("process", "postgres", "other"):
                                figures[f"{key}_cpu_{what}"] = getattr(cpu, what)
                else:
                    assert dbos is not None
                    await dbos.launch()
                    try:
                        seconds = await dbos.concurrent(1, n.dbos_runs, f"dbos-seq{rep}")
                        figures["dbos_us_step"] = seconds / (n.dbos_runs * STEPS) * 1e6
                        for width in levels if rep % 2 == 0 else levels[::-1]:
                            rounds = max(n.dbos_conc_runs // width, 1)
                            with CpuMeter() as cpu:
                                seconds = await dbos.concurrent(
                                    width, rounds, f"dbos-c{width}r{rep}"
                                )
                            figures[f"dbos_c{width}_steps_s"] = rounds * width * STEPS / seconds
                            for what in ("process", "postgres", "other"):
                                figures[f"dbos_c{width}_cpu_{what}"] = getattr(cpu, what)
                    finally:
                        await dbos.destroy()
            for system in systems(dbos is not None):
                for width in levels:
                    rate = figures[f"{system}_c{width}_steps_s"]
                    figures[f"{system}_c{width}_over_floor_rate"] = rate * figures["floor_us"] / 1e6
            res.reps.append(figures)
            _progress(rep, figures)
        res.notes["checkpoints_during"] = admin.checkpoints() - res.notes.pop("checkpoints_before")
        whole.__exit__()
        res.notes["cpu_whole_run"] = {
            what: getattr(whole, what) for what in ("process", "postgres", "machine", "other")
        }
        res.notes["piton_runs_completed"] = piton.completed()
        res.notes["piton_lease_lost"] = piton.lost
        if dbos is not None:
            steps, done = admin.dbos_checkpoints(dbos.schema, "dbos-")
            res.notes["dbos_checkpoints"] = {"step_rows": steps, "workflows_succeeded": done}
    finally:
        res.notes["other_sessions_busy"] = watcher.close()
        await floor.close()
        for store in piton.stores():
            await store.close()
        if dbos is not None:
            dbos.app.pool.shutdown()
    return res


def systems(with_dbos: bool) -> list[str]:
    return [*(f"piton_{mode}" for mode in MODES), *(["dbos"] if with_dbos else [])]


def _progress(rep: int, f: dict[str, float]) -> None:
    parts = [
        f"floor {f['floor_us']:.0f} us (synchronous_commit=off {f['floor_async_us']:.0f} us)",
        *(f"piton {mode} {f[f'piton_{mode}_us_step']:.0f} us/step" for mode in MODES),
    ]
    if "dbos_us_step" in f:
        parts.append(f"dbos {f['dbos_us_step']:.0f} us/step")
    print(f"  rep {rep + 1}: " + ", ".join(parts), flush=True)


# -- reporting ----------------------------------------------------------------------------------


def summarize(res: Results, args: argparse.Namespace, with_dbos: bool) -> dict[str, Any]:
    low, high = args.concurrency[0], args.concurrency[-1]
    api = res.notes.get("dbos_api", "-")
    rows: list[tuple[str, str, str]] = [
        ("(1) floor: Postgres commit, synchronous_commit=on", "us/commit", "floor_us"),
        ("    the same, synchronous_commit=off (no flush wait)", "us/commit", "floor_async_us"),
    ]
    for mode in MODES:
        rows.append((f"(2) piton durable {mode}, per step", "us/step", f"piton_{mode}_us_step"))
        rows.append(
            (f"    piton durable {mode}, per write transaction", "us/txn", f"piton_{mode}_us_txn")
        )
    if with_dbos:
        rows.append((f"(4) DBOS {api} API, Postgres, per step", "us/step", "dbos_us_step"))
    for system in systems(with_dbos):
        name = NAMES[system]
        for width in args.concurrency:
            rows.append(
                (f"(3) {name}, {width} concurrent", "steps/s", f"{system}_c{width}_steps_s")
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
        "floor_async_over_floor": res.ratio("floor_async_us", "floor_us"),
    }
    goals: dict[str, bool | None] = {}
    accounting: dict[str, float | None] = {}
    for mode in MODES:
        k = f"piton_{mode}"
        ratios[f"{k}_step_over_floor"] = res.ratio(f"{k}_us_step", "floor_us")
        ratios[f"{k}_txn_over_floor"] = res.ratio(f"{k}_us_txn", "floor_us")
        goals[f"{k}_step_over_floor_at_most_2"] = _le(ratios[f"{k}_step_over_floor"], GOAL_FLOOR)
        if with_dbos:
            ratios[f"dbos_over_{k}"] = res.ratio("dbos_us_step", f"{k}_us_step")
            goals[f"dbos_over_{k}_at_least_3"] = _ge(ratios[f"dbos_over_{k}"], GOAL_DBOS)
        ratios[f"{k}_scale"] = res.ratio(f"{k}_c{high}_steps_s", f"{k}_c{low}_steps_s")
        goals[f"{k}_scale_at_least_5"] = _ge(ratios[f"{k}_scale"], GOAL_SCALE)
        for what in ("entries_per_run", "commits_per_run", "txn_per_run"):
            accounting[f"{k}_{what}"] = res.median(f"{k}_{what}")
        for width in args.concurrency:
            accounting[f"{k}_c{width}_steps_per_txn"] = res.median(f"{k}_c{width}_steps_txn")
    for system in systems(with_dbos):
        for width in args.concurrency:
            for what in ("cpu_process", "cpu_postgres", "cpu_other"):
                accounting[f"{system}_c{width}_{what}"] = res.median(f"{system}_c{width}_{what}")
        ratios[f"{system}_scale"] = res.ratio(
            f"{system}_c{high}_steps_s", f"{system}_c{low}_steps_s"
        )
        for width in args.concurrency[1:]:
            ratios[f"{system}_c{width}_over_c{low}"] = res.ratio(
                f"{system}_c{width}_steps_s", f"{system}_c{low}_steps_s"
            )
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
        "dbos": ["dbos"] if with_dbos else [],
    }


def print_report(summary: dict[str, Any], res: Results, args: argparse.Namespace) -> None:
    head = f"{'figure':<54} {'unit':>9} {'median':>9} {'min':>9} {'max':>9}"
    print()
    print(head)
    print("-" * len(head))
    for r in summary["table"]:
        print(
            f"{r['figure']:<54} {r['unit']:>9} {_num(r['median']):>9} "
            f"{_num(r['min']):>9} {_num(r['max']):>9}"
        )
    acc, notes, ratios = summary["accounting"], res.notes, summary["ratios"]
    low, high = args.concurrency[0], args.concurrency[-1]
    with_dbos = bool(summary["dbos"])
    print()
    for mode in MODES:
        k = f"piton_{mode}"
        print(
            f"piton {mode}, per run of {STEPS} steps: {_num(acc[f'{k}_entries_per_run'])} "
            f"journal entries in {_num(acc[f'{k}_commits_per_run'])} commit requests and "
            f"{_num(acc[f'{k}_txn_per_run'])} write transactions (the run's creation included); "
            "steps per write transaction: "
            + ", ".join(
                f"{w} run(s) {_num(acc[f'{k}_c{w}_steps_per_txn'])}" for w in args.concurrency
            )
        )
    print(
        f"floor row: {notes['floor_row_bytes']} bytes (piton fast wrote "
        f"{notes['piton_fast_journal_bytes_per_commit']:.0f} journal bytes per commit request; "
        f"strict {notes['piton_strict_journal_bytes_per_commit']:.0f})"
    )
    print(
        "floor with synchronous_commit=off / on: "
        f"{_ratio(ratios['floor_async_over_floor'])} (the rest of the floor is the flush wait)"
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
    if with_dbos:
        cal = notes["dbos_api_calibration_us_per_step"]
        how = "given by --dbos-api" if args.dbos_api != "auto" else "the faster in the warm-up"
        print(
            f"DBOS API: {notes['dbos_api']} ({how}: sync {cal['sync']:.0f} us/step, "
            f"async {cal['async']:.0f} us/step)"
        )
        sql = notes["dbos_statements_per_run"]
        print(
            f"DBOS, one audited run of {STEPS} steps (statements through SQLAlchemy): "
            + ", ".join(f"{v} {k}" for k, v in sql.items())
            + f"; {notes['dbos_audit']['step_rows']} step rows in operation_outputs"
        )
        cp = notes["dbos_checkpoints"]
        print(
            f"DBOS: {cp['step_rows']} step checkpoints for {cp['workflows_succeeded']} "
            "succeeded workflows"
        )
    else:
        print(f"DBOS: not measured ({notes.get('dbos_skipped', '--no-dbos')})")
    print(f"throughput over {low} run(s):")
    for system in systems(with_dbos):
        print(
            f"  {NAMES[system]}: "
            + ", ".join(
                f"{w} runs {_ratio(ratios.get(f'{system}_c{w}_over_c{low}'))}"
                for w in args.concurrency[1:]
            )
        )
    print(
        f"steps/s over the floor's commits/s (1e6 / floor us = {_num(summary['floor_commits_per_s'])}/s):"
    )
    for system in systems(with_dbos):
        print(
            f"  {NAMES[system]}: "
            + ", ".join(
                f"{w} run(s) {_ratio(ratios.get(f'{system}_c{w}_over_floor_rate'))}"
                for w in args.concurrency
            )
        )
    print(
        f"busy cores during the concurrent timings (of {os.cpu_count()}): this process / the "
        "Postgres server's processes / anything else on the machine:"
    )
    for system in systems(with_dbos):
        print(
            f"  {NAMES[system]}: "
            + ", ".join(
                f"{w} run(s) "
                + " / ".join(
                    _cores(acc[f"{system}_c{w}_cpu_{what}"])
                    for what in ("process", "postgres", "other")
                )
                for w in args.concurrency
            )
        )
    whole = notes["cpu_whole_run"]
    print(
        "busy cores over the whole measurement (warm-up and repetitions): this process "
        f"{_cores(whole['process'])}, Postgres {_cores(whole['postgres'])}, anything else "
        f"{_cores(whole['other'])} (above about 0.1: other work shared the machine)"
    )
    print(f"piton strict step / fast step: {_ratio(ratios['piton_strict_over_fast'])}")
    goals = summary["goals"]
    print()
    print(f"{'ratio':<52} {'fast':>8} {'':4} {'strict':>8}")
    lines = [  # (what, the ratio's key, the goal's key) with {k} = piton_fast, piton_strict
        (f"piton step / floor commit  <= {GOAL_FLOOR:g}x", "{k}_step_over_floor", "_at_most_2"),
        ("piton write transaction / floor commit", "{k}_txn_over_floor", None),
    ]
    if with_dbos:
        lines.append((f"DBOS step / piton step  >= {GOAL_DBOS:g}x", "dbos_over_{k}", "_at_least_3"))
    lines.append(
        (f"piton {high}-run / {low}-run throughput  >= {GOAL_SCALE:g}x", "{k}_scale", "_at_least_5")
    )
    lines.append(
        (f"piton {high}-run steps/s / floor commits/s", f"{{k}}_c{high}_over_floor_rate", None)
    )
    for text, key, goal in lines:
        cells = []
        for mode in MODES:
            name = key.format(k=f"piton_{mode}")
            verdict = _pf(goals[name + goal]) if goal else ""
            cells.append(f"{_ratio(ratios[name]):>8} {verdict:4}")
        print(f"{text:<52} " + " ".join(cells))
    if with_dbos:
        print(
            f"(for comparison: DBOS {high}-run / {low}-run throughput "
            f"{_ratio(ratios['dbos_scale'])}, {high}-run steps/s / floor commits/s "
            f"{_ratio(ratios[f'dbos_c{high}_over_floor_rate'])})"
        )


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
    add_common_args(p)
    args = p.parse_args(argv)
    check_common_args(p, args)
    if "schema" in dict(parse_qsl(urlsplit(args.url).query)):
        p.error("--url: leave ?schema= out; the benchmark makes its own scratch schemas")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    skipped = None if args.no_dbos else dbos_available()
    if skipped is not None:
        args.no_dbos = True
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
        print_machine(info)
        if skipped is not None:
            print(f"DBOS is not importable ({skipped}); it is left out")
        print()
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
    summary = summarize(res, args, not args.no_dbos)
    summary["load_average_at_end"] = load_average()
    summary["other_sessions_at_end"] = other_at_end
    print_report(summary, res, args)
    print(f"\nscratch schemas dropped: {', '.join(dropped)}")
    print(f"other sessions on the server at the end: {other_at_end}")
    print(f"load average at the end: {summary['load_average_at_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "args": {**vars(args), "url": redact(args.url)},
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
