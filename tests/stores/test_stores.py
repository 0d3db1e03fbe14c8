"""Store backends: the conformance suite on each, then what only SQLite has."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from piton.errors import (
    JournalCorrupted,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    WorkflowConfigurationError,
)
from piton.stores.base import CommitRequest, RunRecord, Store, open_store
from piton.stores.memory import MemoryStore
from piton.stores.sqlite import SqliteStore, migrations
from piton.testing import check_store


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    if request.param == "memory":
        return MemoryStore
    return lambda: SqliteStore(tmp_path / "conformance.db")


@pytest.mark.allow_stuck_runs  # the conformance checks leave parked runs behind
async def test_check_store(store_factory: Callable[[], Store]) -> None:
    passed = await check_store(store_factory)
    assert "concurrent_commits" in passed and passed[-1] == "prune"


@pytest.mark.allow_stuck_runs
async def test_check_store_accepts_an_async_factory() -> None:
    async def factory() -> Store:
        return MemoryStore()

    assert len(await check_store(factory)) >= 10


async def test_check_store_names_the_failed_check() -> None:
    class ForgetsStream(MemoryStore):
        async def commit(self, request: CommitRequest) -> None:
            request.stream = []
            await super().commit(request)

    with pytest.raises(AssertionError, match="check 'commit' failed"):
        await check_store(ForgetsStream)


# --- open_store: the scheme table ---------------------------------------------------------------

SRC = Path(__file__).resolve().parents[2] / "src"
BACKEND_MODULES = (
    "piton.stores.memory",
    "piton.stores.sqlite",
    "piton.stores._sqlite_ops",
    "piton.stores._sqlite_thread",
    "piton.stores.postgres",
    "piton.stores._postgres_engine",
    "piton.stores._postgres_ops",
    "piton.stores.redis",
    "piton.stores._redis_engine",
    "piton.stores._redis_codec",
    "piton.stores._redis_scripts",
    "sqlite3",
    "psycopg",
    "redis",
)


def imported_after(code: str) -> set[str]:
    """The backend modules (and drivers) that a fresh interpreter holds after ``code``."""
    probe = (
        f"{code}\nimport sys\nprint(' '.join(m for m in {BACKEND_MODULES!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    return set(out.stdout.split())


def test_importing_the_store_protocol_imports_no_backend() -> None:
    assert imported_after("import piton.stores.base") == set()
    assert imported_after("import piton.stores") == set()


def test_open_store_imports_only_the_backend_its_url_names() -> None:
    memory = imported_after("from piton.stores import open_store; open_store('memory://')")
    assert memory == {"piton.stores.memory"}
    sqlite = imported_after("from piton.stores import open_store; open_store('sqlite:///x.db')")
    assert "piton.stores.sqlite" in sqlite and "sqlite3" in sqlite
    assert not sqlite & {"piton.stores.postgres", "piton.stores.redis", "psycopg", "redis"}


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", MemoryStore),
        ("sqlite:///runs.db", SqliteStore),
        ("sqlite:///runs.db?synchronous=NORMAL", SqliteStore),
    ],
)
def test_open_store_picks_the_backend_by_scheme(url: str, kind: type[Store]) -> None:
    assert type(open_store(url)) is kind
    store = MemoryStore()
    assert open_store(store) is store, "a store object is used as it is"


@pytest.mark.parametrize("url", ["mysql://h/db", "runs.db", "sqlite3:///runs.db", ""])
def test_an_unknown_scheme_names_the_known_ones(url: str) -> None:
    with pytest.raises(WorkflowConfigurationError, match="Unknown store URL") as info:
        open_store(url)
    for scheme in ("sqlite://", "memory://", "postgresql://", "redis://"):
        assert scheme in str(info.value)


# --- SQLite ------------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "runs.db")
    await s.open()
    yield s
    await s.close()


async def new_run(store: Store, run_id: str, entries: tuple[str, ...] = ("e1",)) -> str:
    record = RunRecord(run_id, "wf", "running", owner=store.owner, epoch=1)
    assert await store.create(record, list(entries), [])
    return run_id


def connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A second connection to the store's file, in autocommit mode, closed after use."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


async def on_db_thread(store: SqliteStore, op: Callable[[sqlite3.Connection], Any]) -> Any:
    return await store._call(op, write=False)


def test_from_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///data/runs.db")
    assert isinstance(relative, SqliteStore) and relative.path == "data/runs.db"
    assert relative.url == "sqlite:///data/runs.db"
    absolute = SqliteStore.from_url(
        f"sqlite:///{tmp_path}/abs.db?synchronous=normal&busy_timeout=2"
    )
    assert absolute.path == f"{tmp_path}/abs.db"
    assert (absolute.synchronous, absolute.busy_timeout) == ("NORMAL", 2.0)
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?cache=big"):
        with pytest.raises(WorkflowConfigurationError, match="sqlite"):
            SqliteStore.from_url(bad)
    with pytest.raises(WorkflowConfigurationError, match="synchronous"):
        SqliteStore("x.db", synchronous="SOMETIMES")
    with pytest.raises(WorkflowConfigurationError, match="memory://"):
        SqliteStore(":memory:")


async def test_relative_path_creates_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_store("sqlite:///.piton/piton.db") as s:
        await new_run(s, "r")
    assert (tmp_path / ".piton" / "piton.db").exists()


async def test_schema_created_from_migrations(store: SqliteStore, tmp_path: Path) -> None:
    newest = len(migrations())
    assert newest >= 1 and migrations()[0][1] == "001_initial.sql"
    with connect(tmp_path / "runs.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == newest
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "journal", "snapshots", "stream", "inbox"} <= tables


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_database_from_a_newer_piton_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with connect(path) as db:
        db.execute("CREATE TABLE runs (x)")
        db.execute(f"PRAGMA user_version = {len(migrations()) + 5}")
    s = SqliteStore(path)
    with pytest.raises(StoreError, match="newer piton.*[Uu]pgrade piton") as info:
        await s.open()
    assert str(path) in str(info.value)
    with pytest.raises(StoreError, match="newer piton"):  # and again: nothing was half-opened
        await s.get("x")
    await s.close()


async def test_wal_and_synchronous_in_effect(tmp_path: Path) -> None:
    for mode, number in (("FULL", 2), ("NORMAL", 1)):
        async with SqliteStore(tmp_path / f"{mode}.db", synchronous=mode, busy_timeout=1.5) as s:
            assert isinstance(s, SqliteStore)
            pragmas = await on_db_thread(
                s,
                lambda c: [
                    c.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("journal_mode", "synchronous", "busy_timeout")
                ],
            )
            assert pragmas == ["wal", number, 1500]


async def test_open_is_idempotent_and_close_stops_the_thread(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "runs.db")
    await asyncio.gather(s.open(), s.open())
    await s.open()
    threads = [t for t in threading.enumerate() if t.name == f"piton-sqlite {s.path}"]
    assert len(threads) == 1
    await new_run(s, "r")
    await s.close()
    await s.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(StoreError, match="closed"):
        await s.get("r")
    await s.open()  # a closed store can be opened again; its data is still there
    assert (await s.get("r")) is not None
    await s.close()


async def test_first_use_opens_the_store(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "runs.db")
    assert await s.get("nothing") is None
    await s.close()


@pytest.mark.allow_stuck_runs  # a parked run with no waiter, made by hand
async def test_commits_survive_a_new_store_instance(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "runs.db") as s:
        await new_run(s, "r")
        await s.commit(CommitRequest("r", 1, 1, ["e2"], ["s"], snapshot="snap"))
        await s.commit(CommitRequest("r", 1, 2, ["e3"], status="parked", release=True))
    async with SqliteStore(tmp_path / "runs.db") as s:
        loaded = await s.load("r")
    assert (loaded.snapshot, loaded.entries, loaded.stream) == ("snap", [(3, "e3")], ["s"])
    assert loaded.record.status == "parked" and loaded.record.owner is None


async def test_stores_opening_a_new_file_at_once_both_succeed(tmp_path: Path) -> None:
    """Switching a new file to WAL from two connections at once can deadlock, and SQLite
    then answers SQLITE_BUSY without waiting; the store retries within busy_timeout."""
    for n in range(40):
        path = tmp_path / f"fresh{n}.db"
        first, second = SqliteStore(path), SqliteStore(path)
        try:
            assert await asyncio.gather(first.get("r"), second.get("r")) == [None, None]
        finally:
            await first.close()
            await second.close()


async def test_two_stores_on_one_file_are_fenced(tmp_path: Path) -> None:
    a, b = SqliteStore(tmp_path / "runs.db"), SqliteStore(tmp_path / "runs.db")
    b.owner = "elsewhere.invalid/1/1"
    await asyncio.gather(a.open(), b.open())
    await new_run(a, "r")
    assert await b.claim("r", b.owner, 30.0) is None  # a holds it and is alive
    await a.commit(CommitRequest("r", 1, 1, ["e2"], status="parked", release=True))
    assert await b.claim("r", b.owner, 30.0) == 2
    with pytest.raises(LeaseLost):
        await a.commit(CommitRequest("r", 1, 2, ["late"]))
    await b.commit(CommitRequest("r", 2, 2, ["e3"]))
    assert [seq for seq, _ in (await a.load("r")).entries] == [1, 2, 3]
    await asyncio.gather(a.close(), b.close())


def test_store_shared_across_event_loops(tmp_path: Path) -> None:
    """``run_sync`` runs a fresh loop per call; the store's thread serves them all."""
    s = SqliteStore(tmp_path / "runs.db")
    asyncio.run(new_run(s, "r"))
    assert asyncio.run(s.get("r")) is not None
    asyncio.run(s.close())


