"""The cost of a SqliteStore commit next to the physical floor of one SQLite WAL commit.

Run from the repository root::

    .venv/bin/python bench/store_floor.py [--repeat 5] [--commits 200] [--synchronous FULL]

(a) ``raw``: the floor. A plain ``sqlite3`` connection in WAL mode with the same
    ``synchronous`` setting, one ``BEGIN IMMEDIATE; INSERT (~300-byte row); COMMIT`` per
    iteration, in a loop on the calling thread. Each commit pays one fsync of the WAL.
(b) ``store``: ``await SqliteStore.commit`` of one ~300-byte journal entry, one after the
    other on one run: thread hand-off, lease and seq checks, the run row update and the
    journal insert, in one transaction each.
(c) ``group``: 100 commits to 100 runs at once with ``asyncio.gather``: the store's
    thread takes them all in one or two transactions (group commit), so they share fsyncs.
(d) ``100 runs``: 100 runs each committing ``--commits / 10`` times in a row, all runs
    concurrently, the shape of 100 concurrent durable runs.

Each repetition times (a) and (b) back to back, in alternating order, since the cost of an
fsync drifts; figures are medians over ``--repeat`` repetitions, in milliseconds per commit
and commits per second, and the (b)/(a) ratio is the median of the per-repetition ratios.
The database files live in a temporary directory under ``.bench-tmp/`` in this repository
(the same disk as the repository, not a RAM disk), deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import sys
import time
from pathlib import Path

from _harness import Results, print_columns, scratch_dir

from piton.stores.base import CommitRequest, RunRecord
from piton.stores.sqlite import SqliteStore

ENTRY = "x" * 300


class RawFloor:
    """A bare sqlite3 WAL database: one row inserted per transaction, on the calling thread."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute(
            "CREATE TABLE journal (run_id TEXT, seq INTEGER, entry TEXT, "
            "PRIMARY KEY (run_id, seq)) WITHOUT ROWID"
        )
        self.seq = 0

    def time(self, commits: int) -> float:
        """Seconds per commit."""
        started = time.perf_counter()
        for _ in range(commits):
            self.seq += 1
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO journal VALUES (?, ?, ?)", ("run", self.seq, ENTRY))
            self.db.execute("COMMIT")
        return (time.perf_counter() - started) / commits


class StoreCommits:
    """A SqliteStore with ``width`` runs, committing one ~300-byte entry at a time."""

    def __init__(self, path: Path, synchronous: str, width: int) -> None:
        self.store = SqliteStore(path, synchronous=synchronous)
        self.width = width
        self.seq = [1] * width

    async def open(self) -> StoreCommits:
        await self.store.open()
        for i in range(self.width):
            record = RunRecord(f"r{i}", "bench", "running", owner=self.store.owner, epoch=1)
            await self.store.create(record, [ENTRY], [])
        return self

    async def commit(self, i: int) -> None:
        await self.store.commit(CommitRequest(f"r{i}", 1, self.seq[i], [ENTRY]))
        self.seq[i] += 1

    async def sequential(self, commits: int) -> float:
        """(b) seconds per commit, one after the other on one run."""
        started = time.perf_counter()
        for _ in range(commits):
            await self.commit(0)
        return (time.perf_counter() - started) / commits

    async def gathered(self, rounds: int) -> tuple[float, float]:
        """(c) seconds per commit and commits per transaction, ``width`` at once."""
        transactions = self.store.transactions
        started = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(self.commit(i) for i in range(self.width)))
        elapsed = time.perf_counter() - started
        commits = rounds * self.width
        return elapsed / commits, commits / (self.store.transactions - transactions)

    async def runs(self, per_run: int) -> float:
        """(d) seconds per commit, ``width`` runs each committing ``per_run`` times in a row."""

        async def run(i: int) -> None:
            for _ in range(per_run):
                await self.commit(i)

        started = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(self.width)))
        return (time.perf_counter() - started) / (per_run * self.width)


async def measure(args: argparse.Namespace, directory: Path) -> Results:
    """Each repetition's figures: ``raw``, ``store``, ``group``, ``runs`` (seconds per
    commit), ``ratio`` (store / raw) and ``per_txn`` (commits per transaction in (c))."""
    sync, n = args.synchronous, args.commits
    raw = RawFloor(directory / "raw.db", sync)
    single = await StoreCommits(directory / "single.db", sync, 1).open()
    many = await StoreCommits(directory / "many.db", sync, 100).open()
    res = Results()
    for repeat in range(args.repeat):
        # (a) and (b) back to back, in alternating order: the disk's mood changes by the second
        if repeat % 2:
            store = await single.sequential(n)
            floor = raw.time(n)
        else:
            floor = raw.time(n)
            store = await single.sequential(n)
        group, per_txn = await many.gathered(max(n // 20, 3))
        runs = await many.runs(max(n // 20, 3))
        res.reps.append(
            {
                "raw": floor,
                "store": store,
                "ratio": store / floor,
                "group": group,
                "per_txn": per_txn,
                "runs": runs,
            }
        )
    raw.db.close()
    await single.store.close()
    await many.store.close()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--commits", type=int, default=200, help="sequential commits per repeat")
    parser.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL"])
    args = parser.parse_args()
    with scratch_dir("store-floor-") as directory:
        res = asyncio.run(measure(args, directory))
    med = {name: res.median(name) or 0.0 for name in res.reps[0]}
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.machine()}, synchronous={args.synchronous}, "
        f"{args.repeat} repeats of {args.commits} commits, db in {directory}"
    )
    rows = [
        ("(a) raw sqlite3 WAL commit (floor)", med["raw"]),
        ("(b) SqliteStore.commit, sequential", med["store"]),
        ("(c) 100 concurrent commits (gather)", med["group"]),
        ("(d) 100 runs committing in a loop", med["runs"]),
    ]
    print_columns(
        [("case", "<37"), ("ms/commit", ">10"), ("commits/s", ">10")],
        ([label, f"{seconds * 1e3:.3f}", f"{1 / seconds:.0f}"] for label, seconds in rows),
        rule=False,
    )
    print(f"(b) / (a), median of per-repeat ratios: {med['ratio']:.2f}x  (goal <= 2x)")
    print(
        f"(c) throughput / (b) throughput:        {med['store'] / med['group']:.1f}x  (goal >= 5x)"
    )
    print(f"(d) throughput / (b) throughput:        {med['store'] / med['runs']:.1f}x")
    print(f"commits per transaction in (c):         {med['per_txn']:.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
