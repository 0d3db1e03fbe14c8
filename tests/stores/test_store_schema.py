"""Schema version 2 of every durable store (the ``waiters`` of a run), what ``stuck`` reads,
and the new writes under contention: ``deliver(limit=)`` from several stores at once, and
``release`` ordered with the commits of its batch."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import sql

from piton.errors import LeaseLost, TooManyPendingEvents
from piton.stores import _postgres_engine, _sqlite_thread
from piton.stores.base import CommitRequest, RunRecord, Store
from piton.stores.postgres import PostgresStore
from piton.stores.postgres import migrations as postgres_migrations
from piton.stores.redis import SCHEMA_VERSION, RedisStore
from piton.stores.sqlite import SqliteStore, migrations

# runs as piton wrote them before waiters were recorded (version 1 has no such column)
VERSION_1_RUNS = """
INSERT INTO runs (run_id, workflow, status, owner, wake_at, created_at, updated_at) VALUES
    ('waiting', 'wf', 'parked', NULL, NULL, 1.0, 1.0),
    ('sleeping', 'wf', 'parked', NULL, 1e12, 2.0, 2.0),
    ('working', 'wf', 'running', 'x.invalid/1/1', NULL, 3.0, 3.0)
"""


async def add_version_1_runs(store: Store) -> None:
    """The runs of VERSION_1_RUNS, through the store's own connection."""

    async def insert(conn: Any) -> None:
        await conn.execute(VERSION_1_RUNS)

    if isinstance(store, SqliteStore):
        await store._call(lambda c: c.execute(VERSION_1_RUNS), write=True)
    elif isinstance(store, PostgresStore):
        await store._read(insert)
    else:  # Redis: every field but waiters, as version 1 wrote the hash
        for run_id, status, wake_at in (
            ("waiting", "parked", None),
            ("sleeping", "parked", 1e12),
            ("working", "running", None),
        ):
            record = RunRecord(run_id, "wf", status, wake_at=wake_at)
            if status == "running":
                record.owner, record.epoch = "x.invalid/1/1", 1
            await store.create(record, [], [])


async def check_version_2_runs(store: Store) -> None:
    waiters = {r.run_id: r.waiters for r in await store.list_runs()}
    # a parked run counts one waiter (unknown, not none): it is not reported stuck
    assert waiters == {"waiting": 1, "sleeping": 1, "working": 0}, waiters
    assert await store.stuck() == []
    await store.claim("waiting", store.owner, 30.0)
    parking = CommitRequest("waiting", 1, 0, ["park"], status="parked", release=True)
    await store.commit(parking)  # the next parking commit writes the real number: none
    assert [r.run_id for r in await store.stuck()] == ["waiting"]
    await store.deliver("waiting", "{}")  # not stuck any more, for the teardown check


# --- SQLite ------------------------------------------------------------------------------------


async def test_sqlite_version_1_database_gains_waiters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    with monkeypatch.context() as patch:
        patch.setattr(_sqlite_thread, "migrations", lambda: migrations()[:1])
        async with SqliteStore(path) as s:
            await add_version_1_runs(s)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
    async with SqliteStore(path) as s:
        await check_version_2_runs(s)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(migrations()),)
    assert [name for _, name, _ in migrations()][:2] == ["001_initial.sql", "002_waiters.sql"]


async def test_sqlite_stuck_reads_its_partial_index(tmp_path: Path) -> None:
    from piton.stores._sqlite_ops import _READ_LIST, _STUCK

    async with SqliteStore(tmp_path / "runs.db") as s:
        assert isinstance(s, SqliteStore)
        query = f"SELECT {_READ_LIST} FROM runs WHERE {_STUCK} AND workflow IN (?) LIMIT 5"
        plan = await s._call(
            lambda c: c.execute(f"EXPLAIN QUERY PLAN {query}", ("wf",)).fetchall(), write=False
        )
    assert "USING INDEX runs_stuck" in " ".join(row[-1] for row in plan), plan


async def test_sqlite_claims_read_their_partial_indexes(tmp_path: Path) -> None:
    """claim_runnable() and runnable() read each kind of runnable run through its own
    index (migration 003): parked runs that wait cost them nothing."""
    from piton.stores._sqlite_ops import _KINDS, _SELECT_RUN

    args = {"now": 1.0, "n": 2, "host": "h/", "me": "h/1/1", "workflow": "wf"}
    async with SqliteStore(tmp_path / "runs.db") as s:
        assert isinstance(s, SqliteStore)
        plans = []
        for kind in _KINDS:
            query = f"EXPLAIN QUERY PLAN {_SELECT_RUN} WHERE workflow = :workflow AND {kind}"
            rows = await s._call(lambda c, q=query: c.execute(q, args).fetchall(), write=False)
            plans.append(" ".join(row[-1] for row in rows))
    indexes = ("runs_running", "runs_mail", "runs_wake", "runs_queued")
    for plan, index in zip(plans, indexes, strict=True):
        assert f"USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan


