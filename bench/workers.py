"""Throughput with worker processes (``piton worker``) on PostgreSQL and Redis, next to each
server's raw commit floor and DBOS on PostgreSQL.

Run from the repository root (after ``pip install -e '.[bench,postgres,redis]'``)::

    .venv/bin/python bench/workers.py [--repeat 3] [--quick] [--stores postgres,redis]

For each store (a scratch ``?schema=piton_bench_...`` dropped at the end; a scratch Redis
``?prefix=...`` whose keys are deleted at the end) and each fleet of worker processes
(``--fleets``, processes x concurrency: 1x1000, 1x100, 2x100, 4x100; each process is
``python -m piton worker workers:FLOW --store URL --concurrency C --poll 0.2s``, FLOW
being ``_chain.py``'s ten-step ``Chain``):

- the workers are stopped (SIGSTOP), N runs are queued with ``w.start()`` (gathered: the
  store batches their creation), then the workers are continued (SIGCONT) and the clock
  runs from that instant until the last run's ``finished_at``, as the store recorded it:
  queueing is not timed, the workers find N queued runs at once. This process polls
  every 20 ms with one indexed query (how many runs finished since the start, the latest
  ``finished_at``); every run must end ``completed``. N is 1000 and 100; for 1 run, the
  median of 5 such timings. A worker claims as many runs as it has free slots, so with a
  concurrency of 1000 the first worker to wake takes all 1000: the fleets that compare
  worker counts run 100 runs at a time each;
- meanwhile, from /proc: CPU seconds of the worker processes, of this process, of the
  server's processes (PostgreSQL: this benchmark's backends, named by
  ``application_name``, apart from the server's background processes and other
  clients' backends; Redis: ``redis-server``, whoever its clients are), of the whole
  machine, and the disks' busy time and flush requests (``/proc/diskstats``: each WAL
  fsync reaches the disk as a flush). They say what was saturated: a worker is one
  Python thread, at most one core; the machine has what ``nproc`` says.

Next to it, each repetition measures:

- the floor: single-row ``INSERT`` commits (``synchronous_commit=on``) in a loop on one
  psycopg connection, and on ``--floor-connections`` connections at once (the server's
  parallel floor); for Redis single ``RPUSH`` round trips on one redis-py connection, and
  on several. With ``pgbench`` / ``redis-benchmark`` installed, the same with a C client
  (no Python in the way);
- piton in this process: ``Chain(store=url, durability=mode)`` runs one after the other,
  per step, for "fast" and "strict" (the goal's "durable step");
- DBOS on PostgreSQL (``_chain.py``'s ``DbosApp``, its system tables in a scratch schema):
  per step, one workflow at a time, and 100 and 1000 workflows at once
  (``DBOS.start_workflow``, DBOS's executor threads).

The Redis URL carries no ``max_connections`` (redis-py's pool default of 100): the store
shares 32 connections among its reads (per store and event loop), so a worker at
concurrency 1000 no longer exhausts the pool, as it did before commit 9b79e36, when
this script raised the limit to the largest concurrency + 100. ``--redis-max-connections
N`` still puts ``max_connections=N`` in the URL.

Figures are medians over ``--repeat`` repetitions (default 3); the order of the blocks
is reversed on odd repetitions. ``--smoke`` (for the tests) runs tiny workloads once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _chain import STEPS, Chain, dbos_available
from _harness import (
    ROOT,
    Results,
    add_common_args,
    at_least,
    at_most,
    block_order,
    check_common_args,
    load_average,
    machine_info,
    num,
    print_columns,
    print_figures,
    print_machine,
    print_ratios,
    repeat,
    scratch_dir,
    write_json,
)
from _pg_server import APP, with_query

from piton.errors import LeaseLost

# what the worker processes run (`python -m piton worker workers:FLOW`)
FLOW = Chain(timeout=None)
FLOW_STRICT = Chain(timeout=None, durability="strict")

BENCH = Path(__file__).resolve().parent
HZ = os.sysconf("SC_CLK_TCK")
CPU = ("workers", "worker_max", "bench", "mine", "bg", "others", "machine")  # Meter's
ENTRY = "x" * 730  # a floor row: what a fast run writes per commit request (RESULTS.md)
POLL = 0.02  # seconds between two looks at the finished runs
SINGLES = 5  # timings of one run, per worker count and repetition
GOAL_STRICT = 1.5  # strict durable step / raw Postgres commit: at most
GOAL_DBOS = 5.0  # DBOS step / piton step: at least
GOAL_TWO = 1.6  # 2 workers / 1 worker: at least
GOAL_WIDE = 3.0  # 1000 runs on one worker / 1 run: at least
DEFAULT_PG = os.environ.get("PITON_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_REDIS = os.environ.get("PITON_BENCH_REDIS", "redis://127.0.0.1:6379/0")


# -- /proc ------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds of the live threads of ``pid`` (schedstat: nanoseconds; 0 once gone)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except OSError:
        pass
    return total / 1e9


def parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def children(ppid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if parent(int(entry)) == ppid:
                found.append(int(entry))
    return found


def machine_s() -> float:
    """Busy CPU seconds of all cores (/proc/stat, in clock ticks)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / HZ


