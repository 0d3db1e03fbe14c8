"""Queued runs and workers: ``Workflow.start``, ``Worker(concurrency=, grace=)``, and the
``piton worker`` command, on every store; several worker processes on one store, one of
them killed with SIGKILL and one stopped with SIGTERM and restarted (issue 9)."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from piton import Context, Event, StartEvent, StopEvent, Workflow, step
from piton._core.inputs import Begin
from piton._journal_codec import decode_input
from piton.errors import WorkflowConfigurationError, WorkflowRuntimeError
from piton.serde import JsonSerializer, TypeResolver
from piton.stores import Store, open_store
from piton.worker import Worker
from worker_flows import Chain, Job, Other, expected

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


async def _eventually(check, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


# --- Workflow.start -------------------------------------------------------------------------


async def test_start_queues_a_run_without_running_it(store_url: str | Store) -> None:
    w = Chain(store=store_url)
    run_id = await w.start(run_id="q1", key="q1", n=4)
    assert run_id == "q1"
    store = open_store(store_url)
    await store.open()
    record = await store.get("q1")
    assert record is not None and record.status == "queued" and record.owner is None
    await asyncio.sleep(0.1)
    assert (await store.get("q1")).status == "queued"  # nothing runs it in this process
    # idempotent by run id: the second start changes nothing
    assert await w.start(run_id="q1", key="q1", n=99) == "q1"
    assert len(await store.list_runs(limit=10)) == 1
    async with Worker(store_url, workflows=[Chain], poll_interval=0.05):
        assert await w.run(run_id="q1") == expected(4)  # attaches, awaits the worker's result
    # the start event of the first start() counts, not the second's
    assert (await store.get("q1")).status == "completed"


async def test_start_without_id_returns_a_fresh_one(store_url: str | Store) -> None:
    w = Chain(store=store_url)
    a = await w.start(key="a", n=1)
    b = await w.start(key="b", n=2)
    assert a != b and len(a) >= 16
    async with Worker(store_url, workflows=[Chain], poll_interval=0.05):
        assert await w.run(run_id=a) == expected(1)
        assert await w.run(run_id=b) == expected(2)


async def test_start_refuses_bad_input(store_url: str | Store) -> None:
    with pytest.raises(WorkflowConfigurationError, match="has none"):
        await Chain().start(key="x", n=1)  # no store: nothing could run it
    w = Chain(store=store_url)
    with pytest.raises(WorkflowRuntimeError, match="Cannot build the start event"):
        await w.start(key="x")  # n is missing
    await Other(store=store_url).start(run_id="taken")
    with pytest.raises(WorkflowRuntimeError, match="belongs to workflow 'Other'"):
        await w.start(run_id="taken", key="x", n=1)
    async with Worker(store_url, workflows=[Other], poll_interval=0.05):
        assert await Other(store=store_url).run(run_id="taken") == "other"


async def test_run_attaches_to_a_queued_run_and_runs_it(store_url: str | Store) -> None:
    """With no worker around, ``run(run_id=)`` of a queued run executes it here."""
    w = Chain(store=store_url)
    await w.start(run_id="here", key="here", n=2)
    handler = w.run(run_id="here")
    seen = [type(ev).__name__ async for ev in handler.stream_events()]
    assert await handler == expected(2)
    assert seen[-1] == "StopEvent"


# --- the worker -----------------------------------------------------------------------------


class Gate(StartEvent):
    key: str


class Hold(Workflow):
    """A step that waits for the test to open the gate."""

    gate: asyncio.Event
    running: int = 0
    most: int = 0

    @step
    async def hold(self, ev: Gate) -> StopEvent:
        cls = type(self)
        cls.running += 1
        cls.most = max(cls.most, cls.running)
        try:
            await cls.gate.wait()
        finally:
            cls.running -= 1
        return StopEvent(result=ev.key)


class Answer(Event):
    text: str


class Ask(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(Answer)
        return StopEvent(result=answer.text)


async def test_a_worker_never_holds_more_runs_than_its_concurrency(
    store_url: str | Store,
) -> None:
    Hold.gate, Hold.running, Hold.most = asyncio.Event(), 0, 0
    w = Hold(store=store_url)
    ids = [await w.start(key=f"h{n}") for n in range(7)]
    store = open_store(store_url)
    async with Worker(store_url, workflows=[w], concurrency=3, poll_interval=0.02) as worker:
        await _eventually(lambda: _true(Hold.running == 3), what="3 runs holding")
        await asyncio.sleep(0.2)  # time enough to take more, if the cap did not hold
        assert worker.active == 3 and Hold.running == 3
        running = await store.list_runs(status="running", limit=100)
        assert len(running) == 3 and {r.owner for r in running} == {store.owner}
        assert len(await store.list_runs(status="queued", limit=100)) == 4
        Hold.gate.set()
        results = [await w.run(run_id=run_id) for run_id in ids]
    assert sorted(results) == sorted(f"h{n}" for n in range(7))
    assert Hold.most == 3


async def test_parked_runs_count_for_nothing(store_url: str | Store) -> None:
    w = Ask(store=store_url)
    ids = [await w.start() for _ in range(6)]
    store = open_store(store_url)
    await store.open()
    async with Worker(store_url, workflows=[w], concurrency=2, poll_interval=0.02) as worker:

        async def all_parked() -> bool:
            return len(await store.list_runs(status="parked", limit=100)) == 6

        await _eventually(all_parked, what="six parked runs on a worker of two")
        assert worker.active == 0
        for n, run_id in enumerate(ids):
            await w.send_event(run_id, Answer(text=str(n)))  # the worker wakes each
        results = [await w.result(run_id, timeout=20) for run_id in ids]
    assert results == [str(n) for n in range(6)]


async def test_runs_of_an_unknown_workflow_are_left_alone(store_url: str | Store) -> None:
    other = await Other(store=store_url).start(run_id="other")
    w = Chain(store=store_url)
    mine = [await w.start(key=f"k{n}", n=n) for n in range(3)]
    store = open_store(store_url)
    async with Worker(store_url, workflows=[Chain], poll_interval=0.02):
        assert [await w.run(run_id=r) for r in mine] == [expected(n) for n in range(3)]
        await asyncio.sleep(0.1)
        record = await store.get(other)
        assert record is not None
        assert record.status == "queued" and record.owner is None and record.epoch == 0
    async with Worker(store_url, workflows=[Other], poll_interval=0.02):
        assert await Other(store=store_url).run(run_id=other) == "other"


class Slow(Workflow):
    seconds: float = 0.4
    calls: collections.Counter[str] = collections.Counter()
    began: int = 0

    @step
    async def first(self, ev: Gate) -> Answer:
        type(self).began += 1
        await asyncio.sleep(type(self).seconds)
        type(self).calls[f"{ev.key}:first"] += 1
        return Answer(text=ev.key)

    @step
    async def second(self, ev: Answer) -> StopEvent:
        type(self).calls[f"{ev.text}:second"] += 1
        return StopEvent(result=ev.text.upper())


async def test_drain_lets_running_steps_finish_then_hands_the_run_back(
    store_url: str | Store,
) -> None:
    Slow.seconds, Slow.calls, Slow.began = 0.4, collections.Counter(), 0
    w = Slow(store=store_url)
    run_id = await w.start(key="d")
    store = open_store(store_url)
    await store.open()
    worker = Worker(store_url, workflows=[w], poll_interval=0.02, grace=5)
    await worker.start()
    await _eventually(lambda: _true(Slow.began == 1), what="the step started")
    started = time.monotonic()
    await worker.drain()
    assert time.monotonic() - started >= 0.2  # it waited for the step
    assert Slow.calls["d:first"] == 1 and Slow.calls["d:second"] == 0
    record = await store.get(run_id)
    assert record.status == "running" and record.owner is None  # handed back, not finished
    async with Worker(store_url, workflows=[w], poll_interval=0.02):
        assert await w.run(run_id=run_id) == "D"
    assert Slow.calls == {"d:first": 1, "d:second": 1}  # the first step did not run again


async def test_drain_past_its_grace_lets_go(store_url: str | Store) -> None:
    Slow.seconds, Slow.calls, Slow.began = 30.0, collections.Counter(), 0
    w = Slow(store=store_url)
    run_id = await w.start(key="g")
    store = open_store(store_url)
    await store.open()
    worker = Worker(store_url, workflows=[w], poll_interval=0.02, grace=0.2)
    await worker.start()
    await _eventually(lambda: _true(Slow.began == 1), what="the step started")
    started = time.monotonic()
    await worker.drain()
    assert time.monotonic() - started < 5
    record = await store.get(run_id)
    assert record.owner is None and not record.finished
    Slow.seconds = 0.0
    async with Worker(store_url, workflows=[w], poll_interval=0.02):
        assert await w.run(run_id=run_id) == "G"
    assert Slow.calls == {"g:first": 1, "g:second": 1}


def test_worker_refuses_bad_settings() -> None:
    with pytest.raises(WorkflowConfigurationError, match="concurrency"):
        Worker("memory://", workflows=[Chain], concurrency=0)
    with pytest.raises(WorkflowConfigurationError, match="grace"):
        Worker("memory://", workflows=[Chain], grace=-1)
    with pytest.raises(WorkflowConfigurationError, match="at least one workflow"):
        Worker("memory://", workflows=[])


async def _true(value: bool) -> bool:
    return value


# --- worker processes -----------------------------------------------------------------------


def _spawn_worker(
    url: str, log: Path, name: str, out: Path, delay: str = "0.03"
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "src")]),
        "PITON_SIDE_LOG": str(log),
        "PITON_STEP_DELAY": delay,
    }
    with open(out / f"{name}.out", "ab") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "piton",
                "worker",
                "worker_flows:Chain",
                "--store",
                url,
                "--concurrency",
                "10",
                "--grace",
                "10s",
                "--poll",
                "0.2s",
            ],
            env=env,
            cwd=str(HERE),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _server_store(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return "sqlite:///" + str(tmp_path / "runs.db")
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        return f"{url}?schema={request.getfixturevalue('postgres_schema')}"
    url = request.getfixturevalue("redis_url")
    return f"{url}?prefix={request.getfixturevalue('redis_prefix')}"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_three_worker_processes_one_killed_one_restarted(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """300 queued runs, 3 ``piton worker`` processes; one gets SIGKILL, one gets SIGTERM
    (drains, exits 0) and is started again. Every run finishes once with its result; a
    step runs twice only when the process that ran it first was killed before its commit;
    no two processes ever held a run at once; the work was spread."""
    url = _server_store(request, kind, tmp_path)
    log = tmp_path / "side.log"
    runs = 300
    w = Chain(store=url)
    keys = [f"r{n}" for n in range(runs)]
    for n, key in enumerate(keys):
        await w.start(run_id=key, key=key, n=n)
    store = open_store(url)
    await store.open()
    workers = [_spawn_worker(url, log, f"w{n}", tmp_path) for n in range(3)]
    try:

        async def finished(count: int) -> bool:
            done = await store.list_runs(status="completed", limit=10_000)
            return len(done) >= count

        await _eventually(lambda: finished(60), timeout=60, what="60 finished runs")
        killed = workers[0].pid
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        await _eventually(lambda: finished(120), timeout=60, what="120 finished runs")
        workers[1].send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(workers[1].wait, 30)
        assert code == 0, (tmp_path / "w1.out").read_text()[-3000:]
        workers[1] = _spawn_worker(url, log, "w1-again", tmp_path)
        await _eventually(lambda: finished(runs), timeout=120, what="every run finished")
    finally:
        for p in workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in workers:
            try:
                await asyncio.to_thread(p.wait, 30)
            except subprocess.TimeoutExpired:
                p.kill()
    # every run finished exactly once, with its result
    for n, key in enumerate(keys):
        assert await w.run(run_id=key) == expected(n)
    # a step ran twice only when its first run was on the killed worker, before its commit
    lines = [line.split() for line in log.read_text().splitlines()]
    done = collections.Counter((key, name) for key, name, _ in lines)
    assert set(done) == {(k, s) for k in keys for s in ("double", "add", "triple")}
    for (key, name), count in done.items():
        if count > 1:
            pids = [int(pid) for k, s, pid in lines if (k, s) == (key, name)]
            assert pids[:-1] == [killed] * (count - 1), (key, name, pids)
    # the work was spread over the workers
    by_pid = collections.Counter(pid for _, _, pid in lines)
    assert len([pid for pid, n in by_pid.items() if n >= 30]) >= 2, by_pid
    # no two processes held a run at once: in the journal each attach has a higher epoch
    # than the one before, and a process's step executions never interleave with another's
    ser, types = JsonSerializer(), TypeResolver(w._engine().graph.event_types)
    for key in keys:
        loaded = await store.load(key)
        begins = [
            entry
            for _, text in loaded.entries
            if isinstance(entry := decode_input(text, ser, types), Begin)
        ]
        epochs = [b.epoch for b in begins]
        assert epochs == sorted(set(epochs)) and all(e >= 1 for e in epochs), (key, epochs)
        order = [pid for k, _, pid in lines if k == key]
        segments = [pid for i, pid in enumerate(order) if i == 0 or order[i - 1] != pid]
        assert len(segments) == len(set(segments)), (key, order)
    await store.close()


# --- reaching a run from any process --------------------------------------------------------


async def test_result_send_and_cancel_reach_a_run_without_running_it(
    store_url: str | Store,
) -> None:
    w = Ask(store=store_url)
    store = open_store(store_url)
    await store.open()
    async with Worker(store_url, workflows=[w], poll_interval=0.02):
        a = await w.start(run_id="a")
        b = await w.start(run_id="b")

        async def parked(run_id: str) -> bool:
            record = await store.get(run_id)
            return record is not None and record.status == "parked"

        await _eventually(lambda: parked("a"), what="a parked")
        with pytest.raises(TimeoutError):
            await w.result(a, timeout=0.2)  # still waiting: the run is left as it is
        assert (await store.get(a)).status == "parked"
        await w.send_event(a, Answer(text="yes"))
        assert await w.result(a, timeout=20) == "yes"
        await _eventually(lambda: parked("b"), what="b parked")
        await w.cancel_run(b)
        with pytest.raises(Exception, match="cancel"):
            await w.result(b, timeout=20)
        assert (await store.get(b)).status == "cancelled"
        with pytest.raises(WorkflowRuntimeError, match="has finished"):
            await w.send_event(a, Answer(text="again"))
    with pytest.raises(Exception, match="No run 'nope'"):
        await w.send_event("nope", Answer(text="x"))
    with pytest.raises(Exception, match="No run 'nope'"):
        await w.result("nope", timeout=5)
    with pytest.raises(WorkflowRuntimeError, match="sends an Event"):
        await w.send_event(a, "yes")  # type: ignore[arg-type]
    with pytest.raises(WorkflowConfigurationError, match="has none"):
        await Ask().result("a")


# --- the command ----------------------------------------------------------------------------


def _piton(*args: str, cwd: Path = HERE, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piton", *args],
        cwd=str(cwd),
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "src")]), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_worker_command_refuses_bad_arguments(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "runs.db")
    for args, message in [
        (["worker", "worker_flows"], "module:attribute"),
        (["worker", "no_such_module:Chain"], "no module named 'no_such_module'"),
        (["worker", "worker_flows:Nope"], "has no attribute 'Nope'"),
        (["worker", "worker_flows:DELAY"], "not a Workflow"),
        (["worker", "worker_flows:Chain", "--concurrency", "0"], "0 is not in the range"),
        (["worker", "worker_flows:Chain", "--grace", "soon"], "is not a duration"),
        (["worker", "worker_flows:Chain", "--store", "nosuch://x"], "Unknown store URL"),
    ]:
        done = _piton(*args, "--store", url) if "--store" not in args else _piton(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    assert "--concurrency" in _piton("worker", "--help").stdout


async def test_the_worker_command_drains_on_sigterm_and_stops_at_a_second_signal(
    tmp_path: Path,
) -> None:
    url = "sqlite:///" + str(tmp_path / "runs.db")
    w = Chain(store=url)
    for n in range(5):
        await w.start(run_id=f"s{n}", key=f"s{n}", n=n)
    out = tmp_path / "out"
    out.mkdir()
    proc = _spawn_worker(url, tmp_path / "side.log", "w", out)
    try:
        results = [await w.result(f"s{n}", timeout=30) for n in range(5)]
        assert results == [expected(n) for n in range(5)]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        log = (out / "w.out").read_text()
        assert "working on Chain" in log and "SIGTERM: draining" in log and "stopped" in log
        # a second signal while draining stops it at once
        proc = _spawn_worker(url, tmp_path / "side.log", "w2", out, delay="30")
        await w.start(run_id="long", key="long", n=1)
        store = open_store(url)
        await store.open()

        async def taken() -> bool:
            record = await store.get("long")
            return record is not None and record.status == "running" and record.owner is not None

        await _eventually(taken, timeout=30, what="the long run taken")
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.5)
        assert proc.poll() is None  # draining: the step has 30 s to go, the grace is 10 s
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 128 + signal.SIGINT
        assert time.monotonic() - started < 5
        record = await store.get("long")
        assert record.owner is None and not record.finished  # handed back on the way out
        await store.close()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_lease_and_deadline_are_store_url_options(tmp_path: Path) -> None:
    """``piton worker --store URL`` is configured through its URL."""
    urls = [
        f"sqlite:///{tmp_path}/runs.db?lease=5&deadline=2.5",
        "postgresql://postgres@127.0.0.1:5432/test?lease=5&deadline=2.5",
        "redis://127.0.0.1:6379/0?lease=5&deadline=2.5",
    ]
    for url in urls:
        store = open_store(url)
        assert (store.lease, store.deadline) == (5.0, 2.5), url
        assert open_store(url.split("?")[0]).lease == 15.0
        assert open_store(url.split("?")[0]).deadline == 30.0
        with pytest.raises(WorkflowConfigurationError, match="lease"):
            open_store(url.split("?")[0] + "?lease=0")
        with pytest.raises(WorkflowConfigurationError, match="deadline"):
            open_store(url.split("?")[0] + "?deadline=-1")


async def test_a_worker_closed_at_once_hands_back_what_it_claimed(store_url: str | Store) -> None:
    """Closed right after its first claim (its drivers not even begun): every run it took
    is free again at once, not held until its lease expires."""
    Hold.gate, Hold.running, Hold.most = asyncio.Event(), 0, 0
    w = Hold(store=store_url)
    ids = [await w.start(key=f"c{n}") for n in range(5)]
    store = open_store(store_url)
    await store.open()
    worker = Worker(store_url, workflows=[w], poll_interval=30)
    await worker.start()
    assert worker.claimed == 5
    await worker.close()
    for run_id in ids:
        record = await store.get(run_id)
        assert record is not None and record.owner is None and not record.finished, record
    Hold.gate.set()
    async with Worker(store_url, workflows=[w], poll_interval=0.02):
        assert sorted([await w.result(r, timeout=20) for r in ids]) == [f"c{n}" for n in range(5)]


async def test_a_worker_takes_over_a_run_whose_owner_lease_expired(
    store_url: str | Store,
) -> None:
    """A run held by a process on another machine (its liveness unknowable from here) is
    left alone while its lease holds, and taken over once it has expired."""
    from piton.serde import JsonSerializer
    from piton.stores import RunRecord

    w = Chain(store=store_url)
    store = open_store(store_url)
    await store.open()
    start = JsonSerializer().dumps(Job(key="far", n=5), "start")
    engine = w._engine()
    lease_until = time.time() + 1.0
    record = RunRecord(
        "far", engine.name, "running", engine.fingerprint,
        owner="another-host.invalid/4242/1", epoch=1, lease_until=lease_until, start=start,
    )  # fmt: skip
    assert await store.create(record, [], [])
    async with Worker(store_url, workflows=[Chain], poll_interval=0.05):
        await asyncio.sleep(0.5)
        held = await store.get("far")
        assert held is not None and held.owner == "another-host.invalid/4242/1"  # still its
        assert await w.result("far", timeout=20) == expected(5)
    done = await store.get("far")
    assert done is not None and done.epoch >= 2 and time.time() > lease_until
