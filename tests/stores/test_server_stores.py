"""What every store on a database server (PostgreSQL, Redis) must do, run on each: the
conformance suite, fencing between store objects, group commit, several event loops,
wake-ups from another process's delivery, a missing driver or server, and durable
workflows end to end. Each test works in a fresh schema or key prefix, emptied afterwards;
on Redis, the indexes are then checked against the runs. What only one server has (its
URL options, schema, damaged data, errors) is tested in ``test_postgres_store.py`` and
``test_redis_store.py``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

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
    Worker,
    Workflow,
    step,
)
from piton._core.status import COMPLETED, PARKED
from piton.errors import LeaseLost, StoreUnavailable
from piton.serde import JsonSerializer
from piton.stores.base import CommitRequest, RunRecord, Store
from piton.stores.postgres import PostgresStore
from piton.stores.redis import RedisStore
from piton.testing import check_store

SRC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src"
)
AnyServerStore = PostgresStore | RedisStore


@dataclass(frozen=True)
class Server:
    """A server store's URL, on a schema (or key prefix) of the test's own."""

    kind: str
    url: str

    def store(self) -> AnyServerStore:
        return PostgresStore(self.url) if self.kind == "postgres" else RedisStore(self.url)


@pytest.fixture(params=["postgres", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Skips when the server is absent (fails with PITON_REQUIRE_SERVICES=1)."""
    if request.param == "postgres":
        base: str = request.getfixturevalue("postgres_url")
        schema = f"piton_test_{uuid.uuid4().hex[:12]}"
        yield Server("postgres", f"{base}?schema={schema}")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    else:
        base = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")  # deletes its keys afterwards
        yield Server("redis", f"{base}?prefix={prefix}")
        asyncio.run(redis_indexes_match(base, prefix))


async def redis_indexes_match(url: str, prefix: str) -> None:
    """The Redis indexes hold what the runs' hashes say (the oracle of the Redis tests)."""
    import redis.asyncio as aioredis

    from test_redis_store import assert_indexes_match

    client = aioredis.Redis.from_url(url)
    try:
        await assert_indexes_match(client, prefix)
    finally:
        await client.aclose()


async def new_run(store: Store, run_id: str, entries: tuple[str, ...] = ("e1",)) -> str:
    record = RunRecord(run_id, "wf", "running", owner=store.owner, epoch=1)
    assert await store.create(record, list(entries), [])
    return run_id


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.01)


def parked(store: Store, run_id: str) -> Callable[[], Awaitable[bool]]:
    """Whether the run is parked in the store and no process holds it."""

    async def check() -> bool:
        record = await store.get(run_id)
        return record is not None and record.status == PARKED and record.owner is None

    return check


# --- the conformance suite; no driver, no server ------------------------------------------------


@pytest.mark.allow_stuck_runs  # the conformance checks leave parked runs behind
async def test_check_store(server: Server) -> None:
    passed = await check_store(server.store)
    assert "concurrent_commits" in passed and passed[-1] == "prune"