def disk_stats() -> tuple[float, int]:
    """(seconds the disks were busy, flushes) summed over the whole disks (/sys/block)."""
    disks = {d for d in os.listdir("/sys/block") if not d.startswith(("loop", "ram", "zram"))}
    busy = flushes = 0
    for parts in (line.split() for line in Path("/proc/diskstats").read_text().splitlines()):
        if len(parts) > 12 and parts[2] in disks:
            busy += int(parts[12])
            flushes += int(parts[18]) if len(parts) > 18 else 0  # flush requests completed
    return busy / 1000, flushes


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Meter:
    """Seconds between ``start()`` and ``stop()``: of the wall, of CPU in the workers (all,
    and the busiest one), this process, the server (by class: ``mine``, ``bg``,
    ``others``), the machine; of disk time; and the disks' flush requests."""

    def __init__(self, side: Any, workers: list[int]) -> None:
        self.side, self.workers = side, workers

    def sample(self) -> dict[str, Any]:
        disk, flushes = disk_stats()
        return {
            "wall": time.perf_counter(), "bench": time.process_time(), "machine": machine_s(),
            "disk": disk, "flushes": flushes,
            "workers": [cpu_s(pid) for pid in self.workers], **self.side.server_s(),
        }  # fmt: skip

    def start(self) -> Meter:
        self.then = self.sample()
        return self

    def stop(self) -> dict[str, float]:
        now, then = self.sample(), self.then
        per = [a - b for a, b in zip(now.pop("workers"), then.pop("workers"), strict=True)]
        out = {k: now[k] - then.get(k, 0.0) for k in now}
        return {**out, "workers": sum(per), "worker_max": max(per, default=0.0)}


def rates(raw: dict[str, float], steps: int) -> dict[str, float]:
    """A meter's seconds as busy cores (``cpu_*``), shares and rates, and CPU per step."""
    wall = raw["wall"]
    out = {f"cpu_{k}": raw.get(k, 0.0) / wall for k in CPU}
    out |= {"disk_busy": raw["disk"] / wall, "flushes_s": raw["flushes"] / wall}
    out["worker_us_step"] = (raw["workers"] or raw["bench"]) / steps * 1e6
    out["server_us_step"] = (raw.get("mine", 0.0) + raw.get("bg", 0.0)) / steps * 1e6
    return out


# -- the servers ------------------------------------------------------------------------------


