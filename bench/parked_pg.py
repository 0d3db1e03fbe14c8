"""Parked runs cost nothing on PostgreSQL: a worker with 100,000 parked runs in its table.

Run from the repository root (after ``pip install -e '.[bench,postgres]'``)::

    .venv/bin/python bench/parked_pg.py [--parked 100000] [--real 200] [--repeat 3]

Everything lives in a scratch schema ``piton_bench_<pid>_<random>`` of ``--url``, dropped
at the end. One worker process (``python -m piton worker parked_pg:ASK --concurrency 100
--poll 0.2s``) runs the whole time; ``ASK`` is bench/parked.py's one-step workflow that
waits for an ``Answer`` (``ctx.wait_for_event``).

- The bulk load: ``--parked`` rows are COPYed straight into the ``runs`` table, of the
  same workflow as the real runs, so every claim has to look past them: half parked
  waiting for an event (``wake_at`` NULL), half sleeping until a year from now; status
  ``parked``, ``waiters`` 1, no owner, the fingerprint and start event of a real run, no
  journal (nobody wakes them). Then ``VACUUM ANALYZE runs``. The store reads them back
  (``get_many``, ``list_runs``) before anything is timed.
- Each round, with an empty table and with the bulk rows (in alternating order; the bulk
  rows are deleted and VACUUMed to get back to empty): ``--real`` runs are queued with
  ``w.start()`` and the worker runs each until it parks (timed: queue to all parked);
  half of them are woken one at a time (``w.send_event``; the latency of each, from the
  send to the run's ``finished_at``), the other half all at once (the time until the last
  one finished). An idle claim (``store.claim_runnable`` with nothing runnable, what a
  worker does at each poll) is timed from this process too.
- The worker's RSS (``VmRSS``) is sampled every second from start to end.
- At the end, on the loaded table: ``EXPLAIN (ANALYZE, BUFFERS)`` of the SQL the store
  runs (``piton.stores._postgres_ops``) for ``claim_runnable`` (its same-host owners
  query and the claim; with nothing runnable, and right after a delivery), ``runnable``,
  ``deliver`` and ``get``, each in a transaction rolled back. A sequential scan of
  ``runs`` is flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import sys
import time
from typing import Any

from _harness import load_average, machine_info, print_columns, print_machine, scratch_dir
from _harness import write_json as save_json
from parked import Answer, Ask
from workers import DEFAULT_PG, Fleet, Meter, PgSide, rates, rss_kb

ASK = Ask(timeout=None)  # what the worker runs: `python -m piton worker parked_pg:ASK`
YEAR = 365 * 86400.0


# -- the bulk load ----------------------------------------------------------------------------


def bulk_load(side: PgSide, count: int, model: str) -> float:
    """COPY ``count`` parked runs into the runs table, shaped like the run ``model``; return
    the seconds it took (VACUUM ANALYZE included)."""
    from piton.stores._rows import COLUMNS

    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    row = side.admin.execute(
        f'SELECT {cols} FROM "{side.schema}".runs WHERE run_id = %s', (model,)
    ).fetchone()
    assert row is not None, model
    base = dict(zip(COLUMNS, row, strict=True))
    now = time.time()
    started = time.perf_counter()
    with side.admin.cursor() as cur:
        with cur.copy(f'COPY "{side.schema}".runs ({cols}) FROM STDIN') as copy:
            for i in range(count):
                sleeping = i % 2 == 1
                values = {
                    **base,
                    "run_id": f"bulk-{i:06d}",
                    "status": "parked",
                    "owner": None,
                    "epoch": 1,
                    "lease_until": None,
                    "seq": 0,
                    "wake_at": now + YEAR + i if sleeping else None,
                    "inbox": 0,
                    "result": None,
                    "error": None,
                    "created_at": now - count + i,  # older than every real run
                    "updated_at": now - count + i,
                    "finished_at": None,
                    "waiters": 1,
                }
                copy.write_row([values[c] for c in COLUMNS])
    side.admin.execute(f'VACUUM ANALYZE "{side.schema}".runs')
    return time.perf_counter() - started


def unload(side: PgSide) -> None:
    side.admin.execute(f"DELETE FROM \"{side.schema}\".runs WHERE run_id LIKE 'bulk-%%'")
    side.admin.execute(f'VACUUM ANALYZE "{side.schema}".runs')


async def check_readable(flow: Ask, count: int) -> int:
    """The store reads bulk rows back: a sample by id, and a page of parked runs."""
    store = flow.store
    assert store is not None
    ids = [f"bulk-{i:06d}" for i in range(0, count, max(count // 100, 1))]
    records = await store.get_many(ids)
    assert len(records) == len(ids) and {r.status for r in records.values()} == {"parked"}
    page = await store.list_runs(status="parked", limit=100)
    return len(records) + len(page)


# -- the timings ------------------------------------------------------------------------------


def parked_count(side: PgSide, ids: list[str]) -> int:
    row = side.admin.execute(
        f"SELECT count(*) FROM \"{side.schema}\".runs WHERE run_id = ANY(%s) AND status = 'parked'",
        (ids,),
    ).fetchone()
    return int(row[0]) if row else 0


def finished_at(side: PgSide, run_id: str) -> float | None:
    row = side.admin.execute(
        f'SELECT finished_at FROM "{side.schema}".runs WHERE run_id = %s', (run_id,)
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def until(check: Any, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not done after {limit:.0f} s")
        await asyncio.sleep(0.002)


async def idle_claims(flow: Ask, calls: int) -> float:
    """Microseconds per ``claim_runnable`` call that finds nothing to claim."""
    store: Any = flow.store
    started = time.perf_counter()
    for _ in range(calls):
        got = await store.claim_runnable(["Ask"], time.time(), store.owner, store.lease, 100)
        assert not got, got
    return (time.perf_counter() - started) / calls * 1e6


async def one_round(side: PgSide, fleet: Fleet, flow: Ask, real: int, tag: str) -> dict[str, float]:
    """Queue ``real`` runs, wait until parked, wake half one at a time and half at once."""
    ids = [f"{tag}-{i}" for i in range(real)]
    started = time.perf_counter()
    await asyncio.gather(*(flow.start(run_id=run_id) for run_id in ids))
    await until(lambda: parked_count(side, ids) == real, f"{tag}: parking")
    park_s = time.perf_counter() - started
    half = real // 2
    latencies = []
    meter = Meter(side, fleet.pids).start()
    for run_id in ids[:half]:
        t0 = time.time()
        await flow.send_event(run_id, Answer(text=run_id))
        await until(lambda r=run_id: finished_at(side, r) is not None, f"{tag}: {run_id}")
        latencies.append((finished_at(side, run_id) or 0.0) - t0)
    one = rates(meter.stop(), half)
    t0 = time.time()
    await asyncio.gather(*(flow.send_event(r, Answer(text=r)) for r in ids[half:]))
    await until(lambda: side.finished_since(t0)[0] >= real - half, f"{tag}: all at once")
    all_s = side.finished_since(t0)[1] - t0
    latencies.sort()
    return {
        "park_s": park_s,
        "wake_ms_median": statistics.median(latencies) * 1e3,
        "wake_ms_p90": latencies[int(len(latencies) * 0.9)] * 1e3,
        "wake_all_s": all_s,
        "idle_claim_us": await idle_claims(flow, 100),
        "worker_ms_per_wake": one["worker_us_step"] / 1e3,
        "server_ms_per_wake": one["server_us_step"] / 1e3,
    }


class RssSampler:
    """The worker's VmRSS every ``period`` seconds, each sample tagged with the phase."""

    def __init__(self, pid: int, period: float = 1.0) -> None:
        self.pid, self.period, self.phase = pid, period, "start"
        self.samples: list[tuple[float, str, int]] = []
        self.began = time.monotonic()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                kb = rss_kb(self.pid)
                self.samples.append((time.monotonic() - self.began, self.phase, kb))
            await asyncio.sleep(self.period)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def by_phase(self) -> list[tuple[str, int, float, float, float]]:
        """(phase, samples, min, median, max MB), in the order the phases came."""
        phases: dict[str, list[int]] = {}
        for _, phase, kb in self.samples:
            phases.setdefault(phase, []).append(kb)
        return [
            (p, len(v), min(v) / 1024, statistics.median(v) / 1024, max(v) / 1024)
            for p, v in phases.items()
        ]


