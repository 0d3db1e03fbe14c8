"""Stored data is untrusted (DESIGN.md promise 8): a damaged run row fails that run only.

Real rows are damaged behind the store's back (SQLite keeps any value in any column, a
Redis hash field can hold any bytes, a typed PostgreSQL column can still hold NaN or a
status piton never writes). ``get``, ``load``, ``claim`` and ``commit`` of the damaged run
raise ``JournalCorrupted`` naming the run and the column; ``runnable``, ``list_runs`` and
``stuck`` leave it out and log an error (logger ``piton.store``) naming both, and the
other runs go on. Also: an empty SQLite file is refused instead of taken as a new store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import errors as pg_errors
from psycopg import sql

from piton import Context, StartEvent, StopEvent, Worker, Workflow, step
from piton.errors import JournalCorrupted, StoreError
from piton.stores.base import CommitRequest, RunRecord, Store
from piton.stores.postgres import PostgresStore
from piton.stores.redis import RedisStore
from piton.stores.sqlite import SqliteStore

NUMBER_COLUMNS = (
    "epoch",
    "seq",
    "inbox",
    "waiters",
    "lease_until",
    "wake_at",
    "created_at",
    "updated_at",
    "finished_at",
)
DEAD_LOCAL = f"{socket.gethostname()}/999999999/1"  # a process of this host that is gone
TESTS = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(os.path.dirname(TESTS)), "src")


async def add_runs(store: Store) -> None:
    """'bad' (to be damaged) and 'good': both runnable (running, no owner) at epoch 1."""
    for run_id in ("bad", "good"):
        record = RunRecord(run_id, "wf", "running", owner=None, epoch=1)
        assert await store.create(record, ["e1"], [])
        await asyncio.sleep(0.002)  # 'good' is the newer


def errors_naming(caplog: pytest.LogCaptureFixture, run_id: str, column: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "piton.store"
        and r.levelno == logging.ERROR
        and f"run '{run_id}'" in r.getMessage()
        and f"'{column}'" in r.getMessage()
    ]


async def assert_only_that_run_fails(
    store: Store, caplog: pytest.LogCaptureFixture, column: str
) -> None:
    """The reads that list runs skip 'bad' and log it; reading 'bad' itself names it."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="piton.store"):
        assert [r.run_id for r in await store.runnable(["wf"], time.time())] == ["good"]
        assert errors_naming(caplog, "bad", column), f"runnable() did not log: {caplog.text}"
        caplog.clear()
        assert [r.run_id for r in await store.list_runs(workflow="wf")] == ["good"]
        assert errors_naming(caplog, "bad", column), f"list_runs() did not log: {caplog.text}"
    named = rf"Run 'bad'.*'{column}'"
    with pytest.raises(JournalCorrupted, match=named):
        await store.get("bad")
    with pytest.raises(JournalCorrupted, match=named):
        await store.load("bad")
    with pytest.raises(JournalCorrupted, match=named):
        await store.claim("bad", "someone.invalid/1/1", 30.0)
    assert (await store.load("good")).entries == [(1, "e1")]
    assert await store.claim("good", store.owner, 30.0) == 2  # the store goes on
    await store.commit(CommitRequest("good", 2, 1, ["e2"]))


async def assert_skipped_by_stuck(
    store: Store, caplog: pytest.LogCaptureFixture, column: str
) -> None:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="piton.store"):
        assert [r.run_id for r in await store.stuck(["wf"])] == ["stuck-good"]
    assert errors_naming(caplog, "stuck-bad", column), f"stuck() did not log: {caplog.text}"


async def add_stuck_runs(store: Store) -> None:
    for run_id in ("stuck-bad", "stuck-good"):
        record = RunRecord(run_id, "wf", "parked", owner=None, lease_until=None)
        assert await store.create(record, ["e1"], [])


# --- SQLite ------------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "runs.db")
    await s.open()
    yield s
    await s.close()