class PgSide:
    """PostgreSQL: a scratch schema, a blocking admin connection (never used by the timed
    work itself), the floor's connections, the server's processes."""

    name = "postgres"

    def __init__(self, url: str, tag: str) -> None:
        import psycopg

        self.base, self.schema = url, tag
        self.url = with_query(url, schema=tag, application_name=APP)
        self.admin = psycopg.connect(url, autocommit=True, application_name=APP)
        self.admin.execute(f'CREATE SCHEMA "{tag}"')
        self.admin.execute(
            f'CREATE TABLE "{tag}".floor (id bigserial PRIMARY KEY, run_id text NOT NULL, '
            "entry text NOT NULL)"
        )
        pid = self.admin.execute("SELECT pg_backend_pid()").fetchone()
        self.postmaster = parent(int(pid[0])) if pid else 0
        self.conns: list[Any] = []

    def settings(self) -> dict[str, str]:
        from _pg_server import SETTINGS

        return {f"pg {n}": str(self.admin.execute(f"SHOW {n}").fetchone()[0]) for n in SETTINGS}

    def server_s(self) -> dict[str, float]:
        """CPU seconds of the server's live processes, by class: this benchmark's backends
        (``mine``, by ``application_name``), other clients' backends (``others``), and the
        postmaster and background processes, autovacuum included (``bg``)."""
        rows = self.admin.execute(
            "SELECT pid, application_name, backend_type FROM pg_stat_activity"
        ).fetchall()
        kind = {
            pid: "mine" if app == APP else "others" if btype == "client backend" else "bg"
            for pid, app, btype in rows
        }
        out = dict.fromkeys(("mine", "bg", "others"), 0.0)
        for pid in [self.postmaster, *children(self.postmaster)]:
            out[kind.get(pid, "bg")] += cpu_s(pid)
        return out

    def finished_since(self, t0: float) -> tuple[int, float]:
        row = self.admin.execute(
            f'SELECT count(*), max(finished_at) FROM "{self.schema}".runs WHERE finished_at >= %s',
            (t0,),
        ).fetchone()
        assert row is not None
        return int(row[0]), float(row[1] or 0.0)

    async def open_floor(self, width: int) -> None:
        from psycopg import AsyncConnection

        for _ in range(width):
            conn = await AsyncConnection.connect(self.base, autocommit=True, application_name=APP)
            await conn.execute(f'SET search_path TO "{self.schema}"')
            await conn.execute("SET synchronous_commit TO on")
            self.conns.append(conn)

    async def floor(self, commits: int, width: int) -> float:
        """Seconds for ``commits`` INSERT commits on each of ``width`` connections at once."""

        async def loop(conn: Any) -> None:
            for _ in range(commits):
                await conn.execute("INSERT INTO floor (run_id, entry) VALUES ('run', %s)", (ENTRY,))

        started = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in self.conns[:width]))
        return time.perf_counter() - started

    def c_floor(self, width: int, seconds: float) -> float | None:
        """Commits per second of ``pgbench`` (a C client) doing the same, or None."""
        tool = shutil.which("pgbench")
        if tool is None:
            return None
        script = BENCH.parent / ".bench-tmp" / f"{self.schema}.sql"
        script.parent.mkdir(exist_ok=True)
        script.write_text(
            f"INSERT INTO \"{self.schema}\".floor (run_id, entry) VALUES ('run', '{ENTRY}');\n"
        )
        try:
            out = subprocess.run(
                [tool, "-n", "-f", str(script), "-c", str(width), "-j", str(min(width, 2)),
                 "-T", str(max(1, round(seconds))), self.base],
                capture_output=True, text=True, env={**os.environ, "PGAPPNAME": APP},
                timeout=60,
            )  # fmt: skip
        finally:
            script.unlink()
        found = re.search(r"tps = ([\d.]+) \(without initial", out.stdout)
        return float(found.group(1)) if found else None

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()

    def drop(self, extra: list[str]) -> list[str]:
        dropped = []
        for name in [self.schema, *extra]:
            self.admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            dropped.append(name)
        self.admin.close()
        return dropped