# -- the plans --------------------------------------------------------------------------------


def explain(side: PgSide, target: str) -> list[tuple[str, str]]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the store's queries, each in a transaction rolled
    back; ``target`` is a real parked run (the delivery's)."""
    import psycopg
    from _pg_server import APP

    from piton.stores import _postgres_ops as ops

    now = time.time()
    owner = "bench-host/1/1"
    claim = {"workflows": ["Ask"], "now": now, "wall": now, "until": now + 15, "owner": owner,
             "dead": [], "limit": 100}  # fmt: skip
    queries = [
        ("claim_runnable, 1: same-host owners (_LOCAL_OWNERS)", ops._LOCAL_OWNERS,
         {"workflows": ["Ask"], "now": now, "host": socket.gethostname() + "/", "me": owner}),
        ("claim_runnable, 2: the claim, nothing runnable (_CLAIM_RUNNABLE)", ops._CLAIM_RUNNABLE, claim),
        ("deliver: an event for a parked run (_DELIVER)", ops._DELIVER,
         {"run_id": target, "event": "{}", "step": None, "now": now, "limit": None}),
        ("claim_runnable, 2: the claim, right after that delivery", ops._CLAIM_RUNNABLE, claim),
        ("runnable (_RUNNABLE)", ops._RUNNABLE,
         {"workflows": ["Ask"], "now": now, "dead": [], "limit": 100}),
        ("get (SELECT ... WHERE run_id = ...)", f"{ops._SELECT_RUN} WHERE run_id = %(run_id)s",
         {"run_id": target}),
    ]  # fmt: skip
    plans = []
    with psycopg.connect(side.base, application_name=APP) as conn:
        conn.execute(f'SET search_path TO "{side.schema}"')
        conn.commit()  # kept past the rollbacks below
        cur = psycopg.ClientCursor(conn)  # parameters inlined: the plan shows the values
        for title, sql, params in queries:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plans.append((title, "\n".join(row[0] for row in cur.fetchall())))
            if not title.startswith("deliver"):  # the claim after it sees the delivery
                conn.rollback()
        conn.rollback()
    return plans


def sizes(side: PgSide) -> dict[str, str]:
    rows = side.admin.execute(
        "SELECT c.relname, pg_size_pretty(pg_relation_size(c.oid)) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND c.relname LIKE 'runs%%' ORDER BY c.relname",
        (side.schema,),
    ).fetchall()
    return {name: size for name, size in rows}


# -- the measurement --------------------------------------------------------------------------


async def measure(args: argparse.Namespace, side: PgSide, logs: Any) -> dict[str, Any]:
    flow = Ask(timeout=None, store=side.url)  # the submitter's
    assert flow.store is not None
    await flow.store.open()
    fleet = Fleet(side.url, "parked_pg:ASK", 1, args.concurrency, logs)
    rss: RssSampler | None = None
    out: dict[str, Any] = {"rounds": [], "loads": []}
    try:
        await fleet.ready()
        rss = RssSampler(fleet.pids[0])
        rss.phase = "warm-up"
        await one_round(side, fleet, flow, 10, "warm")
        target = "explain-target"  # a real parked run: the model of the bulk rows
        await flow.start(run_id=target)
        await until(lambda: parked_count(side, [target]) == 1, "the model run")
        loaded = False
        for r in range(args.repeat):
            for state in ("empty", "loaded") if r % 2 == 0 else ("loaded", "empty"):
                if state == "loaded" and not loaded:
                    rss.phase = "loading"
                    out["loads"].append(bulk_load(side, args.parked, target))
                    out["read_back"] = await check_readable(flow, args.parked)
                    loaded = True
                elif state == "empty" and loaded:
                    rss.phase = "unloading"
                    unload(side)
                    loaded = False
                rss.phase = state
                got = await one_round(side, fleet, flow, args.real, f"r{r}-{state}")
                out["rounds"].append({"round": r, "state": state, **got})
                print(f"round {r + 1}, {state}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in got.items()), flush=True)  # fmt: skip
        if not loaded:
            out["loads"].append(bulk_load(side, args.parked, target))
        rss.phase = "idle, loaded"
        await asyncio.sleep(args.idle)
        out["sizes"] = sizes(side)
        out["plans"] = explain(side, target)
    finally:
        if rss is not None:
            await rss.close()
            out["rss"] = rss.by_phase()
            out["rss_samples"] = rss.samples
        out["worker_exit"] = await fleet.stop()
        await flow.store.close()
    return out


def report(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    keys = [k for k in out["rounds"][0] if k not in ("round", "state")]
    med = {
        state: {
            k: statistics.median(r[k] for r in out["rounds"] if r["state"] == state) for k in keys
        }
        for state in ("empty", "loaded")
    }
    labels = {
        "park_s": f"queue {args.real} runs until all parked (s)",
        "wake_ms_median": "wake one run: send_event -> finished, median (ms)",
        "wake_ms_p90": "wake one run: 90th percentile (ms)",
        "wake_all_s": f"wake {args.real - args.real // 2} runs at once, until all finished (s)",
        "idle_claim_us": "claim_runnable with nothing runnable (us per call)",
        "worker_ms_per_wake": "worker CPU per woken run (ms)",
        "server_ms_per_wake": "server CPU per woken run (ms)",
    }
    print_columns(
        [("medians over rounds", "<58"), ("empty", ">9"), (f"{args.parked:,} parked", ">15"),
         ("ratio", ">7")],
        [[labels[k], f"{med['empty'][k]:.4g}", f"{med['loaded'][k]:.4g}",
          f"{med['loaded'][k] / med['empty'][k]:.2f}x"] for k in keys],
    )  # fmt: skip
    print(f"\nbulk load of {args.parked:,} parked runs (COPY + VACUUM ANALYZE): "
          + ", ".join(f"{s:.1f} s" for s in out["loads"]))  # fmt: skip
    print(f"rows read back through the store before timing: {out.get('read_back', '-')}")
    print(f"table and index sizes with the bulk rows: {out.get('sizes', {})}")
    print_columns(
        [("worker RSS by phase", "<22"), ("samples", ">7"), ("min MB", ">7"), ("median MB", ">9"),
         ("max MB", ">7")],
        [[p, str(n), f"{a:.1f}", f"{m:.1f}", f"{b:.1f}"] for p, n, a, m, b in out.get("rss", [])],
        title="the worker's VmRSS, sampled every second",
    )  # fmt: skip
    scans = []
    for title, plan in out.get("plans", []):
        print(f"\n-- {title}\n{plan}")
        scans += [f"{title}: {line.strip()}" for line in plan.splitlines() if "Seq Scan" in line]
    print("\nsequential scans in those plans: " + ("; ".join(scans) if scans else "none"))
    return {"medians": med, "seq_scans": scans}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_PG, help="a database; a scratch schema is made in it")
    p.add_argument("--parked", type=int, default=100_000, help="bulk-loaded parked runs")
    p.add_argument("--real", type=int, default=200, help="real runs parked and woken per round")
    p.add_argument("--repeat", type=int, default=3, help="rounds (each: empty and loaded)")
    p.add_argument("--concurrency", type=int, default=100, help="the worker's --concurrency")
    p.add_argument("--idle", type=float, default=10.0, help="seconds the worker idles at the end")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.parked, args.real, args.repeat, args.idle = 2000, 10, 1, 1.0
    info = machine_info(("piton", "psycopg"))
    tag = f"piton_bench_{os.getpid()}_{secrets.token_hex(3)}"
    side = PgSide(args.url, tag)
    info["scratch schema"] = f"{tag} (dropped at the end)"
    print_machine(info)
    print(flush=True)
    try:
        with scratch_dir("parked-pg-") as logs:
            out = asyncio.run(measure(args, side, logs))
    finally:
        dropped = side.drop([])
    summary = report(out, args)
    print(f"\nworker exit codes on SIGTERM: {out['worker_exit']}")
    print(f"dropped: {', '.join(dropped)}")
    print(f"load average at the end: {load_average()}")
    save_json(args.json, {"machine": info, **summary, **out, "dropped": dropped})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