@pytest.mark.parametrize(
    ("driver", "url", "name", "extra"),
    [
        ("psycopg", "postgresql://localhost/db", "PostgresStore", "postgres"),
        ("redis", "redis://localhost:6379/0", "RedisStore", "redis"),
    ],
)
def test_without_its_driver_a_store_asks_for_the_extra(
    driver: str, url: str, name: str, extra: str
) -> None:
    code = (
        "import sys\n"
        f"sys.modules[{driver!r}] = None\n"
        "from piton.errors import WorkflowConfigurationError\n"
        "import piton.stores\n"
        "from piton.stores.base import open_store\n"
        "for make in (\n"
        f"    lambda: open_store({url!r}),\n"
        f"    lambda: piton.stores.{name},\n"
        "):\n"
        "    try:\n"
        "        make()\n"
        "    except WorkflowConfigurationError as exc:\n"
        "        print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    for line in lines:
        assert f"pip install 'piton[{extra}]'" in line, out.stdout + out.stderr
    assert lines[0].startswith(f"Store URL '{url}' needs") and lines[1].startswith(name)


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
@pytest.mark.parametrize("store", [PostgresStore, RedisStore], ids=["postgres", "redis"])
async def test_unreachable_server_is_store_unavailable(store: type[AnyServerStore]) -> None:
    url = (
        "postgresql://postgres@127.0.0.1:1/test"
        if store is PostgresStore
        else "redis://127.0.0.1:1/0"
    )
    s = store(url)
    with pytest.raises(StoreUnavailable, match="cannot be reached.*server is running") as info:
        await s.get("r")
    assert "127.0.0.1:1" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args
    await s.close()


# --- fencing and group commit -----------------------------------------------------------------


async def test_two_stores_on_one_schema_or_prefix_are_fenced(server: Server) -> None:
    a, b = server.store(), server.store()
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
            CommitRequest("r", 1, 2, ["late"], status="completed", result='"x"', snapshot="S"),
        ):
            with pytest.raises(LeaseLost, match="Run 'r'.*epoch 2, ours 1"):
                await a.commit(late)
        assert await b.load("r") == before, "a fenced commit wrote"
        with pytest.raises(LeaseLost, match="Run 'r' journal is at seq 2, expected 1"):
            await b.commit(CommitRequest("r", 2, 1, ["behind"]))
        assert await b.load("r") == before, "a commit at the wrong seq wrote"
        assert (before.record.seq, before.record.status, before.record.owner) == (
            2,
            "running",
            b.owner,
        )
        await b.commit(CommitRequest("r", 2, 2, ["e3"]))
        assert [seq for seq, _ in (await a.load("r")).entries] == [1, 2, 3]
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_group_commit_batches_concurrent_commits(server: Server) -> None:
    async with server.store() as store:
        assert isinstance(store, PostgresStore | RedisStore)
        runs = await asyncio.gather(*(new_run(store, f"r{i}") for i in range(50)))
        transactions, commits = store.transactions, store.commits
        await asyncio.gather(
            *(store.commit(CommitRequest(r, 1, 1, ["x" * 300], ["s"])) for r in runs)
        )
        assert store.commits - commits == 50
        assert store.transactions - transactions <= 5, "50 concurrent commits should share writes"
        for run_id in runs[:3]:
            loaded = await store.load(run_id)
            assert loaded.entries == [(1, "e1"), (2, "x" * 300)] and loaded.stream == ["s"]


async def test_a_fenced_commit_does_not_disturb_its_batch(server: Server) -> None:
    async with server.store() as store:
        assert isinstance(store, PostgresStore | RedisStore)
        await new_run(store, "a")
        await new_run(store, "b")
        transactions = store.transactions
        results = await asyncio.gather(  # queued together: one batch
            store.commit(CommitRequest("a", 1, 1, ["a2"])),
            store.commit(CommitRequest("b", 9, 1, ["stale epoch"])),
            store.commit(CommitRequest("a", 1, 2, ["a3"])),  # chains on the first one
            store.commit(CommitRequest("b", 1, 1, ["b2"], ["sb"], status="parked", wake_at=5.0)),
            store.commit(CommitRequest("a", 1, 2, ["a3 again"])),  # seq already taken
            store.commit(CommitRequest("missing", 1, 1, ["x"])),
            return_exceptions=True,
        )
        assert store.transactions - transactions == 1, "the six commits should be one write"
        assert [type(r).__name__ for r in results] == [
            "NoneType",
            "LeaseLost",
            "NoneType",
            "NoneType",
            "LeaseLost",
            "RunNotFound",
        ]
        assert (await store.load("a")).entries == [(1, "e1"), (2, "a2"), (3, "a3")]
        loaded = await store.load("b")
        assert loaded.entries == [(1, "e1"), (2, "b2")] and loaded.stream == ["sb"]
        assert (loaded.record.status, loaded.record.wake_at) == ("parked", 5.0)