class RedisSide:
    """Redis: a scratch key prefix, a blocking admin client, the floor's clients and the
    ``redis-server`` process (its CPU is the whole server's, whoever the clients are)."""

    name = "redis"

    def __init__(self, url: str, tag: str, max_connections: int) -> None:
        import redis

        self.base, self.prefix = url, tag
        self.url = f"{url}{'&' if '?' in url else '?'}prefix={tag}"
        if max_connections:  # only on request: the store bounds its reads (see RESULTS.md)
            self.url += f"&max_connections={max_connections}"
        self.admin = redis.Redis.from_url(url)
        self.pid = int(self.admin.info("server")["process_id"])
        self.conns: list[Any] = []

    def settings(self) -> dict[str, str]:
        info = self.admin.info("server")
        conf = {k: self.admin.config_get(k).get(k, "?") for k in ("appendonly", "appendfsync")}
        saves = self.admin.config_get("save").get("save", "")
        return {
            "redis version": str(info["redis_version"]),
            "redis persistence": f"appendonly={conf['appendonly']}, appendfsync="
            f"{conf['appendfsync']}, save='{saves}'",
            "redis store url": self.url.replace(self.base, "<url>"),
        }

    def server_s(self) -> dict[str, float]:
        return {"mine": cpu_s(self.pid)}  # the whole server's: whoever its clients are

    def finished_since(self, t0: float) -> tuple[int, float]:
        key = f"{self.prefix}:finished"
        count = int(self.admin.zcount(key, t0, "+inf"))
        last = self.admin.zrevrange(key, 0, 0, withscores=True)
        return count, float(last[0][1]) if last else 0.0

    async def open_floor(self, width: int) -> None:
        import redis.asyncio as aioredis

        for _ in range(width):
            client = aioredis.Redis.from_url(self.base, single_connection_client=True)
            await client.ping()
            self.conns.append(client)

    async def floor(self, commits: int, width: int) -> float:
        key = f"{self.prefix}:floor"

        async def loop(client: Any) -> None:
            for _ in range(commits):
                await client.rpush(key, ENTRY)

        started = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in self.conns[:width]))
        elapsed = time.perf_counter() - started
        await self.conns[0].delete(key)
        return elapsed

    def c_floor(self, width: int, seconds: float) -> float | None:
        """RPUSHes per second of ``redis-benchmark`` (a C client) doing the same, or None."""
        tool = shutil.which("redis-benchmark")
        if tool is None:
            return None
        parts, key = urlsplit(self.base), f"{self.prefix}:cfloor"
        requests = max(2000, int(seconds * 20000 * min(width, 4)))
        out = subprocess.run(
            [tool, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
             "-n", str(requests), "-c", str(width), "-q", "RPUSH", key, ENTRY],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.admin.delete(key)
        found = re.search(r"([\d.]+) requests per second", out.stdout)
        return float(found.group(1)) if found else None

    async def close(self) -> None:
        for client in self.conns:
            await client.aclose()

    def drop(self, extra: list[str]) -> list[str]:
        keys = list(self.admin.scan_iter(match=f"{self.prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            self.admin.delete(*keys[start : start + 1000])
        self.admin.close()
        return [f"{len(keys)} keys under {self.prefix}:"]


# -- the worker processes ---------------------------------------------------------------------


class Fleet:
    """``count`` processes of ``python -m piton worker``, their output in ``logs``."""

    def __init__(self, url: str, spec: str, count: int, concurrency: int, logs: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT / "src")])}
        self.logs = [logs / f"worker-{secrets.token_hex(3)}-{i}.log" for i in range(count)]
        command = [sys.executable, "-m", "piton", "worker", spec, "--store", url,
                   "--concurrency", str(concurrency), "--poll", "0.2s"]  # fmt: skip
        self.procs = []
        for log in self.logs:
            with open(log, "w") as out:
                proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
            self.procs.append(proc)
        self.pids = [p.pid for p in self.procs]

    def check(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"worker {proc.pid} exited ({proc.returncode}):\n{log.read_text()}"
                )

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all("working on" in log.read_text() for log in self.logs):
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {timeout} s: {self.logs}")
            await asyncio.sleep(0.05)

    def pause(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGSTOP)
        for pid in self.pids:  # stopped for sure before anything is queued
            while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
                time.sleep(0.001)

    def resume(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGCONT)

    def peak_rss_mb(self) -> float:
        return max(rss_kb(pid, "VmHWM") for pid in self.pids) / 1024

    async def stop(self, timeout: float = 40.0) -> list[int]:
        """SIGTERM (a drain), and the exit codes; a worker that does not end is killed."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return [p.returncode for p in self.procs]


# -- the timings ------------------------------------------------------------------------------


async def batch(side: Any, fleet: Fleet, flow: Chain, n: int, tag: str) -> dict[str, float]:
    """Queue ``n`` runs while the workers are stopped, continue them, time until the last
    ``finished_at``. Returns the seconds (``s``), queueing time and the meter's figures."""
    ids = [f"{tag}-{i}" for i in range(n)]
    fleet.pause()
    try:
        started = time.perf_counter()
        await asyncio.gather(*(flow.start(run_id=run_id) for run_id in ids))
        queued = time.perf_counter() - started
        meter = Meter(side, fleet.pids).start()
        t0 = time.time()
    finally:
        fleet.resume()
    limit = 60 + n * 0.2
    while True:
        count, last = side.finished_since(t0)
        if count >= n:
            break
        fleet.check()
        if time.time() - t0 > limit:
            errors = [line for log in fleet.logs for line in log.read_text().splitlines()
                      if " ERROR " in line][-3:]  # fmt: skip
            raise RuntimeError(
                f"{tag}: {count} of {n} runs finished after {limit:.0f} s; the workers' last "
                f"errors: {errors}"
            )
        await asyncio.sleep(POLL)
    raw = meter.stop()
    assert flow.store is not None
    statuses = Counter(r.status for r in (await flow.store.get_many(ids)).values())
    if statuses != Counter({"completed": n}):
        raise RuntimeError(f"{tag}: the runs ended {dict(statuses)}, not all completed")
    return {"s": last - t0, "queue_s": queued, **raw}


async def fleet_block(
    side: Any, args: argparse.Namespace, shape: str, rep: int, figures: dict[str, float]
) -> None:
    """``shape`` (``2x100``: 2 worker processes of concurrency 100): start them, warm them
    up, time each number of runs, stop them."""
    flow = side.flows["submit"]
    count, concurrency = map(int, shape.split("x"))
    fleet = Fleet(side.url, args.spec, count, concurrency, args.logs)
    try:
        await fleet.ready()
        warm = [f"warm-{rep}-{shape}-{i}" for i in range(10 * count)]
        await asyncio.gather(*(flow.start(run_id=run_id) for run_id in warm))
        for run_id in warm:
            await flow.result(run_id, timeout=60)
        for n in block_order(rep, args.runs):
            key = f"{side.name}_{shape}_n{n}"
            k = args.singles if n == 1 else 1  # one run: the median of k timings
            got = [await batch(side, fleet, flow, n, f"{key}-r{rep}-{i}") for i in range(k)]
            seconds = statistics.median(g["s"] for g in got)
            figures[f"{key}_runs_s"] = n / seconds
            figures[f"{key}_steps_s"] = n * STEPS / seconds
            figures[f"{key}_queue_runs_s"] = n / statistics.median(g["queue_s"] for g in got)
            # CPU over all k timings together: a single run is too short for the clock
            total = {name: sum(g.get(name, 0.0) for g in got) for name in got[0]}
            for name, value in rates(total, k * n * STEPS).items():
                figures[f"{key}_{name}"] = value
        figures[f"{side.name}_{shape}_peak_rss_mb"] = fleet.peak_rss_mb()
    finally:
        codes = await fleet.stop()
    if any(codes):
        raise RuntimeError(f"workers exited with {codes} on SIGTERM (expected 0): {fleet.logs}")


