"""PostgresStore: what only PostgreSQL has: its URL options, migrations, damaged rows, row
locks and lost connections. What every server store must do (the conformance suite,
fencing, group commit, durable workflows end to end) is in ``test_server_stores.py``. Each
test works in a fresh schema, dropped afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from piton.errors import (
    JournalCorrupted,
    StoreError,
    StoreUnavailable,
    WorkflowConfigurationError,
)
from piton.stores.base import CommitRequest, RunRecord, Store, open_store
from piton.stores.postgres import PostgresStore, migrations


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    """A schema name nobody uses; whatever a test creates in it is dropped afterwards."""
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


@pytest.fixture
async def db(postgres_url: str, schema: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection of our own to the test's schema, in autocommit mode."""
    conn = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    await conn.execute("SELECT set_config('search_path', %s, false)", [f'"{schema}"'])
    yield conn
    await conn.close()


async def new_run(store: Store, run_id: str, entries: tuple[str, ...] = ("e1",)) -> str:
    record = RunRecord(run_id, "wf", "running", owner=store.owner, epoch=1)
    assert await store.create(record, list(entries), [])
    return run_id


async def rows(conn: psycopg.AsyncConnection[Any], query: str, *args: Any) -> list[Any]:
    cursor = await conn.execute(query, args)
    return await cursor.fetchall()


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
def test_url_options_identity_and_redaction() -> None:
    s = open_store("postgresql://app:s3cret@db.example:6543/runs?schema=team_a&sslmode=disable")
    assert isinstance(s, PostgresStore)
    assert (s.schema, s.pool_size, s.lock_timeout, s.lease) == ("team_a", 4, 10.0, 15.0)
    assert "s3cret" not in s.url and s.url.startswith("postgresql://app:***@db.example:6543/")
    assert s.identity == "postgresql://db.example:6543/runs?schema=team_a"
    other_user = PostgresStore("postgres://bob@db.example:6543/runs", schema="team_a")
    assert other_user.identity == s.identity, "one schema: one identity, whoever connects"
    assert PostgresStore("postgresql://db.example:6543/runs").identity.endswith("schema=piton")
    tuned = PostgresStore("postgresql://h/d?pool_size=2&lock_timeout=0.5", lease=3)
    assert (tuned.pool_size, tuned.lock_timeout, tuned.lease) == (2, 0.5, 3.0)
    for bad, match in [
        ("postgresql://h/d?schema=a-b", "schema"),
        ("postgresql://h/d?schema=a&other=1", "other"),
        ("postgresql://h/d?pool_size=0", "pool_size"),
        ("postgresql://h/d?pool_size=many", "pool_size"),
        ("postgresql://h/d?lock_timeout=-1", "lock_timeout"),
        ("mysql://h/d", "postgresql://"),
    ]:
        with pytest.raises(WorkflowConfigurationError, match=match):
            PostgresStore(bad)
    with pytest.raises(WorkflowConfigurationError, match="disagrees"):
        PostgresStore("postgresql://h/d?schema=a", schema="b")
    with pytest.raises(WorkflowConfigurationError, match="lease"):
        PostgresStore("postgresql://h/d", lease=0)


# --- schema and migrations ------------------------------------------------------------------


async def test_schema_created_from_migrations(
    store: PostgresStore, db: psycopg.AsyncConnection[Any], schema: str
) -> None:
    newest = len(migrations())
    assert newest >= 1 and migrations()[0][1] == "001_initial.sql"
    versions = await rows(db, "SELECT version, name FROM piton_schema ORDER BY version")
    assert [v for v, _ in versions] == list(range(1, newest + 1))
    tables = await rows(db, "SELECT tablename FROM pg_tables WHERE schemaname = %s", schema)
    assert {t for (t,) in tables} == {
        "piton_schema",
        "runs",
        "journal",
        "snapshots",
        "stream",
        "inbox",
    }
    columns = await rows(
        db,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'runs' ORDER BY ordinal_position",
        schema,
    )
    assert [c for (c,) in columns] == list(RunRecord.__dataclass_fields__)


async def test_schema_from_a_newer_piton_is_refused(
    url: str, db: psycopg.AsyncConnection[Any], schema: str
) -> None:
    newest = len(migrations())
    await db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    await db.execute("CREATE TABLE piton_schema (version integer PRIMARY KEY, name text)")
    await db.execute("INSERT INTO piton_schema VALUES (%s, 'from the future')", [newest + 5])
    s = PostgresStore(url)
    with pytest.raises(StoreError, match="newer piton.*[Uu]pgrade piton") as info:
        await s.open()
    assert f"schema version {newest + 5}" in str(info.value)
    assert f"knows up to {newest}" in str(info.value) and schema in str(info.value)
    with pytest.raises(StoreError, match="newer piton"):  # and again: nothing was half-opened
        await s.get("x")
    await s.close()
    assert await rows(db, "SELECT tablename FROM pg_tables WHERE schemaname = %s", schema) == [
        ("piton_schema",)
    ]


