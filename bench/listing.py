"""Listing runs a page at a time stays fast in a big store: ``list_runs`` and ``piton runs``
with 100,000 runs, ``journal`` and ``piton show`` on a run of 10,000 entries.

Run from the repository root (after ``pip install -e '.[postgres,redis]'``)::

    .venv/bin/python bench/listing.py [--runs 100000] [--stores sqlite,postgres,redis]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]

Each store is seeded through the Store API (``create``, many at once, so they share
transactions): ``--runs`` runs of 4 workflows, one in 10 failed, the rest completed, and
one running run with ``--entries`` journal entries. SQLite lives in a scratch directory
(``synchronous=OFF`` while seeding), PostgreSQL in a scratch schema ``piton_bench_<pid>``,
Redis under a scratch prefix; all are deleted at the end.

Timed (median of ``--repeat``, milliseconds), each on an opened store:

- ``list_runs(limit=50)``: the first page; then a deep page, after the cursor of the run
  at 90% of the list (``after=run_cursor(...)``); both again with ``status="failed"``
  and with ``workflow=...``;
- ``journal(run, after=entries - 200, limit=200)``: the last page of the long run;
- the commands, as a subprocess from start to exit (interpreter start and imports
  included): ``piton runs``, ``piton runs --after CURSOR`` (the deep page), ``piton runs
  --status failed`` and ``piton show RUN --after N``; and ``python -c "import
  piton.cli"`` alone, the floor every command pays. Each command also reports how long
  its import of ``piton.cli`` took and how long the command ran once imported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from piton.stores.base import RunRecord, Store, open_store, run_cursor

WORKFLOWS = ("Convert", "Approve", "Report", "Import")
CHUNK = 1000  # runs created at once


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    await call()  # warm: connections, caches
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return median_ms(samples)


# a command in a subprocess that also says how long importing piton.cli took, and running
# the command once imported (what the command itself costs, whatever the imports do)
SPLIT = """
import sys, time
t0 = time.perf_counter()
from piton.cli import main
t1 = time.perf_counter()
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print(f"SPLIT {t1 - t0:.6f} {time.perf_counter() - t1:.6f}", file=sys.stderr)
"""
SPLITS: dict[str, list[tuple[float, float]]] = {}


def command(args: list[str], repeat: int, name: str = "") -> float:
    """The median wall time of ``python ARGS`` (``-m piton ...`` runs through ``SPLIT``,
    its import and run times kept in ``SPLITS[name]``)."""
    samples = []
    env = dict(os.environ, COLUMNS="200")
    env.pop("PITON_STORE", None)
    split = args[:2] == ["-m", "piton"]
    argv = ["-c", SPLIT, *args[2:]] if split else args
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
        samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{args} failed: {done.stderr}")
        if split:
            imports, work = done.stderr.rsplit("SPLIT ", 1)[1].split()
            SPLITS.setdefault(name, []).append((float(imports), float(work)))
    return median_ms(samples)


async def seed(store: Store, runs: int, entries: int) -> None:
    start = time.perf_counter()
    for first in range(0, runs, CHUNK):
        records = [
            RunRecord(
                run_id=f"run-{n:07}",
                workflow=WORKFLOWS[n % len(WORKFLOWS)],
                status="failed" if n % 10 == 3 else "completed",
            )
            for n in range(first, min(first + CHUNK, runs))
        ]
        await asyncio.gather(*(store.create(r, ['{"k": "Begin"}'], []) for r in records))
    long = RunRecord(run_id="long", workflow="Convert", status="running", owner="bench", epoch=1)
    body = '{"k": "StepDone", "at": 1700000000.0, "exec_id": "x1", "step": "work", "took": 0.01}'
    await store.create(long, [body] * entries, [])
    print(f"  seeded {runs:,} runs in {time.perf_counter() - start:.1f}s", flush=True)


async def measure(url: str, seed_url: str, args: argparse.Namespace) -> dict[str, float]:
    seeding = open_store(seed_url)
    async with seeding:
        await seed(seeding, args.runs, args.entries)
    found: dict[str, float] = {}
    store = open_store(url)
    async with store:
        everything = await store.list_runs(limit=args.runs + 10)
        deep = everything[int(len(everything) * 0.9)]
        cursor = run_cursor(deep)
        r = args.repeat
        for name, filters in (
            ("", {}),
            (" failed", {"status": "failed"}),
            (" workflow", {"workflow": "Approve"}),
        ):

            async def first(f: dict[str, Any] = filters) -> Any:
                return await store.list_runs(limit=50, **f)

            async def deeper(f: dict[str, Any] = filters) -> Any:
                return await store.list_runs(limit=50, after=cursor, **f)

            found[f"list_runs first page{name}"] = await timed(first, r)
            found[f"list_runs deep page{name}"] = await timed(deeper, r)
        page = await store.list_runs(limit=50, after=cursor)
        assert len(page) == 50 and page[0].created_at <= deep.created_at, page[:1]

        async def journal() -> Any:
            return await store.journal("long", after=args.entries - 200, limit=200)

        found["journal last page of 200"] = await timed(journal, r)
    cli = ["-m", "piton"]
    n = args.cli_repeat
    for name, words in (
        ("piton runs", ["runs"]),
        ("piton runs --after (deep)", ["runs", "--after", cursor]),
        ("piton runs --status failed", ["runs", "--status", "failed"]),
        ("piton show --after (last page)", ["show", "long", "--after", str(args.entries - 200)]),
    ):
        found[name] = command([*cli, *words, "--store", url], n, name)
    return found


def drop_postgres(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def drop_redis(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
        for start in range(0, len(keys), 10_000):
            client.delete(*keys[start : start + 10_000])
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--stores", default="sqlite,postgres,redis")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repeat", type=int, default=20, help="store calls timed")
    parser.add_argument("--cli-repeat", type=int, default=5, help="commands timed")
    args = parser.parse_args()
    print(f"{args.runs:,} runs; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    floor = command(["-c", "import piton.cli"], args.cli_repeat)
    print(f"python -c 'import piton.cli' (the floor of every command): {floor} ms")
    tag = f"piton_bench_{os.getpid()}"
    results: dict[str, dict[str, float]] = {}
    for kind in args.stores.split(","):
        print(f"{kind}:", flush=True)
        scratch = tempfile.mkdtemp(prefix=tag)
        try:
            if kind == "sqlite":
                path = os.path.join(scratch, "runs.db")
                url, seed_url = f"sqlite:///{path}", f"sqlite:///{path}?synchronous=OFF"
            elif kind == "postgres":
                url = seed_url = f"{args.postgres}?schema={tag}"
            elif kind == "redis":
                url = seed_url = f"{args.redis}?prefix={tag}"
            else:
                raise SystemExit(f"unknown store {kind!r}")
            results[kind] = asyncio.run(measure(url, seed_url, args))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if kind == "postgres":
                drop_postgres(args.postgres, tag)
            if kind == "redis":
                drop_redis(args.redis, tag)
        for name, value in results[kind].items():
            print(f"  {name:<34} {value:>9.2f} ms", flush=True)
        for name, pairs in SPLITS.items():
            imports = median_ms([p[0] for p in pairs])
            work = median_ms([p[1] for p in pairs])
            print(f"  {name}: importing piton.cli {imports} ms, then the command {work} ms")
        SPLITS.clear()


if __name__ == "__main__":
    main()
