"""Durable runs: idempotent run ids, parking, sleep, recovery, serde, compaction.

Every test runs on each backend (memory, sqlite, postgres, redis) through the ``store_url``
fixture (tests/conftest.py), in a store of its own. "Another process" is played in this
process by another store object on the same URL (``open_store(store_url)``), or by an
event loop of its own, in a thread, that ends (``_park_and_leave``). The tests that spawn
real processes skip memory, whose runs live in one process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from piton import (
    Context,
    ContextSerdeError,
    Event,
    HumanResponseEvent,
    IncompatibleWorkflowChange,
    InputRequiredEvent,
    JsonSerializer,
    StartEvent,
    StopEvent,
    Worker,
    Workflow,
    WorkflowConfigurationError,
    WorkflowHandler,
    step,
)
from piton.stores import RunRecord, Store, open_store
from piton.testing import FakeClock

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Boom(Exception):
    pass


class Mid(Event):
    n: int


def _url_for_a_process(store_url: str | Store) -> str:
    """The URL another process opens; a memory store cannot be shared with one."""
    if not isinstance(store_url, str):
        pytest.skip("a memory store lives in one process: a child process cannot share it")
    return store_url


async def _wait_status(
    store: Store, run_id: str, statuses: set[str], timeout: float = 10, poll: float = 0.05
) -> RunRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = await store.get(run_id)
        if record is not None and record.status in statuses:
            return record
        await asyncio.sleep(poll)
    record = await store.get(run_id)
    raise AssertionError(f"run {run_id} did not reach {statuses}: {record}")


async def _in_a_loop_that_ends(main: Callable[[], Awaitable[None]], limit: float = 30) -> None:
    """Run ``main()`` with ``asyncio.run`` in a thread of its own: a process that exits when
    ``main`` returns (``asyncio.run`` cancels what is left, then closes the loop). Fails if
    that loop has not ended ``limit`` seconds later; the thread's tasks are then cancelled
    again until it ends, so that it does not go on beside the next tests."""
    failures: list[BaseException] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def recorded() -> None:
        loops.append(asyncio.get_running_loop())
        await main()

    def target() -> None:
        try:
            asyncio.run(recorded())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            failures.append(exc)

    def cancel_all(loop: asyncio.AbstractEventLoop) -> None:
        for task in asyncio.all_tasks(loop):
            task.cancel()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, limit)
    if failures:
        raise failures[0]
    if not thread.is_alive():
        return
    for _ in range(50):
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loops[0].call_soon_threadsafe(cancel_all, loops[0])
        await asyncio.to_thread(thread.join, 0.2)
        if not thread.is_alive():
            break
    raise AssertionError(
        f"the event loop did not end within {limit} s of its main coroutine returning"
        f"{'' if not thread.is_alive() else ', nor when cancelled again'}: a task of a "
        "durable run ignored the cancellation asyncio.run sends when a process leaves "
        "(DESIGN.md section 2, promise 12)"
    )


async def _park_and_leave(
    store_url: str | Store,
    run_id: str,
    start: Callable[[], WorkflowHandler],
    then: Callable[[WorkflowHandler], Awaitable[None]] | None = None,
) -> None:
    """Another process starts a run with ``start()``, waits until the run is parked (after
    ``then(handler)``, if given), stops listening to it (``handler.cancel()``, as
    ``asyncio.wait_for`` does on a time-out) and exits. The run stays parked in the store,
    and nothing in this process listens for it."""

    async def park() -> None:
        handler = start()
        if then is not None:
            await then(handler)
        reader = open_store(store_url)
        try:
            await _wait_status(reader, run_id, {"parked"})
        finally:
            await reader.close()
        handler.cancel()
        await asyncio.sleep(0.05)  # the run's driver lets go of it; then the loop ends

    await _in_a_loop_that_ends(park)


# -- run ids are idempotency keys ----------------------------------------------------------


async def test_second_run_returns_stored_result_without_rerunning(
    store_url: str | Store,
) -> None:
    calls = {"a": 0, "b": 0}

    class W(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> Mid:
            calls["a"] += 1
            return Mid(n=sum(ev.ids))

        @step
        async def b(self, ev: Mid, ctx: Context) -> StopEvent:
            calls["b"] += 1
            return StopEvent(result=ev.n * 10)

    w = W(store=store_url)
    assert await w.run(run_id="batch-7", ids=[1, 2, 3]) == 60
    assert calls == {"a": 1, "b": 1}
    assert await w.run(run_id="batch-7") == 60
    w2 = W(store=open_store(store_url))  # another "process"
    assert await w2.run(run_id="batch-7") == 60
    assert calls == {"a": 1, "b": 1}
    record = await w2.store.get("batch-7")  # type: ignore[union-attr]
    assert record is not None and record.status == "completed"


async def test_failed_run_reraises_its_stored_error(store_url: str | Store) -> None:
    calls = 0

    class W(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> StopEvent:
            nonlocal calls
            calls += 1
            raise Boom("no luck")

    w = W(store=store_url)
    with pytest.raises(Boom, match="no luck"):
        await w.run(run_id="f1")
    with pytest.raises(Boom, match="no luck"):
        await W(store=open_store(store_url)).run(run_id="f1")
    assert calls == 1
    record = await w.store.get("f1")  # type: ignore[union-attr]
    assert record is not None and record.status == "failed"


async def test_run_without_run_id_gets_one(store_url: str | Store) -> None:
    class W(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> StopEvent:
            return StopEvent(result="ok")

    w = W(store=store_url)
    handler = w.run()
    assert await handler == "ok"
    assert isinstance(handler.run_id, str) and handler.run_id
    record = await w.store.get(handler.run_id)  # type: ignore[union-attr]
    assert record is not None and record.status == "completed"


# -- parking: human in the loop, sleep ------------------------------------------------------


class Ask(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(
            HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="Name?")
        )
        return StopEvent(result=f"hi {answer.response}")


async def test_hitl_run_parks_and_another_instance_wakes_it(store_url: str | Store) -> None:
    asked: list[Event] = []

    async def until_asked(handler: WorkflowHandler) -> None:
        async for ev in handler.stream_events():
            if isinstance(ev, InputRequiredEvent):
                asked.append(ev)
                break

    await _park_and_leave(
        store_url, "h1", lambda: Ask(store=store_url).run(run_id="h1"), until_asked
    )
    assert len(asked) == 1
    store = open_store(store_url)
    record = await store.get("h1")
    assert record is not None and record.status == "parked"

    w2 = Ask(store=store)  # a new instance: another process
    h2 = w2.run(run_id="h1")
    await h2.send_event(HumanResponseEvent(response="Ada"))
    assert await asyncio.wait_for(h2, 10) == "hi Ada"
    record = await store.get("h1")
    assert record is not None and record.status == "completed"


async def test_a_process_ends_while_its_run_is_parked(store_url: str | Store) -> None:
    """Promise 12: a script streams a run's events until it asks for input, then returns
    from its main coroutine while the run is parked (its driver still listening for a
    wake-up). The process ends at once and the run stays parked. A few times over: where
    the loop's end finds the driver matters."""
    for n in range(5):
        run_id = f"leave-{n}"

        async def main(run_id: str = run_id) -> None:
            w = Ask(store=store_url)
            handler = w.run(run_id=run_id)
            async for ev in handler.stream_events():
                if isinstance(ev, InputRequiredEvent):
                    break
            await _wait_status(w.store, run_id, {"parked"}, poll=0.005)  # type: ignore[arg-type]

        # redis-py can swallow the cancellation asyncio.run sends to the parked run's
        # driver while it awaits a reply (redis/redis-py#2028): the driver honours it
        await _in_a_loop_that_ends(main, limit=5)
    store = open_store(store_url)
    for n in range(5):
        record = await store.get(f"leave-{n}")
        assert record is not None and record.status == "parked" and record.owner is None