async def test_stores_migrating_one_fresh_schema_at_once(
    url: str, db: psycopg.AsyncConnection[Any]
) -> None:
    stores = [PostgresStore(url) for _ in range(6)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert await asyncio.gather(*(s.get("r") for s in stores)) == [None] * 6
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    versions = await rows(db, "SELECT version FROM piton_schema ORDER BY version")
    assert versions == [(n,) for n in range(1, len(migrations()) + 1)], "each migration once"


async def test_an_older_schema_is_migrated(
    url: str, db: psycopg.AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with PostgresStore(url) as s:
        await new_run(s, "r")
    from piton.stores import _postgres_engine

    number = len(migrations()) + 1
    newer = (*migrations(), (number, "00N_test.sql", "ALTER TABLE runs ADD COLUMN note text;"))
    monkeypatch.setattr(_postgres_engine, "migrations", lambda: newer)
    async with PostgresStore(url) as s:
        assert (await s.get("r")) is not None
    assert await rows(db, "SELECT max(version) FROM piton_schema") == [(number,)]
    assert await rows(db, "SELECT note FROM runs") == [(None,)]


# --- failures ---------------------------------------------------------------------------------


async def test_damaged_rows_fail_only_that_run(
    store: PostgresStore, db: psycopg.AsyncConnection[Any]
) -> None:
    for run_id in ("bad", "good", "gap", "ahead"):
        await new_run(store, run_id, ("e1", "e2", "e3"))
    await db.execute("ALTER TABLE journal ALTER COLUMN entry DROP NOT NULL")
    await db.execute("UPDATE journal SET entry = NULL WHERE run_id = 'bad' AND seq = 2")
    await db.execute("DELETE FROM journal WHERE run_id = 'gap' AND seq = 3")
    await db.execute("INSERT INTO journal VALUES ('ahead', 4, 'e4')")
    with pytest.raises(JournalCorrupted, match=r"Run 'bad'.*journal entry seq 2 is NULL"):
        await store.load("bad")
    with pytest.raises(JournalCorrupted, match=r"Run 'gap'.*journal entry seq 3 is missing"):
        await store.load("gap")
    with pytest.raises(JournalCorrupted, match=r"Run 'ahead'.*past the run's seq 3"):
        await store.load("ahead")
    assert (await store.load("good")).entries == [(1, "e1"), (2, "e2"), (3, "e3")]
    assert (await store.get("bad")) is not None  # the run row itself is fine
    await store.commit(CommitRequest("good", 1, 3, ["e4"]))  # the store goes on


async def max_loop_gap(work: Awaitable[Any], tick: float = 0.002) -> float:
    gaps = [0.0]
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(tick)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    try:
        await work
    finally:
        stop.set()
        await task
    return max(gaps)


async def test_a_held_row_lock_is_store_unavailable_and_the_loop_runs(
    url: str, db: psycopg.AsyncConnection[Any]
) -> None:
    async with PostgresStore(url, lock_timeout=0.2) as s:
        await new_run(s, "r")

        async def blocked() -> None:
            started = time.perf_counter()
            with pytest.raises(StoreUnavailable, match="lock_timeout") as info:
                await s.commit(CommitRequest("r", 1, 1, ["e2"]))
            assert time.perf_counter() - started >= 0.2
            assert "PostgreSQL store" in str(info.value) and "Retry" in str(info.value)

        async with db.transaction():
            await db.execute("SELECT 1 FROM runs WHERE run_id = 'r' FOR UPDATE")
            gap = await max_loop_gap(blocked())
        assert gap < 0.1, f"the event loop stalled for {gap:.3f}s"
        await s.commit(CommitRequest("r", 1, 1, ["e2"]))  # the same commit, retried
        assert (await s.load("r")).entries == [(1, "e1"), (2, "e2")]


async def test_connections_the_server_closed_are_replaced_before_use(
    postgres_url: str, schema: str, db: psycopg.AsyncConnection[Any]
) -> None:
    app = f"piton_test_{uuid.uuid4().hex[:8]}"
    s = PostgresStore(f"{postgres_url}?schema={schema}&application_name={app}")
    try:
        await new_run(s, "r")
        assert await s.get("r") is not None  # the writer and a pooled connection are open
        live = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        assert (await rows(db, live, app))[0][0] >= 2
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [app],
        )
        deadline = time.monotonic() + 5
        while (await rows(db, live, app))[0][0]:
            assert time.monotonic() < deadline, "the connections were never terminated"
            await asyncio.sleep(0.01)
        assert await s.get("r") is not None  # a pooled connection that died idle: retried
        # the writer sees its connection was closed and writes on a new one
        await s.commit(CommitRequest("r", 1, 1, ["e2"]))
        assert (await s.load("r")).entries == [(1, "e1"), (2, "e2")]
    finally:
        await s.close()


async def test_prune_deletes_every_row_of_old_runs(
    store: PostgresStore, db: psycopg.AsyncConnection[Any]
) -> None:
    await new_run(store, "old")
    await store.deliver("old", "{}")
    await store.commit(
        CommitRequest("old", 1, 1, ["e2"], ["s"], status="completed", snapshot="snap")
    )
    await new_run(store, "young")
    await asyncio.sleep(0.05)
    assert await store.prune(0.01) == 1
    for table in ("journal", "snapshots", "stream", "inbox"):
        assert await rows(db, f"SELECT count(*) FROM {table} WHERE run_id = 'old'") == [(0,)]
    assert await rows(db, "SELECT run_id FROM runs") == [("young",)]