async def sequential(side: Any, mode: str, runs: int, tag: str) -> float:
    """Microseconds per step of ``runs`` runs one after the other in this process; a timing
    with a spurious ``LeaseLost`` (see RESULTS.md, postgres.py) is made again."""
    flow = side.flows[mode]
    for attempt in range(3):
        try:
            started = time.perf_counter()
            for i in range(runs):
                result = await flow.run(run_id=f"{tag}-{attempt}-{i}")
                assert result == STEPS, result
            return (time.perf_counter() - started) / (runs * STEPS) * 1e6
        except LeaseLost as exc:
            side.lost.append(str(exc))
    raise RuntimeError(f"three timings in a row lost a run: {side.lost[-3:]}")


async def floor_block(side: Any, args: argparse.Namespace, figures: dict[str, float]) -> None:
    n, width, name = args.floor_commits, args.floor_connections, side.name
    figures[f"{name}_floor_us"] = await side.floor(n, 1) / n * 1e6
    meter = Meter(side, []).start()
    figures[f"{name}_floor_c{width}_ops_s"] = n * width / await side.floor(n, width)
    got = rates(meter.stop(), n * width)
    figures[f"{name}_floor_cN_cpu_bench"] = got["cpu_bench"]
    figures[f"{name}_floor_cN_cpu_server"] = got["cpu_mine"] + got["cpu_bg"]
    if not args.smoke:
        for w in (1, width):
            rate = await asyncio.to_thread(side.c_floor, w, args.c_seconds)
            if rate is not None:
                figures[f"{name}_cfloor_c{w}_ops_s"] = rate


async def dbos_block(side: PgSide, args: argparse.Namespace, figures: dict[str, float]) -> None:
    d = side.dbos
    await d.launch()
    try:
        seconds = await d.concurrent(1, args.dbos_sequential, "dbos-seq")
        figures["dbos_us_step"] = seconds / (args.dbos_sequential * STEPS) * 1e6
        for width in args.dbos_widths:
            meter = Meter(side, []).start()
            seconds = await d.concurrent(width, 1, f"dbos-c{width}")
            figures[f"dbos_c{width}_steps_s"] = width * STEPS / seconds
            for key, value in rates(meter.stop(), width * STEPS).items():
                figures[f"dbos_c{width}_{key}"] = value
    finally:
        await d.destroy()


# -- the measurement --------------------------------------------------------------------------


def open_side(kind: str, args: argparse.Namespace, tag: str) -> Any:
    if kind == "postgres":
        side: Any = PgSide(args.postgres_url, tag)
    else:
        side = RedisSide(args.redis_url, tag, args.redis_max_connections)
    side.flows = {
        "submit": Chain(timeout=None, store=side.url),
        "fast": Chain(timeout=None, store=side.url, durability="fast"),
        "strict": Chain(timeout=None, store=side.url, durability="strict"),
    }
    side.lost = []
    side.dbos = None
    if kind == "postgres" and not args.no_dbos:
        from _chain import DbosApp
        from postgres import PgDbos

        side.dbos = PgDbos(DbosApp(), args.postgres_url, f"{tag}_dbos")
    return side


async def warm_up(side: Any, args: argparse.Namespace) -> None:
    """Outside the timings: the stores' connections and tables, the floor's table and
    connections, a few runs of each mode, DBOS's schema."""
    for flow in side.flows.values():
        await flow.store.open()
    await side.open_floor(args.floor_connections)
    await side.floor(20, args.floor_connections)
    for mode in ("fast", "strict"):
        await sequential(side, mode, 3, f"warm-{mode}")
    if side.dbos is not None:
        await side.dbos.launch()
        try:
            await side.dbos.concurrent(1, 2, "dbos-warm")
        finally:
            await side.dbos.destroy()


