"""Store faults: the server restarts, stops, or drops a connection while runs are in flight.

- ``patiently`` and ``Outage`` (``piton._runtime.outage``): back-off, deadline, logs.
- A commit whose outcome is unknown is resolved by reading the run back: both outcomes,
  made deterministic by a store whose n-th write fails after (landed) or before (not
  landed) doing its work; on memory and on the shared PostgreSQL and Redis servers. And a
  real one: the writer's backend terminated while its commit waits for a row lock.
- Restarts of real servers (scratch servers of the test's own, ``tests/scratch_servers``;
  the shared ones are never restarted): runs in flight complete, no step runs twice, and
  a caller gets ``StoreUnavailable`` only past ``store.deadline``; the run then resumes.

Every step appends ``tag n`` to a side-effect file, so a step that ran twice shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import REQUIRE_SERVICES
from piton import Event, StartEvent, StopEvent, Worker, Workflow, step
from piton._runtime.outage import Outage, patiently, retry_safe
from piton.errors import LeaseLost, StoreError, StoreUnavailable, StoreUnreachable
from piton.stores import MemoryStore, RunRecord, Store, open_store
from scratch_servers import ScratchPostgres, ScratchRedis, find_postgres, find_redis

HOPS = 6
log = logging.getLogger("test.faults")


# --- a small chain workflow with a side-effect log ----------------------------------------


class Hop(Event):
    tag: str
    n: int


class Chain(Workflow):
    """``begin`` (hop 0), then ``hop`` 1..HOPS; each execution appends ``tag n`` to the log."""

    effects: Path
    delay: float = 0.0
    gates: dict[int, asyncio.Event] = {}  # hop n waits for gates[n], when there is one

    @step
    async def begin(self, ev: StartEvent) -> Hop:
        await self._effect(ev.tag, 0)
        return Hop(tag=ev.tag, n=1)

    @step
    async def hop(self, ev: Hop) -> Hop | StopEvent:
        gate = self.gates.get(ev.n)
        if gate is not None:
            await gate.wait()
        await self._effect(ev.tag, ev.n)
        if ev.n == HOPS:
            return StopEvent(result=f"{ev.tag}:done")
        return Hop(tag=ev.tag, n=ev.n + 1)

    async def _effect(self, tag: str, n: int) -> None:
        await asyncio.sleep(self.delay)
        with self.effects.open("a") as f:
            f.write(f"{tag} {n}\n")


def chain(store: Store | str, effects: Path, *, delay: float = 0.0, **options: Any) -> Chain:
    w = Chain(store=store, timeout=60, **options)
    w.effects, w.delay = effects, delay
    return w


def executions(effects: Path) -> Counter[tuple[str, int]]:
    lines = effects.read_text().splitlines() if effects.exists() else []
    return Counter((tag, int(n)) for tag, n in (line.split() for line in lines))


async def committed_hops(store: Store, run_id: str) -> list[int]:
    """The hops whose step completion is in the run's journal (a hop whose commit never
    landed is not): hop k's step returned Hop(n=k+1), the last one a StopEvent."""
    done = []
    for _, text in (await store.load(run_id)).entries:
        entry = json.loads(text)
        if entry["k"] != "StepDone":
            continue
        result = entry["result"]
        done.append(HOPS if "StopEvent" in result["type"] else result["data"]["n"] - 1)
    return done


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout} s: {what}")


def outage_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "piton.run"]


# --- patiently ------------------------------------------------------------------------------


def failing(errors: list[BaseException], result: str = "ok") -> Callable[[], Awaitable[str]]:
    """An operation that raises ``errors`` in turn, then returns ``result``."""
    left = list(errors)

    async def op() -> str:
        if left:
            raise left.pop(0)
        return result

    return op


async def test_patiently_retries_until_the_store_answers_and_logs_the_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.faults")
    errors: list[BaseException] = [StoreUnavailable("down")] * 3 + [StoreUnreachable("refused")]
    assert await patiently(failing(errors), what="get run 'r'", deadline=5, log=log) == "ok"
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == ["WARNING", "INFO"], messages
    assert "get run 'r'" in messages[0][1] and "for up to 5 s" in messages[0][1]
    assert "answers again" in messages[1][1] and "4 failed tries" in messages[1][1]