async def test_sqlite_deliver_limit_holds_across_connections(tmp_path: Path) -> None:
    stores = [SqliteStore(tmp_path / "runs.db") for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].create(RunRecord("r", "wf", "queued"), [], [])
        await race_deliveries(stores)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def race_deliveries(stores: list[Any]) -> None:
    """Several stores (connections) deliver to one run at once: exactly `limit` land."""
    results = await asyncio.gather(
        *(stores[i % len(stores)].deliver("r", f'{{"i": {i}}}', limit=4) for i in range(15)),
        return_exceptions=True,
    )
    assert results.count(None) == 4, results
    assert all(isinstance(r, TooManyPendingEvents) for r in results if r is not None), results
    loaded = await stores[0].load("r")
    assert len(loaded.inbox) == 4 and loaded.record.inbox == 4


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    name = f"piton_test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_url}?schema={name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


async def test_postgres_version_1_schema_gains_waiters(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(_postgres_engine, "migrations", lambda: postgres_migrations()[:1])
        async with PostgresStore(pg_url) as s:
            await add_version_1_runs(s)
    async with PostgresStore(pg_url) as s:
        await check_version_2_runs(s)
    names = [name for _, name, _ in postgres_migrations()]
    assert names[:2] == ["001_initial.sql", "002_waiters.sql"]


async def test_postgres_stuck_reads_an_index(pg_url: str) -> None:
    from piton.stores._postgres_ops import _STUCK

    def plan(where: str) -> Callable[[Any], Awaitable[str]]:
        async def explain(conn: Any) -> str:
            await conn.execute("SET enable_seqscan = off")  # a new table is tiny: no shortcut
            try:
                cursor = await conn.execute(f"EXPLAIN {_STUCK} {where} ORDER BY created_at LIMIT 5")
                return " ".join(row[0] for row in await cursor.fetchall())
            finally:
                await conn.execute("RESET enable_seqscan")

        return explain

    async with PostgresStore(pg_url) as s:
        assert isinstance(s, PostgresStore)
        for where in ("", "AND workflow = ANY(ARRAY['wf'])"):
            text = await s._read(plan(where))
            assert "Index" in text and "Seq Scan" not in text, text


async def test_postgres_deliver_limit_holds_across_connections(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].create(RunRecord("r", "wf", "queued"), [], [])
        await race_deliveries(stores)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_postgres_release_keeps_its_place_in_a_batch(pg_url: str) -> None:
    """A release queued before a plain commit of its run is applied first, though plain
    commits otherwise go ahead of the batch's other writes."""
    async with PostgresStore(pg_url) as s:
        await s.create(RunRecord("r", "wf", "running", owner=s.owner, epoch=1), ["e1"], [])
        results = await asyncio.gather(
            s.release([("r", 1)], s.owner),
            s.commit(CommitRequest("r", 1, 1, ["late"])),
            return_exceptions=True,
        )
        assert results[0] is None and isinstance(results[1], LeaseLost), results
        record = await s.get("r")
        assert record is not None and (record.owner, record.seq) == (None, 1), record
        await s.deliver("r", "{}")


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_redis_version_1_data_is_raised_to_version_2(
    redis_url: str, redis_prefix: str, rdb: aioredis.Redis
) -> None:
    url = f"{redis_url}?prefix={redis_prefix}"
    async with RedisStore(url) as s:
        await add_version_1_runs(s)
    for run_id in ("waiting", "sleeping", "working"):  # version 1 wrote no waiters field
        await rdb.hdel(f"{redis_prefix}:run:{run_id}", "waiters")
    await rdb.set(f"{redis_prefix}:schema", 1)
    async with RedisStore(url) as s:
        assert await rdb.get(f"{redis_prefix}:schema") == str(SCHEMA_VERSION).encode()
        record = await s.get("waiting")
        assert record is not None and record.waiters == 0, "an absent field reads as 0"
        # a parked run without the field has unknown waiters: not reported stuck
        assert await s.stuck() == [] and await s.stuck(["wf"]) == []
        await s.claim("waiting", s.owner, 30.0)
        await s.commit(CommitRequest("waiting", 1, 0, ["park"], status="parked", release=True))
        assert [r.run_id for r in await s.stuck()] == ["waiting"]
        await s.deliver("waiting", "{}")
        await s.deliver("sleeping", "{}")


async def test_redis_deliver_limit_holds_across_clients(redis_url: str, redis_prefix: str) -> None:
    url = f"{redis_url}?prefix={redis_prefix}"
    stores = [RedisStore(url) for _ in range(3)]
    try:
        await stores[0].create(RunRecord("r", "wf", "queued"), [], [])
        await race_deliveries(stores)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def test_every_store_implements_release_and_stuck() -> None:
    from piton.stores.memory import MemoryStore

    for cls in (MemoryStore, SqliteStore, PostgresStore, RedisStore):
        assert not cls.__abstractmethods__, f"{cls.__name__} leaves {cls.__abstractmethods__}"
    assert {"release", "stuck"} <= Store.__abstractmethods__