async def measure(args: argparse.Namespace, sides: list[Any]) -> Results:
    res = Results()
    blocks: list[str] = []
    by_name = {side.name: side for side in sides}
    for side in sides:
        await warm_up(side, args)
        blocks += [f"{side.name}:floor", f"{side.name}:inproc"]
        blocks += [f"{side.name}:{shape}" for shape in args.fleets]
        if side.dbos is not None:
            blocks.append(f"{side.name}:dbos")

    async def run(block: str, rep: int, figures: dict[str, float]) -> None:
        name, what = block.split(":")
        side = by_name[name]
        if what == "floor":
            await floor_block(side, args, figures)
        elif what == "inproc":
            for mode in block_order(rep, ("fast", "strict")):
                tag = f"{name}-{mode}-r{rep}"
                figures[f"{name}_{mode}_us_step"] = await sequential(
                    side, mode, args.sequential, tag
                )
        elif what == "dbos":
            await dbos_block(side, args, figures)
        else:
            await fleet_block(side, args, what, rep, figures)

    def done(rep: int, figures: dict[str, float]) -> None:
        parts = []
        for side in sides:
            n = side.name
            runs = " ".join(
                f"{f}:{num(figures.get(f'{n}_{f}_n{max(args.runs)}_runs_s'))}" for f in args.fleets
            )
            parts.append(
                f"{n}: floor {num(figures.get(f'{n}_floor_us'))} us, strict "
                f"{num(figures.get(f'{n}_strict_us_step'))} us/step, runs/s at "
                f"{max(args.runs)} runs {runs}"
            )
        if "dbos_us_step" in figures:
            parts.append(f"DBOS {num(figures['dbos_us_step'])} us/step")
        print(f"repetition {rep + 1}: " + "; ".join(parts), flush=True)

    try:
        await repeat(res, args.repeat, blocks, run, done)
    finally:
        for side in sides:
            for flow in side.flows.values():
                await flow.store.close()
            await side.close()
            if side.dbos is not None:
                side.dbos.app.pool.shutdown()
    res.notes["lease_lost"] = [m for side in sides for m in side.lost]
    return res


# -- the report -------------------------------------------------------------------------------

Cells = list[tuple[float | None, bool | None]]  # per store: a ratio, its verdict (None: no goal)


def goals(res: Results, args: argparse.Namespace, names: list[str]) -> list[tuple[str, str, Cells]]:
    """(key, text, cells) for each ratio of the report."""
    wide, lines = max(args.runs), []

    def line(key: str, text: str, top: str, bottom: str, goal: Any = None, only: str = "") -> None:
        cells: Cells = []
        for n in names:
            value = res.ratio(top.format(n=n), bottom.format(n=n)) if only in ("", n) else None
            cells.append((value, None if goal is None or value is None else goal(value)))
        lines.append((key, text, cells))

    strict, floor = "{n}_strict_us_step", "{n}_floor_us"
    line("strict_over_floor", f"strict durable step / raw commit <= {GOAL_STRICT}x (postgres)",
         strict, floor, lambda v: at_most(v, GOAL_STRICT), "postgres")  # fmt: skip
    line("strict_over_rpush", "strict durable step / raw RPUSH (no goal)", strict, floor,
         only="redis")  # fmt: skip
    line("fast_over_floor", "fast durable step / raw commit (no goal)", "{n}_fast_us_step", floor)
    for mode in ("fast", "strict"):
        line(f"dbos_over_{mode}", f"DBOS step / piton {mode} step >= {GOAL_DBOS:g}x",
             "dbos_us_step", f"{{n}}_{mode}_us_step", lambda v: at_least(v, GOAL_DBOS), "postgres")  # fmt: skip
    shapes = [tuple(map(int, f.split("x"))) for f in args.fleets]
    for runs in sorted(set(args.runs) - {1}, reverse=True):
        for count, c in [(w, c) for w, c in shapes if w > 1 and (1, c) in shapes]:
            # with runs <= c one worker's first claim takes them all: no goal there
            goal = (lambda v: at_least(v, GOAL_TWO)) if count == 2 and runs > c else None
            line(f"{count}x{c}_over_1x{c}_n{runs}",
                 f"{count} workers / 1, concurrency {c} each, {runs} runs"
                 + (f" >= {GOAL_TWO}x" if goal else " (no goal)" if runs > c else " (one claim takes all)"),
                 f"{{n}}_{count}x{c}_n{runs}_runs_s", f"{{n}}_1x{c}_n{runs}_runs_s", goal)  # fmt: skip
        for c in [c for w, c in shapes if w == 1]:
            goal = (lambda v: at_least(v, GOAL_WIDE)) if runs == wide and c >= runs else None
            line(f"1x{c}_n{runs}_over_n1",
                 f"1 worker of concurrency {c}: {runs} runs / 1 run"
                 + (f" >= {GOAL_WIDE:g}x" if goal else ""),
                 f"{{n}}_1x{c}_n{runs}_runs_s", f"{{n}}_1x{c}_n1_runs_s", goal)  # fmt: skip
    for f in args.fleets:  # durable steps per second over the floor's commits per second
        line(f"{f}_over_floor", f"{f} workers x concurrency, {wide} runs: steps/s / floor commits/s",
             f"{{n}}_{f}_n{wide}_steps_s", "{n}_floor_ops_s")  # fmt: skip
    for w in args.dbos_widths:
        line(f"{args.fleets[0]}_over_dbos_c{w}",
             f"steps/s: {args.fleets[0]} workers, {wide} runs / DBOS, {w} workflows",
             f"{{n}}_{args.fleets[0]}_n{wide}_steps_s", f"dbos_c{w}_steps_s", only="postgres")  # fmt: skip
    return lines