async def test_sleep_parks_and_wakes_at_its_deadline(store_url: str | Store) -> None:
    runs = 0

    class W(Workflow):
        @step
        async def nap(self, ev: StartEvent, ctx: Context) -> StopEvent:
            nonlocal runs
            runs += 1
            await ctx.sleep(0.8)
            return StopEvent(result="rested")

    w = W(store=store_url)
    store = open_store(store_url)
    start = time.monotonic()
    handler = w.run(run_id="s1")
    record = await _wait_status(store, "s1", {"parked"}, timeout=5)
    assert record.wake_at is not None
    assert await asyncio.wait_for(handler, 10) == "rested"
    assert time.monotonic() - start >= 0.75
    assert runs == 2  # the step runs again from the top after the sleep


class Half2(Event):
    n: int


async def test_strict_durability_starts_a_step_only_after_its_input_is_committed(
    store_url: str | Store,
) -> None:
    """Each step looks in the store (through a store object of its own) for the commit
    that queued it."""
    seen: list[int] = []
    reader = open_store(store_url)

    async def committed_steps() -> int:
        loaded = await reader.load("c1")
        return sum('"k":"StepDone"' in entry for _, entry in loaded.entries)

    class Chain(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> Mid:
            seen.append(await committed_steps())
            return Mid(n=1)

        @step
        async def b(self, ev: Mid, ctx: Context) -> Half2:
            seen.append(await committed_steps())
            return Half2(n=ev.n + 1)

        @step
        async def c(self, ev: Half2, ctx: Context) -> StopEvent:
            seen.append(await committed_steps())
            return StopEvent(result=ev.n)

    assert await Chain(store=store_url, durability="strict").run(run_id="c1") == 2
    assert seen == [0, 1, 2]
    with pytest.raises(WorkflowConfigurationError, match="durability"):
        Chain(store=store_url, durability="eventual")


async def test_caller_timing_out_leaves_the_run_going(store_url: str | Store) -> None:
    """asyncio.wait_for cancels the handler on timeout; a durable run is not cancelled."""
    gate = asyncio.Event()

    class W(Workflow):
        @step
        async def slow(self, ev: StartEvent, ctx: Context) -> Mid:
            await gate.wait()
            return Mid(n=1)

        @step
        async def ask(self, ev: Mid, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(HumanResponseEvent)
            return StopEvent(result=answer.response)

    store = open_store(store_url)
    w = W(store=store)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(w.run(run_id="t1"), 0.2)
    record = await store.get("t1")
    assert record is not None and record.status == "running"
    gate.set()  # the step goes on in this process, then the run parks
    record = await _wait_status(store, "t1", {"parked"})
    assert record.error is None
    handler = w.run(run_id="t1")
    await handler.send_event(HumanResponseEvent(response="yes"))
    assert await asyncio.wait_for(handler, 10) == "yes"


async def test_two_callers_starting_one_run_id_run_it_once(store_url: str | Store) -> None:
    """Both create the run at once; one wins, the other attaches and gets the same result."""
    calls = 0

    class Once(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return StopEvent(result=ev.n)

    first = Once(store=open_store(store_url)).run(run_id="same", n=1)
    second = Once(store=open_store(store_url)).run(run_id="same", n=2)
    results = await asyncio.wait_for(asyncio.gather(first, second), 15)
    assert results in ([1, 1], [2, 2])
    assert calls == 1


async def test_an_event_delivered_by_another_process_reaches_a_running_run(
    store_url: str | Store,
) -> None:
    """The run is busy (not parked), so the event waits in its inbox until the owner's
    lease keeper picks it up, once."""
    answers: list[str] = []

    class Busy(Workflow):
        @step
        async def grind(self, ev: StartEvent, ctx: Context) -> Mid:
            await asyncio.sleep(3)
            return Mid(n=0)

        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(HumanResponseEvent)
            answers.append(answer.response)
            return StopEvent(result=answer.response)

        @step
        async def after(self, ev: Mid, ctx: Context) -> None:
            return None

    store = open_store(store_url)
    started = time.monotonic()
    handler = Busy(store=store).run(run_id="busy")
    await _wait_status(store, "busy", {"running"})
    await asyncio.sleep(0.2)
    other = open_store(store_url)  # stands for another process's connection
    text = JsonSerializer().dumps(HumanResponseEvent(response="hi"), "event")
    await other.deliver("busy", text, None)
    assert await asyncio.wait_for(handler, 10) == "hi"
    assert time.monotonic() - started < 2.5  # not after the busy step
    assert answers == ["hi"]
    record = await other.get("busy")
    assert record is not None and record.inbox == 0
    await other.close()


async def test_no_lease_renewal_before_a_new_run_is_created(store_url: str | Store) -> None:
    """A renewal that came while the creating commit was on its way found no row, and
    the run failed with LeaseLost; the keeper now waits for the row."""
    store = open_store(store_url)
    create = store.create

    async def slow_create(
        record: Any, entries: list[str], stream: list[str], *, snapshot: str | None = None
    ) -> bool:
        await asyncio.sleep(0.3)  # several renewal intervals
        return await create(record, entries, stream, snapshot=snapshot)

    store.create = slow_create  # type: ignore[method-assign]

    class W(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await asyncio.sleep(0.2)  # and renewals while it runs, once it exists
            return StopEvent(result="ok")

    store.lease = 0.15  # renewed every 0.05 s
    assert await asyncio.wait_for(W(store=store).run(run_id="slow"), 10) == "ok"


@pytest.mark.parametrize("durability", ["fast", "strict"])
async def test_a_process_that_lost_its_lease_stops_working_on_the_run(
    store_url: str | Store, durability: str
) -> None:
    """Another process takes the run over (the lease ran out); the old owner's next
    commit fails with LeaseLost, it stops, and nothing it did after is in the journal.
    In fast mode the next step may already have started on the uncommitted event."""
    from piton import LeaseLost

    gate = asyncio.Event()
    after: list[str] = []

    class W(Workflow):
        @step
        async def long(self, ev: StartEvent, ctx: Context) -> Mid:
            await gate.wait()
            return Mid(n=1)

        @step
        async def next(self, ev: Mid, ctx: Context) -> StopEvent:
            after.append("next")
            return StopEvent(result="done")

    store = open_store(store_url)

    async def stalled_renew(runs: list[tuple[str, int]], owner: str, lease: float) -> list[str]:
        return []  # a stalled process (a long pause, a partition): its lease runs out unseen

    store.renew = stalled_renew  # type: ignore[method-assign,assignment]
    store.lease = 0.3
    handler = W(store=store, durability=durability).run(run_id="stolen")
    record = await _wait_status(store, "stolen", {"running"})
    while record.lease_until is None or record.lease_until >= time.time():
        await asyncio.sleep(0.05)  # until it ran out
        record = await _wait_status(store, "stolen", {"running"})
    thief = open_store(store_url)
    elsewhere = "elsewhere/1/1"  # a process on another machine
    epoch = await thief.claim("stolen", elsewhere, 60)
    assert epoch == 2
    gate.set()
    with pytest.raises(LeaseLost, match="stolen"):
        await asyncio.wait_for(handler, 10)
    await asyncio.sleep(0.2)
    if durability == "strict":
        assert after == []  # the old owner did not go on
    taken = await thief.get("stolen")
    assert taken is not None and taken.owner == elsewhere and taken.epoch == 2
    loaded = await thief.load("stolen")
    assert all('"StepDone"' not in entry for _, entry in loaded.entries)
    await thief.close()


# -- recovery by a Worker -----------------------------------------------------------------

OWNER_MODULE = textwrap.dedent(
    """
    import asyncio, os
    from piton import Context, Event, StartEvent, StopEvent, Workflow, step

    class Half(Event):
        n: int

    class Slow(Workflow):
        @step
        async def first(self, ev: StartEvent, ctx: Context) -> Half:
            with open(os.environ["FIRST_LOG"], "a") as f:
                f.write("first\\n")
            return Half(n=ev.n)

        @step
        async def second(self, ev: Half, ctx: Context) -> StopEvent:
            if os.environ.get("OWNER_HANGS"):
                print("in-second", flush=True)
                await asyncio.sleep(60)
            return StopEvent(result=ev.n * 2)
    """
)


async def test_worker_resumes_an_abandoned_run(
    store_url: str | Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _url_for_a_process(store_url)
    (tmp_path / "owner_mod.py").write_text(OWNER_MODULE)
    log = tmp_path / "first.log"
    monkeypatch.setenv("FIRST_LOG", str(log))
    script = (
        "import asyncio, sys\n"
        f"sys.path[:0] = [{SRC!r}, {str(tmp_path)!r}]\n"
        "from owner_mod import Slow\n"
        "async def main():\n"
        "    await Slow(store=sys.argv[1], durability='strict').run(run_id='abandoned', n=5)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - a real process, killed below
        [sys.executable, "-c", script, url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OWNER_HANGS": "1"},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.strip() == "in-second"
    finally:
        proc.kill()  # SIGKILL
        proc.communicate()  # reaps it and closes the pipe
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "owner_mod", raising=False)  # this test's, not the last
    slow = importlib.import_module("owner_mod").Slow
    store = open_store(url)
    await store.open()
    record = await store.get("abandoned")
    assert record is not None and record.status == "running"
    async with Worker(store, workflows=[slow], poll_interval=0.1):
        record = await _wait_status(store, "abandoned", {"completed", "failed"})
    assert record.status == "completed", record.error
    assert await slow(store=store).run(run_id="abandoned") == 10
    assert log.read_text() == "first\n"  # committed before the kill: not run again
    await store.close()


async def test_worker_logs_a_run_it_cannot_load_and_goes_on(
    store_url: str | Store, caplog: pytest.LogCaptureFixture
) -> None:
    class Fine(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            return StopEvent(result="ok")

    store = open_store(store_url)
    for run_id, entry in (("damaged", "{not json"), ("healthy", None)):
        record = RunRecord(
            run_id=run_id,
            workflow="Fine",
            status="running",
            owner="gone",
            lease_until=0.0,
            start='{"__piton__": "model", "type": "piton.events.StartEvent", "data": {}}',
        )
        assert await store.create(record, [entry] if entry else [], [])
    with caplog.at_level("ERROR", logger="piton.worker"):
        async with Worker(store, workflows=[Fine], poll_interval=0.1):
            record = await _wait_status(store, "healthy", {"completed"})
            await asyncio.sleep(0.2)
    assert record.result is not None and "ok" in record.result
    messages = [r.getMessage() for r in caplog.records]
    assert any("'damaged'" in m and "seq 1" in m for m in messages), messages
    await store.close()


async def test_retry_backoff_parks_and_a_worker_retries_with_the_stored_count(
    store_url: str | Store,
) -> None:
    """A minute's back-off on the fake clock: the run parks until then, and a worker (on
    the same clock) retries it only once the minute has passed."""
    from piton import retry_policy
    from piton.retry import stop_after_attempt, wait_fixed

    attempts: list[int] = []
    clock = FakeClock()

    class Flaky(Workflow):
        @step(retry_policy=retry_policy(wait=wait_fixed(60), stop=stop_after_attempt(3)))
        async def call(self, ev: StartEvent, ctx: Context) -> StopEvent:
            attempts.append(ctx.retry_info().retry_number)
            if len(attempts) == 1:
                raise Boom("transient")
            return StopEvent(result=ctx.retry_info().elapsed_seconds)

    store = open_store(store_url)
    started = clock.now()
    # the process that failed goes away during the back-off
    await _park_and_leave(
        store_url, "rb", lambda: Flaky(store=store_url, clock=clock).run(run_id="rb")
    )
    record = await store.get("rb")
    assert record is not None and record.status == "parked"
    assert record.wake_at is not None and record.wake_at >= started + 60
    async with Worker(store, workflows=[Flaky(clock=clock)], poll_interval=0.05):
        await asyncio.sleep(0.3)  # several polls: nothing is due yet
        assert attempts == [0]
        await clock.advance(60)
        record = await _wait_status(store, "rb", {"completed"})
    assert attempts == [0, 1]  # the retry knew it was the first retry
    assert await Flaky(store=store, clock=clock).run(run_id="rb") >= 60


async def test_waiter_timeout_is_rearmed_after_the_process_goes_away(
    store_url: str | Store,
) -> None:
    """An hour's wait time-out on the fake clock outlives the process that set it."""
    from piton import WorkflowTimeoutError

    clock = FakeClock()

    class Ask(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            try:
                await ctx.wait_for_event(HumanResponseEvent, timeout=3600)
            except WorkflowTimeoutError:
                return StopEvent(result="nobody answered")
            return StopEvent(result="answered")

    store = open_store(store_url)
    await _park_and_leave(
        store_url, "wt", lambda: Ask(store=store_url, clock=clock).run(run_id="wt")
    )
    record = await store.get("wt")
    assert record is not None and record.wake_at is not None
    assert record.wake_at >= clock.now() + 3590
    async with Worker(store, workflows=[Ask(clock=clock)], poll_interval=0.05):
        await clock.advance(3600)
        await _wait_status(store, "wt", {"completed"})
    assert await Ask(store=store).run(run_id="wt") == "nobody answered"


# -- bad data, code changes ----------------------------------------------------------------


async def test_unserializable_state_value_names_the_key(store_url: str | Store) -> None:
    class W(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("good", 1)
            try:
                await ctx.store.set("bad.key", object())
            except ContextSerdeError as exc:
                return StopEvent(result=str(exc))
            return StopEvent(result="stored?!")

    message = await W(store=store_url).run(run_id="serde")
    assert "bad.key" in message


async def test_resume_without_waiting_step_is_incompatible(store_url: str | Store) -> None:
    class Flow(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(HumanResponseEvent)
            return StopEvent(result=answer.response)

    old_code = Flow
    await _park_and_leave(store_url, "chg", lambda: old_code(store=store_url).run(run_id="chg"))

    class Flow(Workflow):  # type: ignore[no-redef]  # same workflow name, new code
        @step
        async def other(self, ev: StartEvent, ctx: Context) -> StopEvent:
            return StopEvent(result="x")

    assert Flow().workflow_name == "Flow"
    h2 = Flow(store=open_store(store_url)).run(run_id="chg")
    await h2.send_event(HumanResponseEvent(response="late"))
    with pytest.raises(IncompatibleWorkflowChange, match="ask"):
        await asyncio.wait_for(h2, 10)


class Extra(Event):
    n: int


async def test_resume_with_new_steps_and_changed_bodies_works(store_url: str | Store) -> None:
    class Grow(Workflow):
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> Mid:
            answer = await ctx.wait_for_event(HumanResponseEvent)
            return Mid(n=len(answer.response))

        @step
        async def done(self, ev: Mid, ctx: Context) -> StopEvent:
            return StopEvent(result=ev.n)

    old_code = Grow
    await _park_and_leave(store_url, "grow", lambda: old_code(store=store_url).run(run_id="grow"))

    class Grow(Workflow):  # type: ignore[no-redef]  # a deploy: new bodies, a new step
        @step
        async def ask(self, ev: StartEvent, ctx: Context) -> Mid:
            answer = await ctx.wait_for_event(HumanResponseEvent)
            return Mid(n=10 * len(answer.response))

        @step
        async def done(self, ev: Mid, ctx: Context) -> Extra:
            return Extra(n=ev.n + 1)

        @step
        async def extra(self, ev: Extra, ctx: Context) -> StopEvent:
            return StopEvent(result=f"new code: {ev.n}")

    h2 = Grow(store=open_store(store_url)).run(run_id="grow")
    await h2.send_event(HumanResponseEvent(response="yes"))
    assert await asyncio.wait_for(h2, 10) == "new code: 31"


EVOLVE_V1 = textwrap.dedent(
    """
    import asyncio, sys
    from piton import Context, Event, HumanResponseEvent, StartEvent, StopEvent, Workflow, step

    class Gone(Event):
        n: int

    class Evolve(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Gone:
            return Gone(n=1)

        @step
        async def use(self, ev: Gone, ctx: Context) -> StopEvent:
            answer = await ctx.wait_for_event(HumanResponseEvent)
            return StopEvent(result=answer.response)

    async def main():
        store = sys.argv[1]
        handler = Evolve(store=store).run(run_id="evolve")
        reader = Evolve(store=store).store
        while getattr(await reader.get("evolve"), "status", None) != "parked":
            await asyncio.sleep(0.02)
        print("parked", flush=True)

    asyncio.run(main())
    """
)


async def test_resume_without_a_needed_event_type_names_it(
    store_url: str | Store, tmp_path: Path
) -> None:
    """Run by a process whose code had event type Gone; resumed by code without it."""
    url = _url_for_a_process(store_url)
    (tmp_path / "evolve_v1.py").write_text(EVOLVE_V1)
    script = f"import sys; sys.path[:0] = [{SRC!r}, {str(tmp_path)!r}]; import evolve_v1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, url, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:  # it did not end: leave no process behind
            proc.kill()
            await proc.wait()
    assert out.decode().strip() == "parked"

    class Other(Event):
        n: int

    class Evolve(Workflow):
        @step
        async def start(self, ev: StartEvent, ctx: Context) -> Other:
            return Other(n=1)

        @step
        async def use(self, ev: Other, ctx: Context) -> StopEvent:
            return StopEvent(result="new")

    handler = Evolve(store=url).run(run_id="evolve")
    await handler.send_event(HumanResponseEvent(response="late"))
    with pytest.raises(IncompatibleWorkflowChange, match="evolve_v1.Gone"):
        await asyncio.wait_for(handler, 10)


# -- durable stream, compaction, pruning -----------------------------------------------------


class Chatty(Workflow):
    @step
    async def a(self, ev: StartEvent, ctx: Context) -> Mid:
        for n in range(3):
            ctx.write_event_to_stream(Mid(n=n))
        return Mid(n=3)

    @step
    async def b(self, ev: Mid, ctx: Context) -> StopEvent:
        return StopEvent(result=ev.n)


async def test_reattached_handler_replays_the_stored_stream(store_url: str | Store) -> None:
    assert await Chatty(store=store_url).run(run_id="st") == 3
    handler = Chatty(store=open_store(store_url)).run(run_id="st")
    events = [ev async for ev in handler.stream_events()]
    assert await handler == 3
    assert [e.n for e in events if isinstance(e, Mid)] == [0, 1, 2]
    assert isinstance(events[-1], StopEvent)
    assert events[-1].result == 3


async def test_a_failed_runs_replayed_stream_ends_with_its_failure(
    store_url: str | Store,
) -> None:
    from piton import WorkflowFailedEvent

    class Fails(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> StopEvent:
            ctx.write_event_to_stream(Mid(n=1))
            raise Boom("broken for good")

    with pytest.raises(Boom):
        await Fails(store=store_url).run(run_id="f1")
    again = Fails(store=open_store(store_url)).run(run_id="f1")
    events = [ev async for ev in again.stream_events()]
    with pytest.raises(Boom, match="broken for good"):
        await again
    assert isinstance(events[0], Mid)
    last = events[-1]
    assert isinstance(last, WorkflowFailedEvent) and last.step_name == "a"
    assert isinstance(last.exception, Boom)


async def test_stream_resumes_after_a_cursor_then_follows_live(store_url: str | Store) -> None:
    class Talk(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> StopEvent:
            for n in range(3):
                ctx.write_event_to_stream(Mid(n=n))
            answer = await ctx.wait_for_event(HumanResponseEvent)
            ctx.write_event_to_stream(Mid(n=10))
            return StopEvent(result=answer.response)

    seen: list[Event] = []

    async def read_two(handler: WorkflowHandler) -> None:
        async for ev in handler.stream_events():
            seen.append(ev)
            if len(seen) == 2:
                break

    await _park_and_leave(
        store_url, "cur", lambda: Talk(store=store_url).run(run_id="cur"), read_two
    )

    again = Talk(store=open_store(store_url)).run(run_id="cur")
    rest: list[Event] = []

    async def listen() -> None:
        async for ev in again.stream_events(cursor=len(seen)):
            rest.append(ev)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.1)
    await again.send_event(HumanResponseEvent(response="ok"))
    assert await asyncio.wait_for(again, 10) == "ok"
    await asyncio.wait_for(listener, 5)
    assert [e.n for e in seen] == [0, 1]
    # the third event and the InputRequired-free live tail, without the two already seen
    assert [e.n for e in rest if isinstance(e, Mid)] == [2, 10]
    assert isinstance(rest[-1], StopEvent)
    with pytest.raises(ValueError, match="cursor"):
        async for _ in again.stream_events(cursor=-1):
            pass


async def test_snapshot_compaction_still_resumes(store_url: str | Store) -> None:
    class Counter(Workflow):
        @step
        async def loop(self, ev: StartEvent | Mid, ctx: Context) -> Mid | StopEvent:
            n = 0 if isinstance(ev, StartEvent) else ev.n
            await ctx.store.set("last", n)
            if n < 6:
                return Mid(n=n + 1)
            answer = await ctx.wait_for_event(HumanResponseEvent)
            return StopEvent(result=(await ctx.store.get("last"), answer.response))

    await _park_and_leave(
        store_url, "snap", lambda: Counter(store=store_url, snapshot_every=2).run(run_id="snap")
    )
    store = open_store(store_url)
    loaded = await store.load("snap")
    assert loaded.snapshot is not None
    assert loaded.snapshot_seq > 0

    h2 = Counter(store=open_store(store_url), snapshot_every=2).run(run_id="snap")
    await h2.send_event(HumanResponseEvent(response="go"))
    result: Any = await asyncio.wait_for(h2, 10)
    assert list(result) == [6, "go"]


async def test_prune_removes_old_finished_runs(store_url: str | Store) -> None:
    class W(Workflow):
        @step
        async def a(self, ev: StartEvent, ctx: Context) -> StopEvent:
            return StopEvent(result=1)

    store = open_store(store_url)
    w = W(store=store)
    assert await w.run(run_id="old") == 1
    await _park_and_leave(store_url, "parked", lambda: Ask(store=store_url).run(run_id="parked"))
    assert await store.prune(3600) == 0  # nothing is that old
    assert await store.prune(timedelta(days=30)) == 0
    with pytest.raises(WorkflowConfigurationError, match="negative"):
        await store.prune(-1)
    with pytest.raises(WorkflowConfigurationError, match="timedelta"):
        await store.prune("30d")  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert await store.prune(timedelta(seconds=0.1)) == 1
    assert await store.get("old") is None
    record = await store.get("parked")
    assert record is not None and record.status == "parked"
