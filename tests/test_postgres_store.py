"""PostgresStore: the conformance suite, then what only a shared server has: fencing
between stores, group commit, migrations, damaged rows, lost connections, and a durable
workflow end to end. Each test works in a fresh schema, dropped afterwards."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from piton import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)
from piton.errors import (
    JournalCorrupted,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    WorkflowConfigurationError,
)
from piton.stores.base import CommitRequest, RunRecord, Store, open_store
from piton.stores.postgres import PostgresStore, migrations
from piton.testing import check_store

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


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


# --- the conformance suite, URLs ----------------------------------------------------------------


@pytest.mark.allow_stuck_runs  # the conformance checks leave parked runs behind
async def test_check_store(url: str) -> None:
    passed = await check_store(lambda: PostgresStore(url))
    assert "concurrent_commits" in passed and passed[-1] == "prune"


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


def test_without_psycopg_the_store_asks_for_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None\n"
        "from piton.errors import WorkflowConfigurationError\n"
        "from piton.stores.base import open_store\n"
        "try:\n"
        "    open_store('postgresql://localhost/db')\n"
        "except WorkflowConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "pip install 'piton[postgres]'" in out.stdout, out.stdout + out.stderr


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_unreachable_server_is_store_unavailable() -> None:
    s = PostgresStore("postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(StoreUnavailable, match="cannot be reached.*server is running") as info:
        await s.get("r")
    assert "127.0.0.1:1" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args
    await s.close()


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


# --- fencing and group commit ---------------------------------------------------------------


async def test_two_stores_on_one_schema_are_fenced(url: str) -> None:
    a, b = PostgresStore(url), PostgresStore(url)
    b.owner = "elsewhere.invalid/1/1"
    await asyncio.gather(a.open(), b.open())
    try:
        assert a.identity == b.identity
        await new_run(a, "r")
        assert await b.claim("r", b.owner, 30.0) is None  # a holds it and is alive
        await a.commit(CommitRequest("r", 1, 1, ["e2"], ["s1"], status="parked", release=True))
        assert await b.claim("r", b.owner, 30.0) == 2
        before = await b.load("r")
        for late in (
            CommitRequest("r", 1, 2, ["late"], ["late"]),  # the plain, batched path
            CommitRequest("r", 1, 2, ["late"], status="completed", result='"x"'),
        ):
            with pytest.raises(LeaseLost, match="Run 'r'.*epoch 2, ours 1"):
                await a.commit(late)
        after = await b.load("r")
        assert (after.entries, after.stream) == (before.entries, before.stream), "a fenced write"
        assert (after.record.seq, after.record.status, after.record.owner) == (
            2,
            "running",
            b.owner,
        )
        await b.commit(CommitRequest("r", 2, 2, ["e3"]))
        assert [seq for seq, _ in (await a.load("r")).entries] == [1, 2, 3]
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_group_commit_batches_concurrent_commits(store: PostgresStore) -> None:
    runs = await asyncio.gather(*(new_run(store, f"r{i}") for i in range(50)))
    transactions, commits = store.transactions, store.commits
    await asyncio.gather(*(store.commit(CommitRequest(r, 1, 1, ["x" * 300], ["s"])) for r in runs))
    assert store.commits - commits == 50
    assert store.transactions - transactions <= 5, "50 concurrent commits should share transactions"
    for run_id in runs[:3]:
        loaded = await store.load(run_id)
        assert loaded.entries == [(1, "e1"), (2, "x" * 300)] and loaded.stream == ["s"]


async def test_a_fenced_commit_does_not_disturb_its_batch(store: PostgresStore) -> None:
    await new_run(store, "a")
    await new_run(store, "b")
    transactions = store.transactions
    results = await asyncio.gather(  # queued together: one batch
        store.commit(CommitRequest("a", 1, 1, ["a2"])),
        store.commit(CommitRequest("b", 9, 1, ["stale epoch"])),
        store.commit(CommitRequest("a", 1, 2, ["a3"])),  # chains on the first one
        store.commit(CommitRequest("b", 1, 1, ["b2"], ["sb"])),
        store.commit(CommitRequest("a", 1, 2, ["a3 again"])),  # seq already taken
        return_exceptions=True,
    )
    assert store.transactions - transactions == 1, "the five commits should be one transaction"
    assert [type(r).__name__ for r in results] == [
        "NoneType",
        "LeaseLost",
        "NoneType",
        "NoneType",
        "LeaseLost",
    ]
    assert (await store.load("a")).entries == [(1, "e1"), (2, "a2"), (3, "a3")]
    loaded = await store.load("b")
    assert loaded.entries == [(1, "e1"), (2, "b2")] and loaded.stream == ["sb"]


def test_store_shared_across_event_loops(url: str) -> None:
    """``run_sync`` runs a fresh loop per call; the store connects again on each."""
    s = PostgresStore(url)
    asyncio.run(new_run(s, "r"))
    assert asyncio.run(s.get("r")) is not None
    asyncio.run(s.commit(CommitRequest("r", 1, 1, ["e2"])))
    assert s.commits == 1
    asyncio.run(s.close())


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


async def test_a_lost_connection_is_store_unavailable_then_reconnects(
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
        with pytest.raises(StoreUnavailable, match="shutting down|cannot be reached"):
            await s.commit(CommitRequest("r", 1, 1, ["e2"]))
        await s.commit(CommitRequest("r", 1, 1, ["e2"]))  # a new connection; nothing half-done
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


# --- a durable workflow end to end -------------------------------------------------------------

calls: list[str] = []


class Counted(Event):
    n: int


class Count(Workflow):
    @step
    async def start(self, ev: StartEvent) -> Counted:
        calls.append("start")
        return Counted(n=ev.n)

    @step
    async def double(self, ev: Counted, ctx: Context) -> StopEvent:
        calls.append("double")
        await ctx.store.set("last", ev.n)
        return StopEvent(result=ev.n * 2)


class Approve(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(
            HumanResponseEvent, waiter_event=InputRequiredEvent(question="ship it?")
        )
        return StopEvent(result=f"answer: {answer.response}")


async def test_durable_workflow_on_postgres(url: str) -> None:
    made: list[Workflow] = []

    def make(cls: type[Workflow]) -> Workflow:
        made.append(cls(store=url))  # a store object of its own, from the URL
        return made[-1]

    try:
        calls.clear()
        assert await make(Count).run(run_id="count-1", n=21) == 42
        assert calls == ["start", "double"]
        calls.clear()
        assert await make(Count).run(run_id="count-1") == 42 and calls == []  # stored result

        first = make(Approve).run(run_id="approve-1")
        async for ev in first.stream_events():
            if isinstance(ev, InputRequiredEvent):
                break
        first.cancel()  # nobody listens: the run parks in the store and this handler lets go
        probe = made[-1].store
        assert isinstance(probe, PostgresStore)
        deadline = time.monotonic() + 5
        while "approve-1" in probe.live or (await probe.get("approve-1")).status != "parked":
            assert time.monotonic() < deadline, "the run never parked"
            await asyncio.sleep(0.01)
        record = await probe.get("approve-1")
        assert record is not None and record.owner is None

        later = make(Approve).run(run_id="approve-1")  # another store object attaches
        await later.send_event(HumanResponseEvent(response="yes"))
        assert await later == "answer: yes"
        assert await make(Approve).run(run_id="approve-1") == "answer: yes"
    finally:
        for workflow in made:
            assert workflow.store is not None
            await workflow.store.close()


async def test_a_worker_is_woken_by_notify_not_by_its_poll(url: str) -> None:
    """An event delivered from another connection wakes an idle worker at once, although
    it would poll only every 30 s."""
    from piton import Worker
    from piton.serde import JsonSerializer

    owner = Approve(store=url)
    first = owner.run(run_id="notify-1")
    assert owner.store is not None
    deadline = time.monotonic() + 5
    while getattr(await owner.store.get("notify-1"), "status", None) != "parked":
        assert time.monotonic() < deadline, "the run never parked"
        await asyncio.sleep(0.01)
    first.cancel()  # nobody listens any more: the run stays parked in the store

    worker_store = PostgresStore(url)
    sender = PostgresStore(url)
    try:
        async with Worker(worker_store, workflows=[Approve], poll_interval=30) as worker:
            await asyncio.sleep(0.3)  # the worker's first poll found nothing; it now waits
            started = time.monotonic()
            text = JsonSerializer().dumps(HumanResponseEvent(response="now"), "event")
            await sender.deliver("notify-1", text)
            while getattr(await sender.get("notify-1"), "status", None) != "completed":
                assert time.monotonic() - started < 5, "the worker was not woken"
                await asyncio.sleep(0.02)
            assert worker.poll_interval == 30
        reader = Approve(store=url)
        assert await reader.run(run_id="notify-1") == "answer: now"
        assert reader.store is not None
        await reader.store.close()
    finally:
        for store in (worker_store, sender, owner.store):
            await store.close()