async def test_patiently_gives_up_past_the_deadline_and_never_before() -> None:
    began = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"did not answer for 0\.[3-9].*deadline 0.3 s"):
        await patiently(failing([StoreUnavailable("down")] * 1000), what="w", deadline=0.3, log=log)
    assert 0.3 <= time.monotonic() - began < 1.5


async def test_patiently_raises_other_errors_at_once() -> None:
    with pytest.raises(LeaseLost):
        await patiently(failing([LeaseLost("taken")]), what="w", deadline=None, log=log)


async def test_a_call_that_is_not_idempotent_is_retried_only_when_it_never_ran() -> None:
    never_ran = failing([StoreUnreachable("no connection")] * 2)
    assert await patiently(never_ran, what="deliver", deadline=5, log=log, idempotent=False)
    in_doubt = failing([StoreUnavailable("connection lost during the write")])
    with pytest.raises(StoreUnavailable, match="during the write"):
        await patiently(in_doubt, what="deliver", deadline=5, log=log, idempotent=False)
    assert retry_safe(StoreUnreachable("x"), idempotent=False)
    assert not retry_safe(StoreUnavailable("x"), idempotent=False)
    assert retry_safe(StoreUnavailable("x"), idempotent=True)
    assert not retry_safe(StoreError("x"), idempotent=True)


async def test_an_outage_without_deadline_backs_off_up_to_its_longest_pause() -> None:
    outage = Outage("w", None, log, first=0.001, longest=0.004)
    began = time.monotonic()
    for _ in range(6):
        outage.failed(StoreUnavailable("down"))
        await outage.pause()
    assert outage.ongoing and time.monotonic() - began < 0.1  # 1 + 2 + 4 + 4 + 4 + 4 ms at most
    outage.over()
    assert not outage.ongoing


# --- a commit in doubt, resolved by reading it back ---------------------------------------------


class InDoubt:
    """Replaces ``store.<method>``: its ``nth`` call fails with ``StoreUnavailable`` (the
    outcome unknown), after doing its work (``landed``) or without doing it."""

    def __init__(self, store: Store, method: str, nth: int, *, landed: bool) -> None:
        self.real = getattr(store, method)
        self.nth, self.landed = nth, landed
        self.calls: list[tuple[Any, ...]] = []
        setattr(store, method, self)

    async def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        if len(self.calls) == self.nth:
            if self.landed:
                await self.real(*args)
            raise StoreUnavailable("test: the connection broke while the write was under way")
        return await self.real(*args)


@pytest.fixture(params=["memory", "postgres", "redis"])
def shared_store(request: pytest.FixtureRequest) -> Store:
    """A store of the test's own: memory, or a fresh schema / prefix on the shared servers."""
    if request.param == "memory":
        return MemoryStore()
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return open_store(f"{url}?schema={request.getfixturevalue('postgres_schema')}")
    url = request.getfixturevalue("redis_url")
    return open_store(f"{url}?prefix={request.getfixturevalue('redis_prefix')}")


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
@pytest.mark.parametrize("method", ["commit", "create"])
async def test_a_write_in_doubt_is_resolved_by_reading_the_run_back(
    shared_store: Store,
    method: str,
    landed: bool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="piton.run")
    store = shared_store
    await store.open()
    effects = tmp_path / "effects.txt"
    # strict: one commit per step, in order, so the n-th call is the same request each time
    doubt = InDoubt(store, method, 3 if method == "commit" else 1, landed=landed)
    try:
        result = await chain(store, effects, durability="strict").run(run_id="r", tag="r")
        assert result == "r:done"
        assert executions(effects) == Counter(("r", n) for n in range(HOPS + 1))  # once each
        loaded = await store.load("r")
        assert [seq for seq, _ in loaded.entries] == list(range(1, len(loaded.entries) + 1))
        assert sorted(await committed_hops(store, "r")) == list(range(HOPS + 1))
        failed = doubt.calls[doubt.nth - 1]
        again = [args for args in doubt.calls if _same_write(args, failed)]
        # landed: read back, found, never sent again; not landed: sent once more
        assert len(again) == (1 if landed else 2), doubt.calls
        logs = outage_logs(caplog)
        assert any("Retrying for up to" in m for m in logs), logs
        assert any("answers again" in m for m in logs), logs
    finally:
        await store.close()