COLUMNS = (  # the CPU table: (title, format, the figure's key suffix)
    ("workers", ">7", "cpu_workers"), ("1 max", ">5", "cpu_worker_max"),
    ("server", ">6", "cpu_server"), ("others", ">6", "cpu_others"), ("bench", ">5", "cpu_bench"),
    ("machine", ">7", "cpu_machine"), ("rest", ">5", "cpu_rest"), ("disk", ">5", "disk_busy"), ("flush/s", ">7", "flushes_s"),
    ("wrk us/st", ">9", "worker_us_step"), ("srv us/st", ">9", "server_us_step"),
)  # fmt: skip


def report(res: Results, args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    for rep in res.reps:  # derived per repetition: ratios stay medians of per-repetition ratios
        for key in [k for k in rep if k.endswith("_floor_us")]:
            rep[key.replace("_us", "_ops_s")] = 1e6 / rep[key]
        for key in [k for k in rep if k.endswith("_cpu_mine")]:
            rep[key.replace("_mine", "_server")] = rep[key] + rep.get(key[:-4] + "bg", 0.0)
        for key in [k for k in rep if k.endswith("_cpu_machine")]:  # other programs
            known = ("workers", "bench", "mine", "bg", "others")
            rep[key.replace("_machine", "_rest")] = rep[key] - sum(
                rep.get(key.replace("machine", k), 0.0) for k in known
            )
    width, rows = args.floor_connections, []
    for n in names:
        rows += [
            (f"{n}: raw commit, 1 connection (psycopg / redis-py)", "us/op", f"{n}_floor_us"),
            (f"{n}: raw commits, {width} connections at once", "ops/s", f"{n}_floor_c{width}_ops_s"),
            (f"{n}: raw commits, C client, 1 connection", "ops/s", f"{n}_cfloor_c1_ops_s"),
            (f"{n}: raw commits, C client, {width} connections", "ops/s", f"{n}_cfloor_c{width}_ops_s"),
            (f"{n}: piton fast, in process, per step", "us/step", f"{n}_fast_us_step"),
            (f"{n}: piton strict, in process, per step", "us/step", f"{n}_strict_us_step"),
        ]  # fmt: skip
    rows.append(("postgres: DBOS, one workflow at a time, per step", "us/step", "dbos_us_step"))
    rows += [(f"postgres: DBOS, {w} workflows at once", "steps/s", f"dbos_c{w}_steps_s") for w in args.dbos_widths]  # fmt: skip
    table = [r for r in res.table(rows) if r["median"] is not None]
    print_figures(table, width=56)
    runs_rows, cpu_rows = [], []
    for n, shape, runs in ((n, f, r) for n in names for f in args.fleets for r in args.runs):
        key, head = f"{n}_{shape}_n{runs}", [n, shape, str(runs)]
        low, high = res.spread(f"{key}_runs_s") or (None, None)
        figure = [res.median(f"{key}_{k}") for k in ("runs_s", "steps_s", "queue_runs_s")]
        runs_rows.append([*head, num(figure[0]), f"{num(low)}-{num(high)}", *map(num, figure[1:])])
        cells = [(res.median(f"{key}_{k}"), k) for _, _, k in COLUMNS]
        cpu_rows.append([*head, *(_cell(v, k) for v, k in cells)])
    head = [("store", "<8"), ("workers", ">8"), ("runs", ">5")]
    print_columns(
        [*head, ("runs/s", ">8"), ("min-max", ">13"), ("steps/s", ">8"), ("queued/s", ">9")],
        runs_rows,
        title="throughput of worker processes (workers: processes x --concurrency), medians; the "
        "runs are queued first (queued/s: w.start() gathered), then timed",
    )
    print_columns(
        [*head, *((title, spec) for title, spec, _ in COLUMNS)],
        cpu_rows,
        title=f"busy cores during those timings (of {os.cpu_count()}): the workers (all; the "
        "busiest one), the server (this benchmark's backends and the background processes; "
        "Redis: all of redis-server), other clients' backends, this process, the machine and "
        "the rest of it (other programs); the disks' busy share and flushes/s (fsyncs reach "
        "the disk as flushes); CPU us per step, workers and server",
    )
    lines = goals(res, args, names)
    print_ratios(names, [(text, cells) for _, text, cells in lines], width=60,
                 title="ratios (medians of per-repetition ratios; -: not measured or not this store)")  # fmt: skip
    keys = sorted({k for rep in res.reps for k in rep})
    return {
        "table": table,
        "ratios": {f"{n}_{k}": c[i][0] for k, _, c in lines for i, n in enumerate(names)},
        "goals": {
            f"{n}_{k}": c[i][1]
            for k, _, c in lines
            for i, n in enumerate(names)
            if c[i][1] is not None
        },
        "medians": {key: res.median(key) for key in keys},
    }


def _cell(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    return (
        f"{value:.0%}"
        if key == "disk_busy"
        else f"{value:.2f}"
        if key.startswith("cpu")
        else num(value)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_common_args(p, repeat_help="repetitions (default 3, quick 1)", smoke=True)
    p.add_argument("--stores", default="postgres,redis", help="postgres,redis (default both)")
    p.add_argument(
        "--postgres-url", default=DEFAULT_PG, help="a database; a scratch schema is made in it"
    )
    p.add_argument(
        "--redis-url", default=DEFAULT_REDIS, help="a database; a scratch prefix is used"
    )
    p.add_argument(
        "--fleets",
        default="1x1000,1x100,2x100,4x100",
        help="worker processes x concurrency of each (default 1x1000,1x100,2x100,4x100)",
    )
    p.add_argument(
        "--runs", default="1,100,1000", help="queued runs per timing (default 1,100,1000)"
    )
    p.add_argument(
        "--durability", choices=["fast", "strict"], default="fast", help="the workers' mode"
    )
    p.add_argument(
        "--floor-connections", type=int, default=8, help="connections of the parallel floor"
    )
    p.add_argument(
        "--redis-max-connections",
        type=int,
        default=0,
        help="max_connections in the Redis URL (default 0: not set, redis-py's default of "
        "100; the store shares 32 connections among its reads, so no worker needs more)",
    )
    p.add_argument("--no-dbos", action="store_true", help="leave DBOS out")
    args = p.parse_args(argv)
    check_common_args(p, args, default=3, quick=1)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not set(args.stores) <= {"postgres", "redis"} or not args.stores:
        p.error("--stores takes postgres, redis or both")
    args.fleets = [f.strip() for f in args.fleets.split(",") if f.strip()]
    if not all(re.fullmatch(r"[1-9]\d*x[1-9]\d*", f) for f in args.fleets):
        p.error("--fleets takes PROCESSESxCONCURRENCY, comma-separated: 1x1000,2x100")
    args.runs = sorted(int(x) for x in args.runs.split(","))
    args.spec = "workers:FLOW" if args.durability == "fast" else "workers:FLOW_STRICT"
    args.singles = 1 if args.smoke else 3 if args.quick else SINGLES
    args.floor_commits = 20 if args.smoke else 300 if args.quick else 1000
    args.c_seconds = 2.0 if args.quick else 3.0
    args.sequential = 2 if args.smoke else 10 if args.quick else 30
    args.dbos_sequential = 2 if args.smoke else 5 if args.quick else 10
    args.dbos_widths = [4] if args.smoke else [100] if args.quick else [100, 1000]
    if "postgres" not in args.stores or (not args.no_dbos and dbos_available() is not None):
        args.no_dbos = True
    if args.no_dbos:
        args.dbos_widths = []
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tag = f"piton_bench_{os.getpid()}_{secrets.token_hex(3)}"
    info = machine_info(("piton", "psycopg", "redis", "dbos", "SQLAlchemy"))
    sides = []
    dropped: list[str] = []
    try:
        for kind in args.stores:
            sides.append(open_side(kind, args, tag))
            info.update(sides[-1].settings())
        info["scratch"] = f"schema {tag} (and {tag}_dbos), Redis prefix {tag}: removed at the end"
        info["workers"] = (
            f"{', '.join(args.fleets)} (processes x concurrency) of `python -m piton worker "
            f"{args.spec} --concurrency C --poll 0.2s`"
        )
        print_machine(info)
        print(flush=True)
        with scratch_dir("workers-") as logs:
            args.logs = logs
            res = asyncio.run(measure(args, sides))
    finally:
        for side in sides:
            dropped += side.drop([f"{tag}_dbos"] if side.name == "postgres" else [])
    summary = report(res, args, [side.name for side in sides])
    lost = res.notes["lease_lost"]
    print(f"\nin-process timings made again after a spurious LeaseLost: {len(lost)}")
    print(f"removed: {', '.join(dropped)}")
    print(f"load average at the end: {load_average()}")
    res.notes["removed"] = dropped
    write_json(args.json, {"machine": info, **summary, "reps": res.reps, "notes": res.notes,
                           "args": {k: v for k, v in vars(args).items() if k != "logs"}})  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
