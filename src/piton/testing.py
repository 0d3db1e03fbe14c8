"""Test helpers for code built on piton, and for new store backends.

``check_store(store_factory)`` is the conformance suite every ``Store`` backend must
pass::

    from piton.stores.memory import MemoryStore
    from piton.testing import check_store

    async def test_my_store():
        await check_store(MyStore)  # a fresh, empty store per call

It opens the store, runs the named checks below in order against real time (leases of a
few tenths of a second where expiry matters), closes the store, and raises
``AssertionError`` naming the first check that failed. Every check uses its own run ids
and workflow names, so a backend shared with other data still passes, except that the
last check, ``prune``, deletes every finished run older than a fraction of a second.

``FakeClock`` is a clock that moves only when a test says so: give it to a workflow
(``MyFlow(clock=clock)``) and an hour's ``ctx.sleep`` or a day's ``wait_for_event``
time-out passes in no time (``await clock.advance(3600)``, or ``await clock.next()``).

``WorkflowTestRunner(workflow).run(start_event=...)`` runs a workflow to its end and
returns a ``WorkflowTestResult``: the result, the events the run streamed (``collected``),
how many of each type (``event_types``) and the run's context, as llama-index-workflows'
``workflows.testing.WorkflowTestRunner`` does.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from piton._core.status import RunStatus
from piton._runtime import faults
from piton._runtime.clock import FakeClock
from piton._runtime.stuck import recording_stores, stuck_report
from piton.errors import LeaseLost, RunNotFound, TooManyPendingEvents
from piton.stores.base import CommitRequest, RunRecord, Store, is_runnable, may_claim

if TYPE_CHECKING:
    from piton.context import Context
    from piton.events import Event, StartEvent
    from piton.workflow import Workflow

StoreFactory = Callable[[], Store | Awaitable[Store]]

try:
    import pytest
except ImportError:  # pragma: no cover - piton.testing without pytest: no fixture
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(autouse=True)
    def no_stuck_runs(request: Any) -> Any:
        """After every test that creates a store: fail if it holds a stuck run (not final,
        no live owner, no timer, no waiter, no inbox event). Enable it in a conftest.py
        with ``from piton.testing import no_stuck_runs``; opt a test out with
        ``@pytest.mark.allow_stuck_runs``."""
        started = time.time() - 1.0
        with recording_stores() as seen:
            yield
        if request.node.get_closest_marker("allow_stuck_runs") is not None:
            return
        report = stuck_report(list(seen), since=started)
        if report is not None:
            pytest.fail(report, pytrace=False)


def crash_after_commit(n: int) -> None:
    """Fault injection for crash tests: SIGKILL this process right after its ``n``-th
    commit is durable, before the run in memory learns of it (the window between the
    database and the process's own view of the run). For test programs only."""
    if n < 1:
        raise ValueError(f"crash_after_commit({n}): count commits from 1.")
    done = 0

    def hook() -> None:
        nonlocal done
        done += 1
        if done == n:
            os.kill(os.getpid(), signal.SIGKILL)

    faults.add_after_commit(hook)


LEASE = 0.2  # seconds; long enough for a check's calls, short enough to wait out
OTHER = "piton-check-store.invalid/1/1"  # a live owner on another host: only its lease counts
THIRD = "piton-check-store.invalid/2/2"
_SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # makes `piton` importable


async def check_store(store_factory: StoreFactory) -> list[str]:
    """Run the conformance checks on a fresh store; return the names of the checks passed."""
    store = store_factory()
    if inspect.isawaitable(store):
        store = await store
    assert isinstance(store, Store), f"store_factory returned {store!r}, not a Store"
    await store.open()
    await store.open()  # open() is idempotent
    passed = []
    dead_owner = await dead_process_owner()
    try:
        for check in CHECKS:
            name = check.__name__.removeprefix("check_")
            try:
                await check(_Kit(store, name, dead_owner))
            except AssertionError as exc:
                raise AssertionError(f"check_store: check {name!r} failed: {exc}") from exc
            except Exception as exc:
                raise AssertionError(
                    f"check_store: check {name!r} raised {type(exc).__name__}: {exc}"
                ) from exc
            passed.append(name)
    finally:
        await store.close()
    return passed


class _Kit:
    """What one check works with: the store, fresh names, and run builders."""

    def __init__(self, store: Store, check: str, dead_owner: str) -> None:
        self.store, self.dead_owner = store, dead_owner
        tag = uuid.uuid4().hex[:8]
        self.workflow = f"check-{check}-{tag}"
        self._prefix = f"{check}-{tag}"
        self._count = 0

    def run_id(self) -> str:
        self._count += 1
        return f"{self._prefix}-{self._count}"

    async def new_run(
        self,
        *,
        status: RunStatus = "running",
        owner: str | None = OTHER,
        epoch: int = 1,
        lease: float | None = 30.0,
        entries: tuple[str, ...] = ("e1",),
        stream: tuple[str, ...] = (),
        workflow: str | None = None,
        wake_at: float | None = None,
        waiters: int = 0,
    ) -> str:
        run_id = self.run_id()
        record = RunRecord(
            run_id=run_id,
            workflow=workflow or self.workflow,
            status=status,
            owner=owner,
            epoch=epoch,
            lease_until=None if lease is None else time.time() + lease,
            wake_at=wake_at,
            start='{"start": true}',
            waiters=waiters,
        )
        created = await self.store.create(record, list(entries), list(stream))
        assert created, f"create({run_id!r}) of a new run returned {created!r}, expected True"
        return run_id

    async def record(self, run_id: str) -> RunRecord:
        record = await self.store.get(run_id)
        assert record is not None, f"get({run_id!r}) returned None for an existing run"
        return record

    async def finish(self, run_id: str, status: RunStatus = "completed") -> None:
        record = await self.record(run_id)
        await self.store.commit(
            CommitRequest(run_id, record.epoch, record.seq, ["done"], status=status, result='"r"')
        )


async def _raises(error: type[Exception], call: Awaitable[Any], what: str) -> None:
    try:
        result = await call
    except error:
        return
    raise AssertionError(f"{what} returned {result!r}; expected {error.__name__}")


# --- the checks, in the order they run -------------------------------------------------------


async def check_create_get(kit: _Kit) -> None:
    store = kit.store
    run_id = await kit.new_run(entries=("e1", "e2"), stream=("s1",))
    record = await kit.record(run_id)
    assert (record.run_id, record.workflow, record.status) == (run_id, kit.workflow, "running")
    assert (record.owner, record.epoch, record.seq) == (OTHER, 1, 2), record
    assert record.start == '{"start": true}' and record.fingerprint == "{}", record
    assert record.created_at > 0 and record.updated_at >= record.created_at, record
    assert record.inbox == 0 and not record.finished, record
    again = RunRecord(run_id, "another-workflow", "queued")
    assert await store.create(again, ["x"], []) is False, "create of an existing id must be False"
    assert (await kit.record(run_id)).workflow == kit.workflow, "create overwrote an existing run"
    loaded = await store.load(run_id)
    assert loaded.entries == [(1, "e1"), (2, "e2")], loaded.entries
    assert loaded.stream == ["s1"] and loaded.inbox == [], loaded
    assert loaded.snapshot is None and loaded.snapshot_seq == 0, loaded
    missing = kit.run_id()
    assert await store.get(missing) is None, "get of a missing run must return None"
    await _raises(RunNotFound, store.load(missing), "load of a missing run")
    await _raises(RunNotFound, store.claim(missing, OTHER, 1.0), "claim of a missing run")
    await _raises(RunNotFound, store.deliver(missing, "{}"), "deliver to a missing run")
    await _raises(
        RunNotFound, store.commit(CommitRequest(missing, 1, 0)), "commit to a missing run"
    )


async def check_commit(kit: _Kit) -> None:
    store = kit.store
    run_id = await kit.new_run(entries=("e1",))
    odd = 'é "quoted"\n\\ \u2603 ' + "x" * 100_000  # entries are opaque text, kept exactly
    await store.commit(CommitRequest(run_id, 1, 1, ["e2", odd], ["s1"], fingerprint='{"v": 2}'))
    await store.commit(CommitRequest(run_id, 1, 3, [], ["s2", "s3"], wake_at=1234.5))
    await store.commit(CommitRequest(run_id, 1, 3, ["e4"], status="parked", wake_at=99.0))
    loaded = await store.load(run_id)
    assert loaded.entries == [(1, "e1"), (2, "e2"), (3, odd), (4, "e4")], "entries out of order"
    assert loaded.stream == ["s1", "s2", "s3"], loaded.stream
    record = loaded.record
    assert (record.seq, record.status, record.wake_at) == (4, "parked", 99.0), record
    assert record.fingerprint == '{"v": 2}' and record.owner == OTHER, record
    await store.commit(CommitRequest(run_id, 1, 4, ["e5"], status="parked", release=True))
    record = await kit.record(run_id)
    assert record.owner is None and record.lease_until is None, f"release kept owner: {record}"
    done = await kit.new_run()
    await store.commit(CommitRequest(done, 1, 1, ["end"], status="completed", result='"ok"'))
    record = await kit.record(done)
    assert record.finished and record.result == '"ok"' and record.owner is None, record
    assert record.finished_at is not None and record.finished_at >= record.created_at, record
    failed = await kit.new_run()
    await store.commit(CommitRequest(failed, 1, 1, ["end"], status="failed", error='{"e": 1}'))
    record = await kit.record(failed)
    assert (record.status, record.error, record.result) == ("failed", '{"e": 1}', None), record


async def check_commit_fencing(kit: _Kit) -> None:
    store = kit.store
    run_id = await kit.new_run(entries=("e1", "e2"), stream=("s1",))
    before = await store.load(run_id)
    bad = [
        CommitRequest(run_id, 2, 2, ["x"], ["y"], status="completed", result="1"),  # epoch ahead
        CommitRequest(run_id, 0, 2, ["x"], ["y"]),  # epoch behind
        CommitRequest(run_id, 1, 1, ["x"], ["y"]),  # seq behind
        CommitRequest(run_id, 1, 3, ["x"], ["y"]),  # seq ahead
    ]
    for request in bad:
        what = f"commit(epoch={request.epoch}, seq={request.seq}) on a run at epoch 1, seq 2"
        await _raises(LeaseLost, store.commit(request), what)
    after = await store.load(run_id)
    assert after.entries == before.entries and after.stream == before.stream, (
        "a fenced commit wrote"
    )
    assert after.record.seq == 2 and after.record.status == "running", after.record
    await store.commit(CommitRequest(run_id, 1, 2, status="parked", release=True))
    await _raises(LeaseLost, store.commit(CommitRequest(run_id, 1, 2)), "commit after release")
    epoch = await store.claim(run_id, THIRD, 30.0)
    assert epoch == 2, f"claim of a released run returned {epoch!r}, expected 2"
    await _raises(LeaseLost, store.commit(CommitRequest(run_id, 1, 2)), "commit by a stale epoch")
    await store.commit(CommitRequest(run_id, 2, 2, ["e3"]))
    assert (await kit.record(run_id)).seq == 3


async def check_claim(kit: _Kit) -> None:
    store = kit.store
    queued = await kit.new_run(status="queued", owner=None, epoch=0, lease=None, entries=())
    assert await store.claim(queued, OTHER, 30.0) == 1, "claim of an unowned run must give epoch 1"
    record = await kit.record(queued)
    assert (record.owner, record.status, record.epoch) == (OTHER, "running", 1), record
    assert record.lease_until is not None and record.lease_until > time.time() + 20, record
    assert await store.claim(queued, THIRD, 30.0) is None, "claimed a run a live owner holds"
    assert (await kit.record(queued)).owner == OTHER, "a refused claim changed the owner"
    assert await store.claim(queued, OTHER, 30.0) == 2, "the owner itself may claim again"
    mine = await kit.new_run(owner=store.owner)  # this process: alive
    assert await store.claim(mine, THIRD, 30.0) is None, "claimed a run of a live local process"
    short = await kit.new_run(lease=LEASE)
    assert await store.claim(short, THIRD, 30.0) is None, "claimed before the lease expired"
    await asyncio.sleep(LEASE * 1.5)
    assert await store.claim(short, THIRD, 30.0) == 2, "an expired lease must be claimable"
    dead = await kit.new_run(owner=kit.dead_owner, lease=3600.0)
    assert await store.claim(dead, THIRD, 30.0) == 2, "a dead local owner must be claimable at once"
    finished = await kit.new_run()
    await kit.finish(finished)
    assert await store.claim(finished, THIRD, 30.0) is None, "claimed a finished run"


async def check_renew(kit: _Kit) -> None:
    store = kit.store
    first, second = await kit.new_run(lease=LEASE), await kit.new_run(lease=LEASE)
    missing = kit.run_id()
    lost = await store.renew([(first, 1), (second, 7), (missing, 1)], OTHER, 30.0)
    assert sorted(lost) == sorted([second, missing]), f"renew reported lost {lost!r}"
    await asyncio.sleep(LEASE * 1.5)
    record = await kit.record(first)
    assert record.lease_until is not None and record.lease_until > time.time() + 20, record
    assert await store.claim(first, THIRD, 30.0) is None, "renewed lease was claimable"
    assert await store.renew([(first, 1)], THIRD, 30.0) == [first], "renewed another's lease"
    assert await store.claim(second, THIRD, 30.0) == 2, "an unrenewed lease must expire"
    assert await store.renew([(second, 1)], OTHER, 30.0) == [second], "old owner renewed"


async def check_inbox(kit: _Kit) -> None:
    store = kit.store
    run_id = await kit.new_run()
    other = await kit.new_run()
    await store.deliver(run_id, '{"a": 1}')
    await store.deliver(other, '{"z": 0}')
    await store.deliver(run_id, '{"b": 2}', "step_b")
    assert (await kit.record(run_id)).inbox == 2, "record.inbox must count the delivered events"
    inbox = (await store.load(run_id)).inbox
    assert [(event, step) for _, event, step in inbox] == [
        ('{"a": 1}', None),
        ('{"b": 2}', "step_b"),
    ]
    assert inbox[0][0] < inbox[1][0], f"inbox ids must increase: {inbox}"
    other_id = (await store.load(other)).inbox[0][0]
    assert other_id not in (inbox[0][0], inbox[1][0]), "inbox ids must be unique across runs"
    await store.commit(CommitRequest(run_id, 1, 1, ["took a"], inbox_done=[inbox[0][0]]))
    loaded = await store.load(run_id)
    assert loaded.inbox == [inbox[1]] and loaded.record.inbox == 1, loaded
    await store.commit(CommitRequest(run_id, 1, 2, ["took b"], inbox_done=[inbox[1][0], other_id]))
    loaded = await store.load(run_id)
    assert loaded.inbox == [] and loaded.record.inbox == 0, loaded
    assert len((await store.load(other)).inbox) == 1, "inbox_done removed another run's event"


async def check_snapshot(kit: _Kit) -> None:
    store = kit.store
    run_id = await kit.new_run(entries=("e1", "e2"))
    await store.commit(CommitRequest(run_id, 1, 2, ["e3"]))
    await store.commit(CommitRequest(run_id, 1, 3, ["e4"], snapshot="S4"))
    loaded = await store.load(run_id)
    assert (loaded.snapshot, loaded.snapshot_seq, loaded.entries) == ("S4", 4, []), loaded
    await store.commit(CommitRequest(run_id, 1, 4, ["e5", "e6"]))
    loaded = await store.load(run_id)
    assert loaded.snapshot == "S4" and loaded.entries == [(5, "e5"), (6, "e6")], loaded
    await store.commit(CommitRequest(run_id, 1, 6, ["e7"], snapshot="S7"))
    await store.commit(CommitRequest(run_id, 1, 7, ["e8"]))
    loaded = await store.load(run_id)
    assert (loaded.snapshot, loaded.snapshot_seq) == ("S7", 7), loaded
    assert loaded.entries == [(8, "e8")] and loaded.record.seq == 8, loaded


async def check_runnable(kit: _Kit) -> None:
    store, now = kit.store, time.time()
    other_workflow = kit.workflow + "-other"
    expected = {
        await kit.new_run(status="queued", owner=None, epoch=0, lease=None),
        await kit.new_run(status="parked", owner=None, lease=None, wake_at=now - 1),
        await kit.new_run(status="running", lease=-1.0),  # expired lease
        await kit.new_run(status="running", owner=kit.dead_owner),
    }
    with_inbox = await kit.new_run(status="parked", owner=None, lease=None)
    await store.deliver(with_inbox, '{"wake": true}')
    expected.add(with_inbox)
    not_expected = {
        await kit.new_run(status="parked", owner=None, lease=None, wake_at=now + 3600),
        await kit.new_run(status="parked", owner=None, lease=None),
        await kit.new_run(status="running"),  # a live owner on another host
        await kit.new_run(status="running", owner=store.owner),  # this process
    }
    finished = await kit.new_run(lease=-1.0)
    await kit.finish(finished, "cancelled")
    foreign = await kit.new_run(status="queued", owner=None, lease=None, workflow=other_workflow)
    found = {r.run_id for r in await store.runnable([kit.workflow], time.time())}
    assert found == expected, (
        f"runnable() missed {sorted(expected - found)} and wrongly gave {sorted(found - expected)}"
    )
    assert finished not in found and not (not_expected & found)
    both = {r.run_id for r in await store.runnable([kit.workflow, other_workflow], time.time())}
    assert both == expected | {foreign}, f"runnable() over two workflows gave {sorted(both)}"
    limited = await store.runnable([kit.workflow], time.time(), limit=2)
    assert len(limited) == 2 and {r.run_id for r in limited} <= expected, limited
    assert await store.runnable([kit.workflow + "-none"], time.time()) == []


async def check_claim_runnable(kit: _Kit) -> None:
    store, now = kit.store, time.time()
    claimer = "piton-check-store.invalid/3/3"

    def queued(**options: Any) -> Awaitable[str]:
        return kit.new_run(status="queued", owner=None, epoch=0, lease=None, **options)

    def parked(**options: Any) -> Awaitable[str]:
        return kit.new_run(status="parked", owner=None, lease=None, waiters=1, **options)

    with_inbox = await parked()
    await store.deliver(with_inbox, '{"wake": true}')
    runnable = {
        await queued(),
        await queued(),
        await parked(wake_at=now - 1),
        with_inbox,
        await kit.new_run(lease=-1.0),  # expired lease
        await kit.new_run(owner=None, lease=None),
        await kit.new_run(owner=kit.dead_owner, lease=3600.0),
    }
    later = await parked(wake_at=now + 3600)
    left = {
        later,
        await parked(),
        await kit.new_run(),  # a live owner on another host, its lease unexpired
        await kit.new_run(owner=store.owner),  # this process
        await queued(workflow=kit.workflow + "-other"),
    }
    finished = await kit.new_run(lease=-1.0)
    await kit.finish(finished)
    left.add(finished)
    before = await store.get_many([*runnable, *left])
    assert await store.claim_runnable([kit.workflow], now, claimer, 30.0, 0) == []
    assert await store.claim_runnable([], now, claimer, 30.0, 10) == []
    first = await store.claim_runnable([kit.workflow], time.time(), claimer, 30.0, 3)
    assert len(first) == 3, f"claim_runnable(limit=3) took {len(first)} runs"
    rest = await store.claim_runnable([kit.workflow], time.time(), claimer, 30.0, 100)
    taken = [*first, *rest]
    ids = [r.run_id for r in taken]
    assert len(ids) == len(set(ids)) and set(ids) == runnable, (
        f"claim_runnable missed {sorted(runnable - set(ids))} and wrongly took "
        f"{sorted(set(ids) - runnable)}"
    )
    for record in taken:
        stored = await kit.record(record.run_id)
        assert record == stored, f"claim_runnable returned {record}, the store holds {stored}"
        assert record.epoch == before[record.run_id].epoch + 1, f"epoch not raised: {record}"
        assert (record.owner, record.status) == (claimer, "running"), record
        assert record.lease_until is not None and record.lease_until > time.time() + 20, record
    for run_id in left:
        assert await kit.record(run_id) == before[run_id], f"claim_runnable changed {run_id}"
    assert await store.claim_runnable([kit.workflow], time.time(), claimer, 30.0, 100) == []
    # run time comes from the caller (a fake clock): a later `now` makes the deadline due
    due = await store.claim_runnable([kit.workflow], now + 7200, THIRD, 30.0, 100)
    assert [r.run_id for r in due] == [later], f"a run due at run time `now` gave {due}"


async def check_claim_runnable_race(kit: _Kit) -> None:
    store = kit.store
    runs = set(
        await asyncio.gather(
            *(kit.new_run(status="queued", owner=None, epoch=0, lease=None) for _ in range(20))
        )
    )
    both = await asyncio.gather(
        store.claim_runnable([kit.workflow], time.time(), OTHER, 30.0, 15),
        store.claim_runnable([kit.workflow], time.time(), THIRD, 30.0, 15),
    )
    a, b = ({r.run_id for r in records} for records in both)
    assert len(a) <= 15 and len(b) <= 15, f"a claim took more than its limit: {len(a)}, {len(b)}"
    assert not a & b, f"two claimers both took {sorted(a & b)}"
    last = await store.claim_runnable(
        [kit.workflow], time.time(), "piton-check-store.invalid/4/4", 30.0, 100
    )
    c = {r.run_id for r in last}
    assert not c & (a | b) and a | b | c == runs, "the racing claims lost or doubled runs"
    for record in await store.list_runs(workflow=kit.workflow, limit=100):
        assert record.epoch == 1, f"a run was claimed twice: {record}"


async def check_get_many(kit: _Kit) -> None:
    store = kit.store
    runs = await asyncio.gather(*(kit.new_run() for _ in range(5)))
    missing = [kit.run_id() for _ in range(2500)]  # more ids than one query takes
    found = await store.get_many([*missing[:1200], *runs, runs[0], *missing[1200:]])
    assert set(found) == set(runs), f"get_many gave {sorted(found)}, expected {sorted(runs)}"
    for run_id in runs:
        assert found[run_id] == await kit.record(run_id), f"get_many({run_id!r}) != get()"
    assert await store.get_many([]) == {} and await store.get_many(missing[:3]) == {}


async def check_list_runs(kit: _Kit) -> None:
    store = kit.store
    second_workflow = kit.workflow + "-b"
    a1 = await kit.new_run()
    await asyncio.sleep(0.002)
    a2 = await kit.new_run(status="queued", owner=None, lease=None)
    await asyncio.sleep(0.002)
    b1 = await kit.new_run(workflow=second_workflow)
    await kit.finish(a1)
    ids = [r.run_id for r in await store.list_runs(workflow=kit.workflow)]
    assert ids == [a2, a1], f"list_runs(workflow=...) gave {ids}, expected newest first"
    ids = [r.run_id for r in await store.list_runs(workflow=kit.workflow, status="completed")]
    assert ids == [a1], ids
    queued = {r.run_id for r in await store.list_runs(status="queued", limit=10_000)}
    assert a2 in queued and a1 not in queued and b1 not in queued, queued
    assert [r.run_id for r in await store.list_runs(workflow=second_workflow)] == [b1]
    assert len(await store.list_runs(workflow=kit.workflow, limit=1)) == 1
    everything = await store.list_runs(limit=10_000)
    assert {a1, a2, b1} <= {r.run_id for r in everything}, "list_runs() without filters"


async def check_waiters(kit: _Kit) -> None:
    store = kit.store
    run_id = await kit.new_run(waiters=2)
    assert (await kit.record(run_id)).waiters == 2, "create must keep record.waiters"
    assert (await store.load(run_id)).record.waiters == 2, "load must return waiters"
    listed = {r.run_id: r.waiters for r in await store.list_runs(workflow=kit.workflow)}
    assert listed == {run_id: 2}, f"list_runs gave waiters {listed}"
    # a plain commit leaves the row's waiters alone, whatever the request says
    plain = CommitRequest(run_id, 1, 1, ["e2"], waiters=9)
    assert plain.plain
    await store.commit(plain)
    assert (await kit.record(run_id)).waiters == 2, "a plain commit changed waiters"
    await store.commit(CommitRequest(run_id, 1, 2, ["e3"], wake_at=time.time() + 3600, waiters=3))
    assert (await kit.record(run_id)).waiters == 3, "a non-plain commit must write waiters"
    await store.commit(CommitRequest(run_id, 1, 3, ["e4"], status="parked", release=True))
    record = await kit.record(run_id)
    assert (record.status, record.waiters) == ("parked", 0), f"parking with 0 waiters: {record}"
    queued = await kit.new_run(status="queued", owner=None, epoch=0, lease=None, waiters=1)
    found = {r.run_id: r.waiters for r in await store.runnable([kit.workflow], time.time())}
    assert found == {queued: 1}, f"runnable gave waiters {found}"


async def check_release(kit: _Kit) -> None:
    store = kit.store
    running = await kit.new_run()
    parked = await kit.new_run(status="parked", wake_at=time.time() + 3600, waiters=1)
    not_mine = await kit.new_run(owner=THIRD)
    old_epoch = await kit.new_run(epoch=3)
    finished = await kit.new_run(status="completed", owner=OTHER)  # as a store may hold it
    before = {run_id: await kit.record(run_id) for run_id in (running, not_mine, old_epoch)}
    await store.release([], OTHER)  # nothing to release: no error
    pairs = [(running, 1), (parked, 1), (not_mine, 1), (old_epoch, 2), (finished, 1)]
    await store.release([*pairs, (kit.run_id(), 1)], OTHER)  # a missing run is left alone
    for run_id, status in ((running, "running"), (parked, "parked")):
        record = await kit.record(run_id)
        assert (record.owner, record.lease_until) == (None, None), f"not released: {record}"
        assert (record.status, record.epoch) == (status, 1), f"release changed more: {record}"
    assert (await kit.record(running)).updated_at >= before[running].updated_at
    for run_id in (not_mine, old_epoch):
        record = await kit.record(run_id)
        assert (record.owner, record.epoch) == (before[run_id].owner, before[run_id].epoch), (
            f"release of a run {OTHER} does not hold at that epoch changed it: {record}"
        )
        assert record.lease_until == before[run_id].lease_until, record
    record = await kit.record(finished)
    assert record.owner == OTHER and record.status == "completed", f"released a final run: {record}"
    # free at once: runnable, claimable by another owner with the next epoch, and fenced
    now = time.time()
    record = await kit.record(running)
    assert is_runnable(record, now) and may_claim(record, THIRD, now), record
    found = {r.run_id for r in await store.runnable([kit.workflow], now)}
    assert running in found, f"a released running run is not runnable: {sorted(found)}"
    late = CommitRequest(running, 1, 1, ["x"])
    await _raises(LeaseLost, store.commit(late), "commit by the owner after its release")
    assert await store.claim(running, THIRD, 30.0) == 2, "a released run must be claimable at once"
    assert await store.claim(parked, THIRD, 30.0) == 2, "a released parked run must be claimable"
    assert await store.claim(not_mine, OTHER, 30.0) is None, "release freed another's run"


async def check_stuck(kit: _Kit) -> None:
    store = kit.store
    other_workflow = kit.workflow + "-other"

    def parked(**options: Any) -> Awaitable[str]:
        return kit.new_run(status="parked", owner=None, lease=None, **options)

    stuck = [await parked(), await parked()]
    foreign = await parked(workflow=other_workflow)
    with_inbox = await parked()
    await store.deliver(with_inbox, "{}")
    moving = {
        with_inbox,
        await parked(wake_at=time.time() + 3600),
        await parked(waiters=1),
        await kit.new_run(status="running", owner=None, lease=None),
        await kit.new_run(status="queued", owner=None, epoch=0, lease=None),
        await kit.new_run(),
    }
    for status in ("completed", "failed", "cancelled", "timed_out"):
        done = await kit.new_run()
        await kit.finish(done, status)
        moving.add(done)
    # a run parked by a commit with no waiter becomes stuck; an event moves it again
    parking = await kit.new_run()
    await store.commit(CommitRequest(parking, 1, 1, ["park"], status="parked", release=True))
    stuck.append(parking)
    found = [r.run_id for r in await store.stuck([kit.workflow])]
    assert found == stuck, f"stuck() gave {found}, expected {stuck} (oldest first)"
    both = {r.run_id for r in await store.stuck([kit.workflow, other_workflow])}
    assert both == {*stuck, foreign}, f"stuck() over two workflows gave {sorted(both)}"
    everything = {r.run_id for r in await store.stuck(limit=100_000)}
    assert {*stuck, foreign} <= everything and not (moving & everything), (
        f"stuck() of every workflow wrongly gave {sorted(moving & everything)}"
    )
    limited = await store.stuck([kit.workflow], limit=1)
    assert [r.run_id for r in limited] == stuck[:1], f"stuck(limit=1) gave {limited}"
    assert limited[0].status == "parked" and limited[0].waiters == 0, limited[0]
    assert await store.stuck([kit.workflow + "-none"]) == [] and await store.stuck([]) == []
    await store.deliver(parking, "{}")
    assert parking not in {r.run_id for r in await store.stuck([kit.workflow])}, (
        "a run with an event in its inbox is not stuck"
    )


async def check_deliver_limit(kit: _Kit) -> None:
    store = kit.store
    run_id = await kit.new_run()
    await store.deliver(run_id, '{"n": 1}', limit=2)
    await store.deliver(run_id, '{"n": 2}', limit=2)
    try:
        await store.deliver(run_id, '{"n": 3}', limit=2)
    except TooManyPendingEvents as exc:
        assert f"'{run_id}'" in str(exc) and "2" in str(exc), f"the refusal says: {exc}"
    else:
        raise AssertionError("deliver(limit=2) to a run holding 2 events was accepted")
    loaded = await store.load(run_id)
    assert len(loaded.inbox) == 2 and loaded.record.inbox == 2, "a refused event was kept"
    await store.deliver(run_id, '{"n": 3}')  # no limit: kept
    await _raises(TooManyPendingEvents, store.deliver(run_id, "{}", limit=3), "deliver at limit")
    first = (await store.load(run_id)).inbox[0][0]
    await store.commit(CommitRequest(run_id, 1, 1, ["took one"], inbox_done=[first]))
    await store.deliver(run_id, '{"n": 4}', limit=3)  # below the limit again
    assert (await kit.record(run_id)).inbox == 3
    missing = store.deliver(kit.run_id(), "{}", limit=5)
    await _raises(RunNotFound, missing, "deliver(limit=5) to a missing run")
    # racing deliveries: the check and the insert are one atomic step
    racer = await kit.new_run()
    results = await asyncio.gather(
        *(store.deliver(racer, f'{{"i": {i}}}', limit=5) for i in range(12)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, TooManyPendingEvents)]
    assert results.count(None) == 5 and len(refused) == 7, f"racing deliveries gave {results}"
    loaded = await store.load(racer)
    assert len(loaded.inbox) == 5 and loaded.record.inbox == 5, loaded


async def check_concurrent_commits(kit: _Kit) -> None:
    store = kit.store
    runs = await asyncio.gather(*(kit.new_run() for _ in range(40)))

    async def advance(run_id: str) -> None:
        for seq in range(1, 6):
            await store.commit(CommitRequest(run_id, 1, seq, [f"{run_id}:{seq + 1}"], [f"s{seq}"]))

    await asyncio.gather(*(advance(run_id) for run_id in runs))
    for run_id in runs:
        loaded = await store.load(run_id)
        assert [seq for seq, _ in loaded.entries] == list(range(1, 7)), loaded.entries
        assert loaded.entries[-1][1] == f"{run_id}:6" and len(loaded.stream) == 5, loaded
    # racing commits at the same seq: exactly one wins, the rest are fenced
    racer = runs[0]
    results = await asyncio.gather(
        *(store.commit(CommitRequest(racer, 1, 6, [f"race {i}"])) for i in range(10)),
        return_exceptions=True,
    )
    lost = [r for r in results if isinstance(r, LeaseLost)]
    assert len(lost) == 9 and results.count(None) == 1, f"racing commits gave {results}"
    assert (await kit.record(racer)).seq == 7


async def check_prune(kit: _Kit) -> None:
    store = kit.store
    old = await kit.new_run()
    await store.deliver(old, "{}")
    await kit.finish(old, "failed")
    await asyncio.sleep(LEASE * 1.5)
    young = await kit.new_run()
    await kit.finish(young)
    unfinished = await kit.new_run(lease=-1.0)
    removed = await store.prune(LEASE)
    assert removed >= 1, f"prune() returned {removed}, expected at least 1"
    assert await store.get(old) is None, "prune() kept a finished run older than the cutoff"
    await _raises(RunNotFound, store.load(old), "load of a pruned run")
    assert await store.get(young) is not None, "prune() removed a run finished just now"
    assert await store.get(unfinished) is not None, "prune() removed an unfinished run"
    assert (await store.load(young)).entries[-1] == (2, "done")


CHECKS: tuple[Callable[[_Kit], Awaitable[None]], ...] = (
    check_create_get,
    check_commit,
    check_commit_fencing,
    check_claim,
    check_renew,
    check_inbox,
    check_snapshot,
    check_runnable,
    check_claim_runnable,
    check_claim_runnable_race,
    check_get_many,
    check_list_runs,
    check_waiters,
    check_release,
    check_stuck,
    check_deliver_limit,
    check_concurrent_commits,
    check_prune,
)


async def dead_process_owner() -> str:
    """The owner string of a process on this host that has exited."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")])),
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from piton.stores.base import process_owner; print(process_owner())",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    out, _ = await child.communicate()
    assert child.returncode == 0, "could not start a python subprocess"
    return out.decode().strip()


@dataclass
class WorkflowTestResult:
    """What ``WorkflowTestRunner.run`` saw of one run.

    ``collected``: the events the run streamed, in order, its ``StopEvent`` last (less the
    excluded types); ``event_types``: how many of each type ``collected`` holds;
    ``result``: what ``await handler`` returned; ``ctx``: the run's context.
    """

    collected: list[Event]
    event_types: dict[type[Event], int]
    result: Any
    ctx: Context[Any]


class WorkflowTestRunner:
    """Runs a workflow end to end in a test and collects the events it streams."""

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow

    async def run(
        self,
        start_event: StartEvent | None = None,
        ctx: Context[Any] | None = None,
        expose_internal: bool = True,
        exclude_events: list[type[Event]] | None = None,
    ) -> WorkflowTestResult:
        """Run the workflow to its end and return what it streamed and returned.

        ``start_event`` defaults to the workflow's start event type built without fields.
        ``exclude_events`` leaves out events of exactly those types (not subclasses).
        ``expose_internal`` is accepted for llama-index-workflows compatibility; piton
        publishes no internal events (no ``StepStateChanged``), so it changes nothing.
        A run that fails raises its error here, as ``await handler`` does.
        """
        handler = self._workflow.run(ctx=ctx, start_event=start_event)
        excluded = tuple(exclude_events or ())
        collected: list[Event] = []
        async for event in handler.stream_events(expose_internal=expose_internal):
            if type(event) not in excluded:
                collected.append(event)
        result = await handler
        counts: dict[type[Event], int] = dict(Counter(type(ev) for ev in collected))
        return WorkflowTestResult(
            collected=collected, event_types=counts, result=result, ctx=handler.ctx
        )


__all__ = [
    "FakeClock",
    "WorkflowTestResult",
    "WorkflowTestRunner",
    "check_store",
    "crash_after_commit",
    "dead_process_owner",
    "no_stuck_runs",
]