def damage(path: str, statement: str, *args: Any) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(statement, args)


@pytest.mark.parametrize("column", NUMBER_COLUMNS)
async def test_sqlite_text_in_a_number_column_fails_only_that_run(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture, column: str
) -> None:
    await add_runs(sqlite_store)
    damage(sqlite_store.path, f"UPDATE runs SET {column} = 'garbage' WHERE run_id = 'bad'")
    await assert_only_that_run_fails(sqlite_store, caplog, column)


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("status", "'sleeping'", "not a run status"),
        ("workflow", "X'80FF'", "not valid UTF-8"),
        ("owner", "CAST(X'C328' AS TEXT)", "not valid UTF-8"),  # text that is not UTF-8
        ("epoch", "1.5", "not a whole number"),
        ("lease_until", "X'00'", "not a number"),
    ],
)
async def test_sqlite_other_damage_names_the_column(
    sqlite_store: SqliteStore, column: str, value: str, problem: str
) -> None:
    await add_runs(sqlite_store)
    damage(sqlite_store.path, f"UPDATE runs SET {column} = {value} WHERE run_id = 'bad'")
    with pytest.raises(JournalCorrupted, match=rf"Run 'bad'.*'{column}' .*{problem}"):
        await sqlite_store.get("bad")
    assert [r.run_id for r in await sqlite_store.list_runs()] == ["good"]


async def test_sqlite_a_commit_to_a_damaged_run_writes_nothing(sqlite_store: SqliteStore) -> None:
    await add_runs(sqlite_store)
    damage(sqlite_store.path, "UPDATE runs SET seq = 'one' WHERE run_id = 'bad'")
    with pytest.raises(JournalCorrupted, match=r"Run 'bad' cannot be committed to.*'seq'"):
        await sqlite_store.commit(CommitRequest("bad", 1, 1, ["e2"], status="parked"))
    with contextlib.closing(sqlite3.connect(sqlite_store.path)) as db:
        assert db.execute("SELECT COUNT(*) FROM journal WHERE run_id = 'bad'").fetchone() == (1,)
    damage(sqlite_store.path, "UPDATE runs SET inbox = 'many' WHERE run_id = 'bad'")
    with pytest.raises(JournalCorrupted, match=r"Run 'bad'.*'inbox'"):
        await sqlite_store.deliver("bad", "{}", limit=10)