# --- group commit -----------------------------------------------------------------------------


async def hold_writer_thread(store: SqliteStore, seconds: float) -> asyncio.Future[Any]:
    """Keep the store's thread busy, so the jobs submitted next all land in one batch."""
    blocker = asyncio.ensure_future(on_db_thread(store, lambda c: time.sleep(seconds)))
    await asyncio.sleep(seconds / 4)
    return blocker


async def test_group_commit_batches_concurrent_commits(store: SqliteStore) -> None:
    runs = [await new_run(store, f"r{i}") for i in range(50)]
    transactions, commits = store.transactions, store.commits
    await asyncio.gather(*(store.commit(CommitRequest(r, 1, 1, ["x" * 300])) for r in runs))
    assert store.commits - commits == 50
    assert store.transactions - transactions <= 5, "50 concurrent commits should share fsyncs"


async def test_a_fenced_commit_does_not_disturb_its_batch(store: SqliteStore) -> None:
    await new_run(store, "a")
    await new_run(store, "b")
    transactions = store.transactions
    blocker = await hold_writer_thread(store, 0.2)
    results = await asyncio.gather(
        store.commit(CommitRequest("a", 1, 1, ["a2"])),
        store.commit(CommitRequest("b", 9, 1, ["stale epoch"])),
        store.commit(CommitRequest("a", 1, 2, ["a3"])),  # chains on the first one
        store.commit(CommitRequest("b", 1, 1, ["b2"], ["sb"])),
        store.commit(CommitRequest("a", 1, 2, ["a3 again"])),  # seq already taken
        return_exceptions=True,
    )
    await blocker
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