def _same_write(args: tuple[Any, ...], failed: tuple[Any, ...]) -> bool:
    first, other = args[0], failed[0]
    if hasattr(first, "seq"):  # a CommitRequest
        return bool(first.run_id == other.run_id and first.seq == other.seq)
    return bool(first.run_id == other.run_id)  # a create's RunRecord


async def test_a_commit_in_doubt_that_lands_late_is_found_and_not_applied_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Read back as missing, the commit is written again; meanwhile the first try lands
    after all (a server still finishing it): the fence refuses the rewrite, and a second
    read back finds the first try."""
    caplog.set_level(logging.INFO, logger="piton.run")
    store = MemoryStore()
    await store.open()
    effects = tmp_path / "effects.txt"
    real_commit = store.commit
    seqs: list[int] = []

    async def commit(request: Any) -> None:
        seqs.append(request.seq)
        if len(seqs) == 3:
            raise StoreUnavailable("test: connection lost during COMMIT")
        if len(seqs) == 4:
            await real_commit(request)  # the first try lands late, just before its rewrite
        await real_commit(request)

    store.commit = commit  # type: ignore[method-assign]
    result = await chain(store, effects, durability="strict").run(run_id="r", tag="r")
    assert result == "r:done" and seqs[2] == seqs[3]
    assert executions(effects) == Counter(("r", n) for n in range(HOPS + 1))
    loaded = await store.load("r")
    assert [seq for seq, _ in loaded.entries] == list(range(1, len(loaded.entries) + 1))
    assert sorted(await committed_hops(store, "r")) == list(range(HOPS + 1))
    logs = outage_logs(caplog)
    assert any("did not land" in m for m in logs) and any("it landed" in m for m in logs), logs


async def test_a_commit_in_doubt_whose_run_another_process_took_is_lease_lost(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    await store.open()
    real_commit = store.commit
    calls = 0

    async def taken_meanwhile(request: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # while this write is in doubt, another process claims the run
            record = await store.get(request.run_id)
            assert record is not None
            await store.release([(request.run_id, record.epoch)], record.owner or "")
            await store.claim(request.run_id, "other.invalid/1/1", 30)
            raise StoreUnavailable("test: connection lost")
        await real_commit(request)

    store.commit = taken_meanwhile  # type: ignore[method-assign]
    handler = chain(store, tmp_path / "e.txt", durability="strict").run(run_id="r", tag="r")
    with pytest.raises(LeaseLost, match="taken over by another process.*in doubt"):
        await asyncio.wait_for(handler, 10)
    record = await store.get("r")
    assert record is not None and record.owner == "other.invalid/1/1"
    await store.release([("r", record.epoch)], "other.invalid/1/1")


# --- a store that cannot be reached: the deadline ----------------------------------------------


async def test_a_caller_gets_store_unavailable_past_the_deadline_then_resumes_the_run(
    tmp_path: Path,
) -> None:
    """No server needed: the store's writes fail as if it could not be reached."""
    store = MemoryStore()
    store.deadline = 0.5
    await store.open()
    effects = tmp_path / "effects.txt"
    real_commit = store.commit
    down = asyncio.Event()

    async def commit(request: Any) -> None:
        if down.is_set():
            raise StoreUnreachable("test: connection refused")
        await real_commit(request)
        if request.seq >= 2:
            down.set()  # the store goes away after the third commit

    store.commit = commit  # type: ignore[method-assign]
    w = chain(store, effects, durability="strict")
    handler = w.run(run_id="r", tag="r")
    await asyncio.wait_for(down.wait(), 10)
    began = time.monotonic()
    with pytest.raises(
        StoreUnavailable, match=r"did not answer for 0\.[5-9].*w\.run\(run_id='r'\)"
    ):
        await asyncio.wait_for(handler, 10)
    waited = time.monotonic() - began
    assert 0.5 <= waited < 2.0, waited
    committed = await committed_hops(store, "r")
    store.commit = real_commit  # type: ignore[method-assign]
    assert await w.run(run_id="r") == "r:done"
    ran = executions(effects)
    assert all(ran[("r", n)] == 1 for n in committed), (committed, ran)  # never twice
    assert set(ran) == {("r", n) for n in range(HOPS + 1)}


