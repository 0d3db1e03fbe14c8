"""PostgresStore at scale: run creations and final commits batched into one statement each,
and claims, wake-ups and finishes that read indexes, not the table, with many parked runs.
Each test works in a fresh schema, dropped afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from piton.errors import LeaseLost, StoreError
from piton.stores import _postgres_ops
from piton.stores._postgres_ops import PostgresOps
from piton.stores.base import CommitRequest, RunRecord
from piton.stores.postgres import PostgresStore

PARKED_RUNS = 50_000


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = f"piton_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def url(postgres_url: str, schema: str) -> str:
    return f"{postgres_url}?schema={schema}"


@pytest.fixture
async def store(url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(url)
    await s.open()
    yield s
    await s.close()


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """The size of each batch ``PostgresOps.<name>`` is called with (by the stores opened
    afterwards: a store's writer takes the method when it starts)."""
    sizes: list[int] = []
    original = getattr(PostgresOps, name)

    async def counted(self: PostgresOps, conn: Any, items: list[Any]) -> Any:
        sizes.append(len(items))
        return await original(self, conn, items)

    monkeypatch.setattr(PostgresOps, name, counted)
    return sizes


async def test_creations_waiting_together_are_one_statement(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create(RunRecord("old", "wf", "queued"), [], [])
    sizes = counting(monkeypatch, "create")
    records = [RunRecord(f"r{n}", "wf", "running", owner=store.owner, epoch=1) for n in range(50)]
    results = await asyncio.gather(
        *(store.create(r, [f"{r.run_id}:1", f"{r.run_id}:2"], ["s"]) for r in records),
        store.create(RunRecord("old", "wf", "queued"), ["x"], []),  # exists
        store.create(RunRecord("r7", "wf", "queued"), [], []),  # r7 comes earlier in the batch
    )
    assert results == [True] * 50 + [False, False]
    assert sum(sizes) == 52 and len(sizes) <= 3, f"creations were not batched: {sizes}"
    loaded = await store.load("r7")
    assert loaded.entries == [(1, "r7:1"), (2, "r7:2")] and loaded.stream == ["s"], loaded
    assert (loaded.record.status, loaded.record.seq, loaded.record.owner) == (
        "running",
        2,
        store.owner,
    )
    assert (await store.load("old")).entries == []


async def test_a_creation_the_database_refuses_fails_alone(store: PostgresStore) -> None:
    good = [RunRecord(f"g{n}", "wf", "queued") for n in range(5)]
    results = await asyncio.gather(
        *(store.create(r, [], []) for r in good[:3]),
        store.create(RunRecord("bad", "wf", "queued"), ["nul \x00 byte"], []),
        *(store.create(r, [], []) for r in good[3:]),
        return_exceptions=True,
    )
    assert results[:3] == [True] * 3 and results[4:] == [True] * 2, results
    assert isinstance(results[3], StoreError), results
    assert await store.get("bad") is None
    assert set(await store.get_many([r.run_id for r in good])) == {r.run_id for r in good}


async def test_final_and_parking_commits_are_one_statement(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = counting(monkeypatch, "commit_batch")
    async with PostgresStore(url) as store:
        assert isinstance(store, PostgresStore)
        await final_and_parking_commits(store, sizes)


async def final_and_parking_commits(store: PostgresStore, sizes: list[int]) -> None:
    runs = [f"r{n}" for n in range(40)]
    await asyncio.gather(
        *(
            store.create(RunRecord(r, "wf", "running", owner=store.owner, epoch=1), ["e1"], [])
            for r in runs
        )
    )
    commits = store.commits
    requests = []
    for n, run_id in enumerate(runs):
        if n == 0:  # a snapshot that covers the new entries, with a stream event
            requests.append(
                CommitRequest(run_id, 1, 1, ["end"], ["out"], "completed", snapshot="S")
            )
        elif n == 4:
            requests.append(CommitRequest(run_id, 1, 1, ["end"], [], "completed", fingerprint="F"))
        elif n % 4 == 0:
            requests.append(
                CommitRequest(run_id, 1, 1, ["end"], ["out"], "completed", result='"ok"')
            )
        elif n % 4 == 1:
            requests.append(CommitRequest(run_id, 1, 1, ["end"], [], "failed", error='{"e": 1}'))
        elif n % 4 == 2:
            park = CommitRequest(run_id, 1, 1, ["park"], [], "parked", wake_at=5.0, release=True)
            park.waiters = 1
            requests.append(park)
        else:
            requests.append(CommitRequest(run_id, 1, 1, ["step"]))  # plain
    requests.append(CommitRequest(runs[0], 7, 1, ["stale"], status="cancelled"))  # same run
    results = await asyncio.gather(*(store.commit(r) for r in requests), return_exceptions=True)
    assert results[:40] == [None] * 40 and isinstance(results[40], LeaseLost), results
    assert store.commits - commits == 40
    assert sizes and sizes[0] == 40, f"the commits were not batched: {sizes}"
    records = await store.get_many(runs)
    for n, run_id in enumerate(runs):
        record = records[run_id]
        assert record.seq == 2, record
        if n % 4 in (0, 1):
            assert record.finished and record.finished_at is not None, record
            assert (record.owner, record.lease_until) == (None, None), record
        elif n % 4 == 2:
            assert (record.status, record.wake_at, record.waiters, record.owner) == (
                "parked",
                5.0,
                1,
                None,
            ), record
        else:
            assert (record.status, record.owner) == ("running", store.owner), record
    assert records["r8"].result == '"ok"' and records["r1"].error == '{"e": 1}'
    assert (await store.load("r8")).entries == [(1, "e1"), (2, "end")]
    loaded = await store.load("r0")
    assert (loaded.snapshot, loaded.snapshot_seq, loaded.entries, loaded.stream) == (
        "S",
        2,
        [],
        ["out"],
    ), loaded
    assert records["r4"].fingerprint == "F" and records["r5"].fingerprint == "{}"
    # a request the batch statement did not apply goes alone, and says why
    with pytest.raises(LeaseLost):
        await store.commit(CommitRequest("r4", 1, 2, ["late"], status="completed"))


async def fill(conn: psycopg.AsyncConnection[Any], now: float) -> None:
    """PARKED_RUNS parked runs (half asleep for a day, half waiting for an event), finished
    runs, a few queued, running and due ones, and some events in inboxes."""
    statements = """
        INSERT INTO runs (run_id, workflow, status, created_at, updated_at, wake_at, waiters,
                          epoch, seq)
        SELECT 'p' || g, 'wf' || (g % 3), 'parked', {now} - g, {now} - g,
               CASE WHEN g % 2 = 0 THEN {now} + 86400 + g END, 1, 1, 3
        FROM generate_series(1, {parked}) g;
        INSERT INTO runs (run_id, workflow, status, created_at, updated_at, finished_at, epoch, seq)
        SELECT 'c' || g, 'wf' || (g % 3), 'completed', g, g, g, 1, 5
        FROM generate_series(1, {parked} / 5) g;
        INSERT INTO runs (run_id, workflow, status, created_at, updated_at, owner, lease_until,
                          epoch, seq)
        SELECT 'r' || g, 'wf' || (g % 3), 'running', {now}, {now}, 'host.invalid/1/1',
               {now} + 3600, 1, 3
        FROM generate_series(1, 30) g;
        INSERT INTO runs (run_id, workflow, status, created_at, updated_at, epoch, seq)
        SELECT 'q' || g, 'wf' || (g % 3), 'queued', {now} + g, {now} + g, 0, 0
        FROM generate_series(1, 30) g;
        UPDATE runs SET wake_at = {now} - 1 WHERE run_id IN ('p2', 'p4', 'p6');
        INSERT INTO inbox (run_id, event, created_at)
        SELECT 'p' || g, '{{}}', {now} FROM generate_series(1, 9, 2) g;
        UPDATE runs SET inbox = 1 WHERE run_id IN ('p1', 'p3', 'p5', 'p7', 'p9');
        ANALYZE runs;
        ANALYZE inbox;
    """.format(now=repr(now), parked=PARKED_RUNS)
    await conn.execute(statements.encode())  # no parameters: several statements at once


async def explain(conn: psycopg.AsyncConnection[Any], query: str, args: Any) -> str:
    async with conn.transaction(force_rollback=True):  # EXPLAIN ANALYZE of an UPDATE writes
        cursor = await conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {query}", args)
        return "\n".join(row[0] for row in await cursor.fetchall())


async def test_claims_read_indexes_with_many_parked_runs(
    store: PostgresStore, postgres_url: str, schema: str
) -> None:
    """With PARKED_RUNS parked runs, the claim, runnable() and the dead-owner scan read
    indexes only (no Seq Scan on runs), and a claim, a wake-up and a finish take about the
    time they take on an empty table."""
    now = time.time()
    args = {
        "workflows": ["wf0", "wf1", "wf2"],
        "now": now,
        "wall": now,
        "until": now + 30,
        "owner": "claimer.invalid/1/1",
        "dead": [],
        "limit": 100,
        "host": "host.invalid/",
        "me": "claimer.invalid/1/1",
    }
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("SELECT set_config('search_path', %s, false)", [f'"{schema}"'])
        empty = await timed(store)
        await fill(conn, now)
        plans = {
            name: await explain(conn, query, args)
            for name, query in (
                ("claim_runnable", _postgres_ops._CLAIM_RUNNABLE),
                ("runnable", _postgres_ops._RUNNABLE),
                ("local owners", _postgres_ops._LOCAL_OWNERS),
            )
        }
    for name, plan in plans.items():
        assert "Seq Scan on runs" not in plan, f"{name} reads the whole table:\n{plan}"
    claim = plans["claim_runnable"]
    for index in ("runs_queued", "runs_wake", "runs_mail", "runs_pkey"):
        assert index in claim, f"the claim does not read {index}:\n{claim}"
    assert "rows=38" in claim.splitlines()[0], claim  # 30 queued, 3 due, 5 with an event
    found = await store.claim_runnable(["wf0", "wf1", "wf2"], time.time(), "c.invalid/1/1", 30, 100)
    assert len(found) == 38, [r.run_id for r in found]  # the plans above rolled back
    full = await timed(store)
    assert full < max(5 * empty, 0.05), (
        f"with {PARKED_RUNS} parked runs: {full:.4f} s, empty: {empty:.4f} s"
    )


async def timed(store: PostgresStore) -> float:
    """Seconds to queue a run, claim it, deliver to a parked one and claim it, and finish
    both: the best of five."""
    best = float("inf")
    for _ in range(5):
        run_id, parked = f"t{uuid.uuid4().hex}", f"t{uuid.uuid4().hex}"
        await store.create(RunRecord(parked, "wf-t", "parked", waiters=1), ["e1"], [])
        started = time.perf_counter()
        await store.create(RunRecord(run_id, "wf-t", "queued"), [], [])
        await store.deliver(parked, "{}")
        claimed = await store.claim_runnable(["wf-t"], time.time(), store.owner, 30.0, 10)
        assert {r.run_id for r in claimed} == {run_id, parked}, claimed
        for r in claimed:
            await store.commit(CommitRequest(r.run_id, r.epoch, r.seq, ["end"], status="completed"))
        best = min(best, time.perf_counter() - started)
    return best