def test_store_shared_across_event_loops(server: Server) -> None:
    """``run_sync`` runs a fresh loop per call: the store connects again on each, and its
    connections close with their loop, or with the store."""
    s = server.store()
    asyncio.run(new_run(s, "r"))
    assert asyncio.run(s.get("r")) is not None
    asyncio.run(s.commit(CommitRequest("r", 1, 1, ["e2"])))
    assert s.commits == 1

    errors: list[BaseException] = []

    def advance(run_id: str) -> None:  # two loops at once, in two threads
        async def main() -> None:
            await new_run(s, run_id)
            for seq in range(1, 4):
                await s.commit(CommitRequest(run_id, 1, seq, [f"e{seq + 1}"]))

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=advance, args=(f"t{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert s.commits == 7
    assert [seq for seq, _ in asyncio.run(s.load("t1")).entries] == [1, 2, 3, 4]
    asyncio.run(s.close())
    gc.collect()  # an unclosed connection would warn here, and warnings are errors


async def test_a_delivered_event_wakes_waiters_of_other_stores(server: Server) -> None:
    store, other = server.store(), server.store()
    try:
        await new_run(store, "r")
        # once listening, the store wakes its waiters once (for what came before); after
        # that, with nothing delivered, a wait lasts its whole timeout
        await other.wait_for_work(2.0)
        started = time.monotonic()
        await other.wait_for_work(0.1)
        assert time.monotonic() - started >= 0.09
        waiting = asyncio.create_task(other.wait_for_work(10.0))
        started = time.monotonic()
        while not waiting.done():  # until it listens
            await store.deliver("r", "{}")
            await asyncio.wait({waiting}, timeout=0.05)
        assert time.monotonic() - started < 2.0, "the delivery did not wake the waiter"
        assert (await store.get("r")) is not None
    finally:
        await asyncio.gather(store.close(), other.close())


async def wakes(store: Store, other: Store, act: Callable[[int], Awaitable[object]]) -> None:
    """``act(n)``, repeated until ``other`` listens, wakes ``other.wait_for_work`` at once."""
    await other.wait_for_work(2.0)  # once listening, it wakes once for what came before
    started = time.monotonic()
    await other.wait_for_work(0.1)
    assert time.monotonic() - started >= 0.09, "a wait with nothing new returned early"
    waiting = asyncio.create_task(other.wait_for_work(10.0))
    started, n = time.monotonic(), 0
    while not waiting.done():  # until it listens
        await act(n)
        n += 1
        await asyncio.wait({waiting}, timeout=0.05)
    assert time.monotonic() - started < 2.0, "the waiter was not woken"


async def test_a_queued_run_wakes_waiters_of_other_stores(server: Server) -> None:
    store, other = server.store(), server.store()
    try:
        await store.open()
        running = RunRecord("busy", "wf", "running", owner=store.owner, epoch=1)
        await store.create(running, ["e1"], [])  # a run some process drives: nobody to wake
        await wakes(
            store, other, lambda n: store.create(RunRecord(f"q{n}", "wf", "queued"), [], [])
        )
    finally:
        await asyncio.gather(store.close(), other.close())


async def test_a_release_wakes_waiters_of_other_stores(server: Server) -> None:
    store, other = server.store(), server.store()
    try:
        runs = await asyncio.gather(*(new_run(store, f"r{n}") for n in range(40)))
        await wakes(store, other, lambda n: store.release([(runs[n], 1)], store.owner))
        assert (await store.get(runs[0])).owner is None  # type: ignore[union-attr]
    finally:
        await asyncio.gather(store.close(), other.close())


async def test_claimers_on_other_connections_never_take_one_run(server: Server) -> None:
    """Three store objects (their own connections) claim 90 queued runs at once, a few at
    a time: every run is taken once (epoch 1), none is lost."""
    stores = [server.store() for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        runs = {f"q{n}" for n in range(90)}
        await asyncio.gather(
            *(stores[0].create(RunRecord(run_id, "wf", "queued"), [], []) for run_id in runs)
        )
        await stores[0].create(RunRecord("other", "wf-other", "queued"), [], [])

        rounds = asyncio.Barrier(3)  # the three claim at once, round after round

        async def claim_all(store: Store, owner: str) -> list[str]:
            taken: list[str] = []
            while True:
                await rounds.wait()
                found = await store.claim_runnable(["wf"], time.time(), owner, 30.0, 7)
                assert len(found) <= 7 and all(r.owner == owner and r.epoch == 1 for r in found)
                taken += [r.run_id for r in found]
                await rounds.wait()  # everyone has claimed: is anything left?
                if not await store.runnable(["wf"], time.time(), limit=1):
                    return taken

        owners = [f"claimer-{n}.invalid/1/1" for n in range(3)]
        taken = await asyncio.gather(
            *(claim_all(s, o) for s, o in zip(stores, owners, strict=True))
        )
        every = [run_id for part in taken for run_id in part]
        assert len(every) == len(set(every)) == 90 and set(every) == runs
        assert all(taken), "a claimer that claimed in every round got nothing"
        assert (await stores[0].get("other")).status == "queued"  # type: ignore[union-attr]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


# --- durable workflows end to end ---------------------------------------------------------------

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


class Nap(Workflow):
    @step
    async def nap(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await ctx.sleep(0.3)
        return StopEvent(result="rested")


async def test_durable_workflow_end_to_end(server: Server) -> None:
    made: list[Workflow] = []

    def make(cls: type[Workflow]) -> Workflow:
        made.append(cls(store=server.url))  # a store object of its own, from the URL
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
        assert probe is not None
        await until(parked(probe, "approve-1"), "the run parked, held by no process")

        later = make(Approve).run(run_id="approve-1")  # another store object attaches
        await later.send_event(HumanResponseEvent(response="yes"))
        assert await later == "answer: yes"
        assert await make(Approve).run(run_id="approve-1") == "answer: yes"
    finally:
        for workflow in made:
            assert workflow.store is not None
            await workflow.store.close()


async def test_a_worker_finishes_a_parked_run_nobody_listens_to(server: Server) -> None:
    napping = Nap(store=server.url)
    probe, worker_store = server.store(), server.store()
    try:
        first = napping.run(run_id="nap-1")

        async def started() -> bool:
            return await probe.get("nap-1") is not None

        await until(started, "the run started")
        first.cancel()  # the run parks with its deadline; no process holds it
        await until(parked(probe, "nap-1"), "the run parked, held by no process")

        async def completed() -> bool:
            return getattr(await probe.get("nap-1"), "status", None) == COMPLETED

        async with Worker(worker_store, workflows=[Nap], poll_interval=0.05):
            await until(completed, "the worker finished the run")
        assert await Nap(store=probe).run(run_id="nap-1") == "rested"
    finally:
        assert napping.store is not None
        for store in (napping.store, probe, worker_store):
            await store.close()


async def test_a_worker_is_woken_by_a_delivery_not_by_its_poll(server: Server) -> None:
    """An event delivered by another store object wakes an idle worker at once, although
    it would poll only every 30 s (PostgreSQL: LISTEN/NOTIFY; Redis: pub/sub)."""
    owner = Approve(store=server.url)
    first = owner.run(run_id="notify-1")
    assert owner.store is not None
    await until(parked(owner.store, "notify-1"), "the run parked")
    first.cancel()  # nobody listens any more: the run stays parked in the store

    worker_store, sender = server.store(), server.store()
    try:
        async with Worker(worker_store, workflows=[Approve], poll_interval=30) as worker:
            await asyncio.sleep(0.3)  # the worker's first poll found nothing; it now waits
            text = JsonSerializer().dumps(HumanResponseEvent(response="now"), "event")
            await sender.deliver("notify-1", text)

            async def completed() -> bool:
                return getattr(await sender.get("notify-1"), "status", None) == COMPLETED

            await until(completed, "the worker was woken and finished the run")
            assert worker.poll_interval == 30
        reader = Approve(store=server.url)
        assert await reader.run(run_id="notify-1") == "answer: now"
        assert reader.store is not None
        await reader.store.close()
    finally:
        for store in (worker_store, sender, owner.store):
            await store.close()