@pytest.mark.parametrize("durability", ["fast", "strict"])
async def test_nothing_is_shown_before_its_commit_lands_while_the_store_is_down(
    durability: str, tmp_path: Path
) -> None:
    """Promise 9 during an outage: the steps are done, but the final commit cannot be
    written yet; the caller sees neither the result nor a final status until it is."""
    store = MemoryStore()
    await store.open()
    effects = tmp_path / "effects.txt"
    real_commit = store.commit
    refused = 0

    async def commit(request: Any) -> None:
        nonlocal refused
        if request.status == "completed" and refused < 4:  # 0.05 + 0.1 + 0.2 + 0.4 s at most
            refused += 1
            raise StoreUnreachable("test: connection refused")
        await real_commit(request)

    store.commit = commit  # type: ignore[method-assign]
    handler = chain(store, effects, durability=durability).run(run_id="r", tag="r")
    await until(lambda: refused >= 2, "the final commit was refused")
    assert ("r", HOPS) in executions(effects)  # every step has run
    assert not handler.done() and handler.status == "running"
    record = await store.get("r")
    assert record is not None and record.status == "running"
    assert await asyncio.wait_for(handler, 10) == "r:done"
    assert handler.status == "completed" and refused == 4
    assert executions(effects) == Counter(("r", n) for n in range(HOPS + 1))


async def test_a_new_run_on_a_store_that_is_down_fails_past_the_deadline_then_starts(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    store.deadline = 0.3
    await store.open()
    real_create = store.create
    tries = 0

    async def create(*args: Any, **kwargs: Any) -> bool:
        nonlocal tries
        tries += 1
        raise StoreUnreachable("test: connection refused")

    store.create = create  # type: ignore[method-assign]
    w = chain(store, tmp_path / "effects.txt")
    began = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not answer for"):
        await asyncio.wait_for(w.run(run_id="new", tag="new"), 5)
    assert time.monotonic() - began >= 0.3 and tries >= 3
    assert not (tmp_path / "effects.txt").exists()  # no step ran before the run existed
    store.create = real_create  # type: ignore[method-assign]
    assert await w.run(run_id="new", tag="new") == "new:done"


# --- a real connection killed during a commit (PostgreSQL) ----------------------------------


async def test_the_writers_backend_killed_during_a_commit_is_written_again(
    postgres_url: str, postgres_schema: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The run's row is locked by another transaction, so the writer's commit waits; then
    its backend is terminated. The commit did not land: read back, written again."""
    caplog.set_level(logging.INFO, logger="piton.run")
    store = open_store(f"{postgres_url}?schema={postgres_schema}")
    await store.open()
    effects = tmp_path / "effects.txt"
    w = chain(store, effects, durability="strict", delay=0.05)
    try:
        handler = w.run(run_id="r", tag="r")
        await until(lambda: ("r", 1) in executions(effects), "hop 1 ran")
        async with await psycopg.AsyncConnection.connect(postgres_url) as locker:
            table = f'"{postgres_schema}".runs'
            await locker.execute(f"SELECT 1 FROM {table} WHERE run_id = %s FOR UPDATE", ["r"])
            async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as a:
                pid = await _blocked_backend(a)
                await a.execute("SELECT pg_terminate_backend(%s)", [pid])
            await locker.rollback()
        assert await asyncio.wait_for(handler, 20) == "r:done"
        assert executions(effects) == Counter(("r", n) for n in range(HOPS + 1))
        assert sorted(await committed_hops(store, "r")) == list(range(HOPS + 1))
        assert any("answers again" in m for m in outage_logs(caplog)), outage_logs(caplog)
    finally:
        await store.close()


async def _blocked_backend(admin: psycopg.AsyncConnection[Any]) -> int:
    """The pid of piton's writer, waiting for the row lock."""
    for _ in range(500):
        cursor = await admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'piton' "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        row = await cursor.fetchone()
        if row is not None:
            return int(row[0])
        await asyncio.sleep(0.01)
    raise AssertionError("the writer never waited for the row lock")


# --- real servers restarted while runs are in flight ----------------------------------------


def _scratch_or_skip(name: str, found: object) -> None:
    if found is None:
        message = f"{name} is not installed: no scratch server for the restart tests"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} and PITON_REQUIRE_SERVICES=1")
        pytest.skip(message)


@pytest.fixture(scope="module")
def scratch_postgres() -> Iterator[ScratchPostgres]:
    _scratch_or_skip("PostgreSQL (initdb, pg_ctl)", find_postgres())
    with ScratchPostgres.started() as server:
        yield server


@pytest.fixture(scope="module")
def scratch_redis() -> Iterator[ScratchRedis]:
    _scratch_or_skip("redis-server", find_redis())
    with ScratchRedis.started() as server:
        yield server


class Server:
    """A scratch server as the tests below use it, whichever its kind."""

    def __init__(self, kind: str, server: ScratchPostgres | ScratchRedis) -> None:
        self.kind, self.server = kind, server

    def store_url(self) -> str:
        name = f"faults_{uuid.uuid4().hex[:10]}"
        if isinstance(self.server, ScratchPostgres):
            return f"{self.server.url()}?schema={name}"
        return f"{self.server.url}?prefix={name}"

    def ensure_running(self) -> None:
        if not self.server.running():
            self.server.start()

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, crash: bool = False) -> None:
        """A clean shutdown (sessions ended), or a crash (PostgreSQL's immediate mode, a
        SIGKILL to Redis); the data stays for the next start."""
        if isinstance(self.server, ScratchPostgres):
            self.server.stop(mode="immediate" if crash else "fast")
        else:
            self.server.stop(kill=crash)

    def start(self) -> None:
        self.server.start()