async def test_sqlite_stuck_skips_a_damaged_run(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    await add_stuck_runs(sqlite_store)
    damage(sqlite_store.path, "UPDATE runs SET created_at = 'then' WHERE run_id = 'stuck-bad'")
    await assert_skipped_by_stuck(sqlite_store, caplog, "created_at")
    damage(sqlite_store.path, "UPDATE runs SET created_at = 1.0 WHERE run_id = 'stuck-bad'")
    await sqlite_store.deliver("stuck-bad", "{}")  # not stuck any more, for the teardown check
    await sqlite_store.deliver("stuck-good", "{}")


class Nap(Workflow):
    @step
    async def nap(self, ev: StartEvent, ctx: Context) -> StopEvent:  # type: ignore[type-arg]
        await ctx.sleep(0.2)
        return StopEvent(result="rested")


async def test_a_worker_resumes_runs_beside_a_damaged_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Text in one run's lease_until made runnable() raise TypeError: a worker failed to
    start, or skipped every poll, and no other run resumed."""
    url = f"sqlite:///{tmp_path}/runs.db"
    crash = (  # a process that dies (SIGKILL) right after the run's first commit
        "from piton.testing import crash_after_commit\n"
        "from test_store_damage import Nap\n"
        "crash_after_commit(1)\n"
        f"Nap(store={url!r}).run_sync(run_id='nap-1')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", crash, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await child.communicate()
    assert child.returncode == -signal.SIGKILL, stderr.decode()
    probe = SqliteStore(tmp_path / "runs.db")
    try:
        record = await probe.get("nap-1")
        assert record is not None and not record.finished, record
        damaged = RunRecord("damaged", record.workflow, "running", owner=DEAD_LOCAL, epoch=1)
        assert await probe.create(damaged, [], [])
        damage(probe.path, "UPDATE runs SET lease_until = 'garbage' WHERE run_id = 'damaged'")
        deadline = time.monotonic() + 10
        with caplog.at_level(logging.ERROR, logger="piton.store"):
            async with Worker(url, workflows=[Nap], poll_interval=0.05):
                while not (await probe.get("nap-1")).finished:  # type: ignore[union-attr]
                    assert time.monotonic() < deadline, "the worker never finished the run"
                    await asyncio.sleep(0.02)
        assert errors_naming(caplog, "damaged", "lease_until")
        assert await Nap(store=probe).run(run_id="nap-1") == "rested"
    finally:
        await probe.close()


# --- an empty SQLite file -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["touched", "truncated"])
@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_an_empty_sqlite_file_is_refused(tmp_path: Path, how: str) -> None:
    path = tmp_path / "runs.db"
    if how == "touched":
        path.touch()
    else:
        async with SqliteStore(path) as s:
            await s.create(RunRecord("r", "wf", "running", owner=s.owner, epoch=1), ["e1"], [])
        for sidecar in (tmp_path / "runs.db-wal", tmp_path / "runs.db-shm"):
            assert not sidecar.exists()
        os.truncate(path, 0)
    s = SqliteStore(path)
    with pytest.raises(StoreError) as info:
        await s.open()
    assert isinstance(info.value, JournalCorrupted)
    message = str(info.value)
    assert str(path) in message and "empty file" in message, message
    assert "backup" in message and "delete it" in message, message
    with pytest.raises(JournalCorrupted):  # and again, on first use
        await s.get("r")
    await s.close()
    assert path.stat().st_size == 0, "the empty file was written to"


async def test_a_new_sqlite_file_is_created_whole(tmp_path: Path) -> None:
    path = tmp_path / "new" / "runs.db"
    async with SqliteStore(path) as s:
        assert await s.get("r") is None
        assert path.stat().st_size > 0
    assert os.listdir(path.parent) == ["runs.db"], "a leftover file"
    async with SqliteStore(path) as s:  # and it opens again
        assert await s.list_runs() == []


async def test_stores_creating_one_file_at_once_never_see_it_empty(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    stores = [SqliteStore(path) for _ in range(8)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].create(RunRecord("r", "wf", "queued"), [], [])
        assert all(r is not None for r in await asyncio.gather(*(s.get("r") for s in stores)))
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert os.listdir(tmp_path) == ["runs.db"], "a leftover file"


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


@pytest.fixture
async def redis_store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(f"{redis_url}?prefix={prefix}")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def hash_of(db: aioredis.Redis, prefix: str, run_id: str) -> dict[Any, Any]:
    return dict(await db.hgetall(f"{prefix}:run:{run_id}"))


@pytest.mark.parametrize("field", NUMBER_COLUMNS)
async def test_redis_text_in_a_number_field_fails_only_that_run(
    redis_store: RedisStore,
    rdb: aioredis.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
    field: str,
) -> None:
    await add_runs(redis_store)
    key = f"{prefix}:run:bad"
    await rdb.hset(key, field, "garbage")
    await assert_only_that_run_fails(redis_store, caplog, field)
    # the scripts refuse it before their first write, so no index is left half-changed
    before = await hash_of(rdb, prefix, "bad")
    with pytest.raises(JournalCorrupted, match=rf"Run 'bad' cannot be committed to.*'{field}'"):
        await redis_store.commit(CommitRequest("bad", 1, 1, ["e2"], status="parked", wake_at=1.0))
    with pytest.raises(JournalCorrupted, match=rf"Run 'bad'.*'{field}'"):
        await redis_store.deliver("bad", "{}")
    await redis_store.release([("bad", 1)], "x")
    assert await redis_store.renew([("bad", 1)], "x", 30.0) == ["bad"]
    assert await hash_of(rdb, prefix, "bad") == before, "a script wrote to a damaged run"
    assert (
        await rdb.hlen(f"{prefix}:journal:bad") == 1 and await rdb.hlen(f"{prefix}:inbox:bad") == 0
    )


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("lease_until", "nan", "NaN"),
        ("status", "sleeping", "not a run status"),
        ("owner", b"\xc3(", "not valid UTF-8"),
        ("epoch", "2.5", "not a whole number"),
    ],
)
async def test_redis_other_damage_names_the_field(
    redis_store: RedisStore,
    rdb: aioredis.Redis,
    prefix: str,
    field: str,
    value: str | bytes,
    problem: str,
) -> None:
    await add_runs(redis_store)
    await rdb.hset(f"{prefix}:run:bad", field, value)
    with pytest.raises(JournalCorrupted, match=rf"Run 'bad'.*field '{field}' .*{problem}"):
        await redis_store.get("bad")
    assert [r.run_id for r in await redis_store.list_runs()] == ["good"]
    with pytest.raises(JournalCorrupted, match=rf"Run 'bad'.*'{field}'"):
        await redis_store.claim("bad", "someone.invalid/1/1", 30.0)


async def test_redis_stuck_skips_a_damaged_run(
    redis_store: RedisStore, rdb: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await add_stuck_runs(redis_store)
    await rdb.hset(f"{prefix}:run:stuck-bad", "updated_at", "later")
    await assert_skipped_by_stuck(redis_store, caplog, "updated_at")
    await rdb.hset(f"{prefix}:run:stuck-bad", "updated_at", "1.0")
    await redis_store.deliver("stuck-bad", "{}")  # not stuck any more, for the teardown check
    await redis_store.deliver("stuck-good", "{}")


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = f"piton_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
async def pg_store(postgres_url: str, schema: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(f"{postgres_url}?schema={schema}")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def pg(postgres_url: str, schema: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    await conn.execute("SELECT set_config('search_path', %s, false)", [f'"{schema}"'])
    yield conn
    await conn.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [("lease_until", "NaN"), ("wake_at", "NaN"), ("created_at", "NaN"), ("status", "sleeping")],
)
async def test_postgres_damage_fails_only_that_run(
    pg_store: PostgresStore,
    pg: psycopg.AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
    column: str,
    value: str,
) -> None:
    await add_runs(pg_store)
    await pg.execute(f"UPDATE runs SET {column} = %s WHERE run_id = 'bad'", [value])
    if column == "status":  # an unknown status is not selected as runnable: listed, logged
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="piton.store"):
            assert [r.run_id for r in await pg_store.list_runs(workflow="wf")] == ["good"]
        assert errors_naming(caplog, "bad", column)
        with pytest.raises(JournalCorrupted, match=r"Run 'bad'.*'status'.*not a run status"):
            await pg_store.get("bad")
        return
    await assert_only_that_run_fails(pg_store, caplog, column)


async def test_postgres_number_columns_cannot_hold_null_or_text(
    pg_store: PostgresStore, pg: psycopg.AsyncConnection[Any]
) -> None:
    """The typed schema refuses what SQLite and Redis let in: nothing to read back."""
    await add_runs(pg_store)
    for column in ("epoch", "seq", "inbox", "waiters", "created_at", "updated_at"):
        with pytest.raises(pg_errors.NotNullViolation):
            await pg.execute(f"UPDATE runs SET {column} = NULL WHERE run_id = 'bad'")
    for column in NUMBER_COLUMNS:
        with pytest.raises(pg_errors.InvalidTextRepresentation):
            await pg.execute(f"UPDATE runs SET {column} = 'garbage' WHERE run_id = 'bad'")
    assert (await pg_store.get("bad")) is not None