# --- never block the loop ----------------------------------------------------------------------


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


async def test_database_work_never_runs_on_the_loop_thread(
    store: SqliteStore, tmp_path: Path
) -> None:
    await new_run(store, "r")
    other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the store's next write waits for this lock
    loop = asyncio.get_running_loop()
    loop.call_later(0.4, other.execute, "COMMIT")

    async def work() -> None:
        started = time.perf_counter()
        await store.commit(CommitRequest("r", 1, 1, ["waited for the lock"]))
        assert time.perf_counter() - started >= 0.3
        for seq in range(2, 22):
            await store.commit(CommitRequest("r", 1, seq, ["x" * 300]))
            await store.load("r")
            await store.runnable(["wf"], time.time())

    gap = await max_loop_gap(work())
    other.close()
    assert gap < 0.1, f"the event loop stalled for {gap:.3f}s"
    assert store.db_thread_ids and threading.get_ident() not in store.db_thread_ids


# --- failures ----------------------------------------------------------------------------------


async def test_locked_database_is_store_unavailable_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SqliteStore(path, busy_timeout=0.05) as s:
        await new_run(s, "r", ("e1", "e2"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="locked") as info:
            await s.commit(CommitRequest("r", 1, 2, ["e3"]))
        assert str(path) in str(info.value) and "busy_timeout" in str(info.value)
        assert pickle.loads(pickle.dumps(info.value)).args == info.value.args
        with pytest.raises(StoreUnavailable):
            await s.deliver("r", "{}")
        assert (await s.load("r")).entries == [(1, "e1"), (2, "e2")]  # reads still work (WAL)
        other.execute("ROLLBACK")
        other.close()
        await s.commit(CommitRequest("r", 1, 2, ["e3"]))  # the same commit, retried
        loaded = await s.load("r")
    assert loaded.entries == [(1, "e1"), (2, "e2"), (3, "e3")] and loaded.inbox == []


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_unusable_path_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    s = SqliteStore(tmp_path / "file" / "runs.db")
    with pytest.raises(StoreUnavailable, match="runs.db"):
        await s.open()
    await s.close()


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a (SQLite )?database"):
        await SqliteStore(path).open()


def corrupt(path: Path, sql: str) -> None:
    with connect(path) as db:
        db.execute(sql)


async def test_damaged_journal_row_fails_only_that_run(store: SqliteStore, tmp_path: Path) -> None:
    for run_id in ("bad", "good", "gap", "nulls"):
        await new_run(store, run_id, ("e1", "e2", "e3"))
    path = tmp_path / "runs.db"
    corrupt(path, "UPDATE journal SET entry = X'80FF00' WHERE run_id = 'bad' AND seq = 2")
    corrupt(path, "DELETE FROM journal WHERE run_id = 'gap' AND seq = 3")
    corrupt(path, "INSERT INTO stream (run_id, seq, event) VALUES ('nulls', 1, X'FF')")
    with pytest.raises(JournalCorrupted, match=r"Run 'bad'.*journal entry seq 2.*UTF-8"):
        await store.load("bad")
    with pytest.raises(JournalCorrupted, match=r"Run 'gap'.*journal entry seq 3 is missing"):
        await store.load("gap")
    with pytest.raises(JournalCorrupted, match=r"Run 'nulls'.*stream event 1"):
        await store.load("nulls")
    assert (await store.load("good")).entries == [(1, "e1"), (2, "e2"), (3, "e3")]
    assert (await store.get("bad")) is not None  # the run row itself is fine
    await store.commit(CommitRequest("good", 1, 3, ["e4"]))  # the store goes on


async def test_damaged_snapshot_names_the_run(store: SqliteStore, tmp_path: Path) -> None:
    await new_run(store, "r")
    await store.commit(CommitRequest("r", 1, 1, ["e2"], snapshot="ok"))
    corrupt(tmp_path / "runs.db", "UPDATE snapshots SET snapshot = X'C3' WHERE run_id = 'r'")
    with pytest.raises(JournalCorrupted, match=r"Run 'r'.*snapshot at seq 2"):
        await store.load("r")


async def test_prune_deletes_every_row_of_old_runs(store: SqliteStore, tmp_path: Path) -> None:
    await new_run(store, "old")
    await store.deliver("old", "{}")
    await store.commit(
        CommitRequest("old", 1, 1, ["e2"], ["s"], status="completed", snapshot="snap")
    )
    await asyncio.sleep(0.05)
    assert await store.prune(0.01) == 1
    with connect(tmp_path / "runs.db") as db:
        for table in ("runs", "journal", "snapshots", "stream", "inbox"):
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table


async def test_an_older_database_is_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    async with SqliteStore(path) as s:
        await new_run(s, "r")
    from piton.stores import _sqlite_thread

    number = len(migrations()) + 1
    newer = (*migrations(), (number, "00N_test.sql", ("ALTER TABLE runs ADD COLUMN note TEXT",)))
    monkeypatch.setattr(_sqlite_thread, "migrations", lambda: newer)
    async with SqliteStore(path) as s:
        assert (await s.get("r")) is not None
    with connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == number
        assert "note" in {row[1] for row in db.execute("PRAGMA table_info(runs)")}


async def test_full_disk_is_store_unavailable_and_loses_nothing(store: SqliteStore) -> None:
    await new_run(store, "r", ("e1", "e2"))
    # SQLite reports a full disk when the file would grow past max_page_count
    pages = await on_db_thread(store, lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await on_db_thread(store, lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    with pytest.raises(StoreUnavailable, match="disk is full.*free space"):
        await store.commit(CommitRequest("r", 1, 2, ["x" * 200_000]))
    loaded = await store.load("r")
    assert loaded.entries == [(1, "e1"), (2, "e2")] and loaded.record.seq == 2
    await on_db_thread(store, lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    await store.commit(CommitRequest("r", 1, 2, ["x" * 200_000]))
    assert (await store.load("r")).record.seq == 3


async def test_a_notice_that_found_no_waiter_is_kept_for_the_next_wait() -> None:
    """A worker busy polling when an event is delivered polls again at once."""
    from piton.stores._wakeups import Waiters

    waiters = Waiters()
    waiters.wake()  # nobody waits
    started = time.monotonic()
    await waiters.wait(5.0)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    await waiters.wait(0.1)  # the notice was used up
    assert time.monotonic() - started >= 0.09
    waiting = asyncio.create_task(waiters.wait(5.0))
    await asyncio.sleep(0.01)
    waiters.wake()
    await asyncio.wait_for(waiting, 1.0)
    assert not waiters.pending