@pytest.fixture(params=["postgres", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    scratch = request.getfixturevalue(f"scratch_{request.param}")
    s = Server(request.param, scratch)
    s.ensure_running()
    yield s
    s.ensure_running()  # a failed test leaves it running for the next


@pytest.mark.slow
@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
async def test_runs_in_flight_complete_across_a_server_restart(
    server: Server, crash: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="piton.run")
    store = open_store(server.store_url())
    await store.open()
    effects = tmp_path / "effects.txt"
    w = chain(store, effects, delay=0.01)
    w.gates = {2: asyncio.Event(), 4: asyncio.Event()}
    tags = [f"r{n}" for n in range(20)]
    try:
        handlers = [w.run(run_id=tag, tag=tag) for tag in tags]
        await until(lambda: len(executions(effects)) == 2 * len(tags), "every run at hop 2")
        await asyncio.sleep(0.05)
        w.gates[2].set()  # a burst of steps and commits while the server goes away
        await asyncio.to_thread(server.stop, crash)
        w.gates[4].set()  # and more of them while it is down
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.start)
        results = await asyncio.wait_for(asyncio.gather(*handlers), 40)
        assert results == [f"{tag}:done" for tag in tags]
        # no run was lost here, so no step ran twice, committed or not
        assert executions(effects) == Counter((t, n) for t in tags for n in range(HOPS + 1))
        for tag in tags:
            record = await store.get(tag)
            assert record is not None and record.status == "completed"
            assert sorted(await committed_hops(store, tag)) == list(range(HOPS + 1))
        logs = outage_logs(caplog)
        assert any("Retrying for up to" in m for m in logs), "the restart hit no commit"
        assert any("answers again" in m for m in logs), logs
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_caller_sees_store_unavailable_only_past_the_deadline_then_the_run_resumes(
    server: Server, tmp_path: Path
) -> None:
    store = open_store(server.store_url())
    store.deadline = 1.0
    await store.open()
    effects = tmp_path / "effects.txt"
    w = chain(store, effects, delay=0.1)
    tags = ["a", "b", "c"]
    try:
        handlers = [w.run(run_id=tag, tag=tag) for tag in tags]
        await until(lambda: sum(executions(effects).values()) >= 6, "the runs under way")
        stopped_at = time.monotonic()
        await asyncio.to_thread(server.stop)
        failures: dict[str, float] = {}

        async def caller(tag: str, handler: Any) -> None:
            with pytest.raises(StoreUnavailable, match="did not answer for"):
                await handler
            failures[tag] = time.monotonic() - stopped_at

        await asyncio.wait_for(
            asyncio.gather(*(caller(t, h) for t, h in zip(tags, handlers, strict=True))), 20
        )
        assert all(1.0 <= waited < 6.0 for waited in failures.values()), failures
        await asyncio.to_thread(server.start)
        committed = {tag: await committed_hops(store, tag) for tag in tags}
        before = executions(effects)
        results = await asyncio.wait_for(asyncio.gather(*(w.run(run_id=tag) for tag in tags)), 30)
        assert results == [f"{tag}:done" for tag in tags]
        after = executions(effects) - before  # what ran once the runs resumed
        for tag in tags:
            rerun = [n for n in committed[tag] if after[(tag, n)]]
            assert not rerun, f"run {tag}: committed hops {rerun} ran again"
            assert {n for (t, n) in executions(effects) if t == tag} == set(range(HOPS + 1))
    finally:
        with contextlib.suppress(Exception):
            await store.close()


@pytest.mark.slow
async def test_a_worker_waits_out_an_outage_longer_than_the_deadline(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Queued runs on a worker; the server is down for three times the store's deadline.
    Callers would have given up; the worker logs, keeps retrying and finishes every run,
    with no committed step run twice."""
    caplog.set_level(logging.INFO)
    url = server.store_url()
    submitter = open_store(url)
    await submitter.open()
    effects = tmp_path / "effects.txt"
    w = chain(submitter, effects, delay=0.02)
    w.gates = {3: asyncio.Event()}
    tags = [f"q{n}" for n in range(10)]
    worker_store = open_store(url)
    worker_store.deadline = 0.5
    worker_w = chain(worker_store, effects, delay=0.02)
    worker_w.gates = w.gates
    try:
        for tag in tags:
            await w.start(run_id=tag, tag=tag)
        async with Worker(worker_store, workflows=[worker_w], poll_interval=0.1):
            await until(lambda: len(executions(effects)) == 3 * len(tags), "every run at hop 3")
            await asyncio.to_thread(server.stop)
            w.gates[3].set()  # steps go on; their commits wait for the server
            await asyncio.sleep(3 * worker_store.deadline)
            await asyncio.to_thread(server.start)
            results = await asyncio.wait_for(
                asyncio.gather(*(w.result(tag, timeout=40) for tag in tags)), 45
            )
        assert results == [f"{tag}:done" for tag in tags]
        assert executions(effects) == Counter((t, n) for t in tags for n in range(HOPS + 1))
        logs = outage_logs(caplog)
        assert any("Retrying for ever" in m for m in logs), logs
        assert any("answers again" in m for m in logs), logs
    finally:
        with contextlib.suppress(Exception):
            await submitter.close()
        with contextlib.suppress(Exception):
            await worker_store.close()


@pytest.mark.slow
async def test_the_first_write_after_a_restart_reconnects_and_a_dead_server_is_unreachable(
    server: Server,
) -> None:
    """A deliver (not idempotent) right after a restart goes through on a new connection,
    not onto the dead one; with the server down it fails at once as StoreUnreachable."""
    store = open_store(server.store_url())
    await store.open()
    try:
        record = RunRecord(run_id="p", workflow="Chain", status="parked")
        assert await store.create(record, [], [])
        await store.deliver("p", json.dumps({"x": 1}))
        assert await store.get("p") is not None  # the read pool's connection is open too
        await asyncio.to_thread(server.restart)
        await store.deliver("p", json.dumps({"x": 2}))  # no error: a new connection
        got = await store.get("p")
        assert got is not None and got.inbox == 2
        await asyncio.to_thread(server.stop)
        began = time.monotonic()
        with pytest.raises(StoreUnreachable):
            await store.deliver("p", json.dumps({"x": 3}))
        with pytest.raises(StoreUnavailable):  # a read: safe to retry whatever it says
            await store.get("p")
        assert time.monotonic() - began < 2.0
        await asyncio.to_thread(server.start)
        got = await store.get("p")
        assert got is not None and got.inbox == 2
    finally:
        with contextlib.suppress(Exception):
            await store.close()
