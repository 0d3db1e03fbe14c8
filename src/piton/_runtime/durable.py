"""Durable runs: a Runner whose commit points are made durable in a Store.

``RunDriver`` is what a handler of a durable run talks to. It attaches to the run
(creating it, claiming it from a dead or expired owner, or replaying the stored
result of a finished one), drives a ``DurableRun`` until the run finishes or parks,
and, while the caller still listens, waits for whatever wakes a parked run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from piton._core import inputs as i
from piton._core.state import COMPLETED, RunState
from piton._runtime.restore import rebuild
from piton._runtime.runner import Runner
from piton.errors import (
    ContextSerdeError,
    LeaseLost,
    PitonError,
    StoreError,
    WorkflowRuntimeError,
)
from piton.events import Event, StopEvent
from piton.serde import (
    JsonSerializer,
    TypeResolver,
    encode_input,
    encode_run,
)
from piton.stores.base import CommitRequest, Loaded, RunRecord, Store

if TYPE_CHECKING:
    from piton.context import Context
    from piton.handler import WorkflowHandler
    from piton.workflow import Compiled, Workflow

PARK_GRACE = 0.25  # a run idle until a deadline closer than this stays in memory

# Fault injection for crash tests: with PITON_TEST_CRASH_AFTER_COMMIT=N the process kills
# itself (SIGKILL) right after its Nth commit is durable, before the run in memory learns
# of it: the window between the database and the process's own view of the run.
_CRASH_AFTER_COMMIT = int(os.environ.get("PITON_TEST_CRASH_AFTER_COMMIT") or 0)
_commits_done = 0


def _after_commit() -> None:
    global _commits_done
    _commits_done += 1
    if _commits_done == _CRASH_AFTER_COMMIT:
        os.kill(os.getpid(), signal.SIGKILL)


class DurableRun(Runner):
    """Executes a run in memory and commits each commit point before its effects count."""

    def __init__(
        self,
        driver: RunDriver,
        state: RunState,
        *,
        epoch: int,
        seq: int,
    ) -> None:
        super().__init__(driver.workflow, driver.compiled, state, driver.ctx, driver.handler)
        self.driver = driver
        self.store = driver.store
        self.ser = driver.ser
        self.epoch = epoch
        self.seq = seq
        self.stream = driver.stream  # shared across re-attachments
        state.durable = True
        self._encoded: list[str] = []
        self._stream_out: list[str] = []
        self._queue: list[CommitRequest] = []
        # durability="strict": steps whose input is in a commit not yet durable, by
        # position in _queue; a step never starts before the commit that made it runnable
        self.strict = driver.workflow._durability == "strict"
        self._held: list[list[i.RunStep]] = []
        self._committer: asyncio.Task[None] | None = None
        self._final: i.Finish | None = None
        self.parked = False
        self.outcome: asyncio.Future[str] = self.loop.create_future()
        self.inbox_done: list[int] = []  # taken, their removal not yet in a commit
        self.inbox_taken: set[int] = set()  # every message this run took, committed or not
        self.commits = 0
        self.snapshot_due = False
        self.holding = False  # no parking while a resume feeds its inbox
        # a new run: its first commit creates it; until that lands the run has no row (no
        # lease to renew) and no step starts (the run_id may be another process's)
        self.creating: RunRecord | None = None

    # -- feeding: encode first, so a value that cannot be stored fails where it was made ----

    def feed(self, inp: i.Input) -> None:
        if self.outcome.done() or self.parked:
            return
        if not self.state.finished:
            self._encoded.append(encode_input(inp, self.ser))
        super().feed(inp)
        self._flush_pending()
        self.maybe_park()

    def maybe_park(self) -> None:
        if not self.holding and not self.state.finished and not self.parked and self._idle():
            self._park()

    def _idle(self) -> bool:
        state = self.state
        if state.running or any(state.queues.values()):
            return False
        deadlines = [d for k, d in state.deadlines.items() if k != "run"]
        return not deadlines or min(deadlines) > time.time() + PARK_GRACE

    def _park(self) -> None:
        park = i.Park(time.time())
        self._encoded.append(encode_input(park, self.ser))
        Runner.feed(self, park)
        self.parked = True
        self._flush_pending()
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()

    # -- commands ---------------------------------------------------------------------

    def _publish(self, cmd: i.Publish) -> None:
        try:
            self._stream_out.append(
                self.ser.dumps(cmd.event, f"stream event {type(cmd.event).__name__}")
            )
        except ContextSerdeError:
            self._stream_out.append(json.dumps({"unserializable": type(cmd.event).__name__}))
        super()._publish(cmd)

    def _run_step(self, cmd: i.RunStep) -> None:
        if self._held and (self.strict or self.creating is not None):
            self._held[-1].append(cmd)
        else:
            super()._run_step(cmd)

    def _cancel_step(self, cmd: i.CancelStep) -> None:
        for held in self._held:
            held[:] = [c for c in held if c.execution.id != cmd.exec_id]
        super()._cancel_step(cmd)

    def _commit(self, cmd: i.Commit) -> None:
        n = len(cmd.entries)
        entries, self._encoded = self._encoded[:n], self._encoded[n:]
        request = CommitRequest(
            run_id=self.state.run_id,
            epoch=self.epoch,
            seq=0,
            entries=entries,
            stream=[],
            status=self.state.status,
        )
        self._queue.append(request)
        self._held.append([])
        self.commits += 1
        if self.commits % self.driver.snapshot_every == 0:
            self.snapshot_due = True

    def _flush_pending(self) -> None:
        """After a feed: hand its commit, now with the feed's stream and status, to the committer."""
        if not self._queue or self._queue[-1].seq == -1:
            return
        last = self._queue[-1]
        last.seq = -1  # flushed; the committer fills in the real seq
        last.stream, self._stream_out = last.stream + self._stream_out, []
        last.status = self._store_status()
        if self.state.status == "parked":
            deadlines = list(self.state.deadlines.values())
            last.wake_at = min(deadlines) if deadlines else None
            last.release = True
        if self.state.finished:
            last.result, last.error = self._final_payload()
            last.release = True
        if self.inbox_done:
            last.inbox_done, self.inbox_done = self.inbox_done, []
        if self._committer is None or self._committer.done():
            self._committer = self.loop.create_task(self._drain())

    def _store_status(self) -> str:
        return "parked" if self.state.status == "parked" else self.state.status

    def _final_payload(self) -> tuple[str | None, str | None]:
        state = self.state
        if state.status == COMPLETED:
            try:
                return self.ser.dumps(state.result, "the StopEvent"), None
            except ContextSerdeError as exc:
                state.status, state.error = "failed", exc
                return None, json.dumps(self.ser.encode_error(exc))
        assert state.error is not None
        return None, json.dumps(self.ser.encode_error(state.error))

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            held, self._held = self._held, []
            request = _merge(batch)
            request.seq = self.seq
            if self.snapshot_due and not self._encoded and not self.state.finished:
                # the state now is the state after the batch's last entry: it covers them all
                request.snapshot = json.dumps(encode_run(self.state, self.ser, keep_running=True))
                self.snapshot_due = False
            try:
                if self.creating is not None:
                    if not await self._create(self.creating, request):
                        self._lost(_AlreadyCreated())
                        return
                    self.creating = None
                else:
                    await self.store.commit(request)
            except (StoreError, PitonError) as exc:
                self._lost(exc)
                return
            if _CRASH_AFTER_COMMIT:
                _after_commit()
            self.seq += len(request.entries)
            if not self.done:
                for cmds in held:
                    for cmd in cmds:
                        Runner._run_step(self, cmd)
            if request.status == "parked":
                self._settle("parked")
            elif request.status in ("completed", "failed", "cancelled", "timed_out"):
                self._settle("finished")

    async def _create(self, record: RunRecord, request: CommitRequest) -> bool:
        """Create the run with the first commit's entries; False if the run_id is taken."""
        if not request.plain:  # e.g. a run that ends in its first commit: create, then commit
            if not await self.store.create(record, [], []):
                return False
            await self.store.commit(request)
            return True
        return await self.store.create(record, request.entries, request.stream)

    def _finish(self, cmd: i.Finish) -> None:
        self.done = True
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        self._final = cmd
        self._notify()

    def _settle(self, outcome: str) -> None:
        if outcome == "finished":
            state = self.state
            if state.status == COMPLETED:
                self.driver.resolve(state.result, None)
            else:
                self.driver.resolve(None, state.error)
        if not self.outcome.done():
            self.outcome.set_result(outcome)

    def _lost(self, exc: BaseException) -> None:
        """A commit failed: stop working on this run; what was committed stays."""
        self.done = True
        for task in self.tasks.values():
            task.cancel()
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        self._notify()
        if not self.outcome.done():
            self.outcome.set_exception(exc)

    def stop(self) -> None:
        """Let go of the run without recording anything (the process is going away)."""
        self._lost(asyncio.CancelledError())


class _AlreadyCreated(Exception):
    """Another process created the run first."""


def _merge(batch: list[CommitRequest]) -> CommitRequest:
    if len(batch) == 1:
        return batch[0]
    last = batch[-1]
    merged = CommitRequest(run_id=last.run_id, epoch=last.epoch, seq=0)
    for r in batch:
        merged.entries.extend(r.entries)
        merged.stream.extend(r.stream)
        merged.inbox_done.extend(r.inbox_done)
    merged.status, merged.result, merged.error = last.status, last.result, last.error
    merged.wake_at, merged.release, merged.snapshot = last.wake_at, last.release, last.snapshot
    merged.fingerprint = next((r.fingerprint for r in batch if r.fingerprint), None)
    return merged


class RunDriver:
    """Attaches a handler to a durable run and keeps it going while the caller listens."""

    def __init__(
        self,
        workflow: Workflow,
        compiled: Compiled,
        store: Store,
        run_id: str,
        ctx: Context[Any],
        handler: WorkflowHandler,
        start_event: Event | None,
        *,
        stay: bool = True,
    ) -> None:
        self.workflow = workflow
        self.compiled = compiled
        self.store = store
        self.run_id = run_id
        self.ctx = ctx
        self.handler = handler
        self.start_event = start_event
        self.stay = stay
        self.ser: JsonSerializer = ctx._serializer
        self.snapshot_every = workflow._snapshot_every
        self.stream: list[Event] = []
        self.run: DurableRun | None = None
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stream_wake: asyncio.Future[None] | None = None
        self.finished = False

    # -- the handler's view --------------------------------------------------------------

    def resolve(self, result: Any, error: BaseException | None) -> None:
        self.finished = True
        self._notify_stream()
        if self.handler.done():
            return
        self.handler._stored_outcome = True
        if error is not None:
            self.handler.set_exception(error)
        else:
            value = result.result if type(result) is StopEvent else result
            self.handler.set_result(value)

    def _notify_stream(self) -> None:
        wake, self._stream_wake = self._stream_wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def events(self, cursor: int = 0) -> AsyncIterator[Event]:
        while True:
            while cursor < len(self.stream):
                ev = self.stream[cursor]
                cursor += 1
                yield ev
                if isinstance(ev, StopEvent):
                    return
            if self.finished or self.handler.done():
                return
            if self.run is not None and not self.run.done:
                waiter = self.run._wake or self.run.loop.create_future()
                self.run._wake = waiter
            else:
                waiter = self._stream_wake or self.loop.create_future()
                self._stream_wake = waiter
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), 0.5)

    def send(self, event: Event, step: str | None) -> asyncio.Future[None]:
        run = self.run
        if run is not None and not run.done and not run.parked:
            run.send(event, step)
            return _done_future(self.loop)
        text = self.ser.dumps(event, f"event {type(event).__name__}")
        return asyncio.ensure_future(self._deliver(text, step))

    async def _deliver(self, text: str, step: str | None) -> None:
        await self.store.deliver(self.run_id, text, step)
        self._wake.set()

    def listener_gone(self) -> None:
        """The handler was cancelled: finish or park the run, then let it go (never cancel it)."""
        self.stay = False
        self._wake.set()

    def cancel(self) -> asyncio.Future[None]:
        run = self.run
        if run is not None and not run.done and not run.parked:
            run.cancel()
            return _done_future(self.loop)
        return asyncio.ensure_future(self._deliver(json.dumps({"__piton_cancel__": True}), None))

    # -- attaching and running -----------------------------------------------------------------

    async def main(self) -> None:
        try:
            await self.store.open()
            while True:  # attach at least once, even if the caller stopped listening
                outcome = await self._attach_and_run()
                if outcome == "finished" or not self.stay or self.handler.done():
                    return
                await self._wait_for_wake()
                if not self.stay or self.handler.done():
                    return  # the caller stopped listening: leave the run parked
        except asyncio.CancelledError:
            if self.run is not None:
                self.run.stop()
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the handler
            if not self.handler.done():
                self.handler.set_exception(exc)
        finally:
            if self.store.live.get(self.run_id) is self:
                del self.store.live[self.run_id]

    async def _attach_and_run(self) -> str:
        store = self.store
        if self.start_event is not None:
            start_event, self.start_event = self.start_event, None  # one attempt to create
            with contextlib.suppress(_AlreadyCreated):
                return await self._create_and_run(start_event)
        record = await store.get(self.run_id)
        if record is None:
            from piton.errors import RunNotFound

            raise RunNotFound(f"No run '{self.run_id}' in {store.url}.")
        if record.workflow != self.compiled.graph.workflow:
            raise WorkflowRuntimeError(
                f"Run '{self.run_id}' belongs to workflow '{record.workflow}', not "
                f"'{self.compiled.graph.workflow}'. Use another run_id."
            )
        if record.finished:
            await self._replay_finished(record)
            return "finished"
        epoch = await store.claim(self.run_id, store.owner, store.lease)
        if epoch is None:
            return "busy"
        loaded = await store.load(self.run_id)
        state = rebuild(loaded, self.workflow, self.compiled, self.ser)
        self.stream[:] = [self._decode_stream(text) for text in loaded.stream]
        first: Event | None = None
        if not loaded.entries and loaded.snapshot is None and record.start is not None:
            # created, but its first commit never landed: start it from the stored event
            first = self.ser.loads(record.start, TypeResolver(self.compiled.graph.event_types))
        return await self._execute(
            state,
            epoch=epoch,
            seq=loaded.record.seq,
            begin=i.Begin(time.time(), first),
            loaded=loaded,
        )

    async def _create_and_run(self, start_event: Event) -> str:
        """A new run: its record and its first commit (the Begin entry) in one transaction.

        Raises ``_AlreadyCreated`` when the run_id is taken; the caller then attaches to it.
        """
        store, now = self.store, time.time()
        start = self.ser.dumps(start_event, f"start event {type(start_event).__name__}")
        record = RunRecord(
            run_id=self.run_id,
            workflow=self.compiled.graph.workflow,
            status="running",
            fingerprint=self.compiled.fingerprint,
            owner=store.owner,
            epoch=1,
            lease_until=now + store.lease,
            start=start,
        )
        state = self.workflow._new_state(self.run_id, values=self._initial_values())
        return await self._execute(
            state, epoch=1, seq=0, begin=i.Begin(now, start_event), create=record
        )

    def _initial_values(self) -> Any:
        values = self.ctx._detached_values
        if values is None and self.ctx._state is not None:
            values = self.ctx._state.values
        return values

    def _decode_stream(self, text: str) -> Event:
        value = self.ser.loads(text, TypeResolver(self.compiled.graph.event_types))
        return value if isinstance(value, Event) else Event(unreadable=value)

    async def _execute(
        self,
        state: RunState,
        *,
        epoch: int,
        seq: int,
        begin: i.Begin,
        loaded: Loaded | None = None,
        create: RunRecord | None = None,
    ) -> str:
        run = DurableRun(self, state, epoch=epoch, seq=seq)
        run.creating = create
        self.run = run
        self._notify_stream()  # a listener that came before the run follows it now
        self.store.live[self.run_id] = self
        self.handler._runner = self
        keeper = _LeaseKeeper.of(self.store, self.loop)
        keeper.runs[self.run_id] = self
        try:
            run.snapshot_due = loaded is not None  # compact on every resume
            run.holding = True
            run.feed(begin)
            if loaded is not None:
                if run._queue and loaded.record.fingerprint != self.compiled.fingerprint:
                    run._queue[0].fingerprint = self.compiled.fingerprint  # resumed by new code
                self._take_inbox(run, loaded.inbox)
            run.holding = False
            run.maybe_park()
            return await run.outcome
        finally:
            if keeper.runs.get(self.run_id) is self:
                del keeper.runs[self.run_id]
            if run.outcome.done() and not run.outcome.cancelled():
                self.ctx._state = run.state
                self.ctx._runner = None

    def _take_inbox(self, run: DurableRun, inbox: list[tuple[int, str, str | None]]) -> None:
        types = TypeResolver(self.compiled.graph.event_types)
        for msg_id, text, step in inbox:
            if msg_id in run.inbox_taken:
                continue  # taken already; its removal is on its way to the store
            run.inbox_taken.add(msg_id)
            run.inbox_done.append(msg_id)
            payload = json.loads(text)
            if isinstance(payload, dict) and payload.get("__piton_cancel__"):
                run.feed(i.Cancel(time.time()))
                continue
            event = self.ser.decode(payload, types)
            try:
                run.feed(i.Send(time.time(), event, step))
            except PitonError:
                continue
        if run.inbox_done and not run._queue and not run.done:
            run.feed(i.Checkpoint(time.time(), ""))  # commits the inbox removal

    async def _replay_finished(self, record: RunRecord) -> None:
        loaded = await self.store.load(self.run_id)
        self.stream[:] = [self._decode_stream(text) for text in loaded.stream]
        types = TypeResolver(self.compiled.graph.event_types)
        if record.status == COMPLETED and record.result is not None:
            self.resolve(self.ser.loads(record.result, types), None)
        else:
            error = (
                self.ser.decode_error(json.loads(record.error), types)
                if record.error
                else WorkflowRuntimeError(f"Run '{self.run_id}' ended as {record.status}.")
            )
            self.resolve(None, error)

    async def _wait_for_wake(self) -> None:
        """Parked (or held by another process): wait for an event, a deadline or the end."""
        self.run = None
        while not self.handler.done():
            record = await self.store.get(self.run_id)
            if record is None:
                return
            if record.finished:
                await self._replay_finished(record)
                return
            now = time.time()
            if record.status == "parked" and (
                record.inbox > 0 or (record.wake_at is not None and record.wake_at <= now)
            ):
                return
            if record.status != "parked":
                from piton.stores.base import may_claim

                if may_claim(record, self.store.owner, now):
                    return
            timeout = 1.0
            if record.status == "parked" and record.wake_at is not None:
                timeout = min(timeout, max(record.wake_at - now, 0.0))
            self._wake.clear()
            await self._sleep_until_woken(timeout)

    async def _sleep_until_woken(self, timeout: float) -> None:
        """Until this process sends the run something, the store says another process did,
        or ``timeout`` passes."""
        woken = self.loop.create_task(self._wake.wait())
        told = self.loop.create_task(self.store.wait_for_work(timeout))
        told.add_done_callback(_ignore_failure)  # a store that cannot listen: we poll anyway
        try:
            await asyncio.wait({woken, told}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            woken.cancel()
            told.cancel()


class _LeaseKeeper:
    """Renews the leases of every run one store object drives on one loop, in one call.

    It also looks for events another process put in a running run's inbox. One keeper
    per (store, loop) instead of a task per run: a renewal costs one store call for all.
    """

    _keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _LeaseKeeper]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.runs: dict[str, RunDriver] = {}
        self.task = loop.create_task(self._loop())

    @classmethod
    def of(cls, store: Store, loop: asyncio.AbstractEventLoop) -> _LeaseKeeper:
        keepers = cls._keepers.setdefault(loop, {})
        keeper = keepers.get(id(store))
        if keeper is None or keeper.store is not store or keeper.task.done():
            keeper = keepers[id(store)] = cls(store, loop)
        return keeper

    async def _loop(self) -> None:
        store = self.store
        interval = min(store.lease / 3, 0.5)
        idle = 0
        while idle < 10:  # a keeper with nothing to keep ends after a few rounds
            await asyncio.sleep(interval)
            active = [
                (driver, driver.run)
                for driver in list(self.runs.values())
                if driver.run is not None
                and driver.run.creating is None  # a run being created has no row yet
                and not driver.run.done
                and not driver.run.parked
            ]
            idle = 0 if active else idle + 1
            if active:
                with contextlib.suppress(StoreError):
                    await self._renew(active)

    async def _renew(self, active: list[tuple[RunDriver, DurableRun]]) -> None:
        store = self.store
        lost = set(
            await store.renew(
                [(d.run_id, run.epoch) for d, run in active], store.owner, store.lease
            )
        )
        for driver, run in active:
            if driver.run_id in lost:
                run._lost(LeaseLost(f"Run '{driver.run_id}' was taken over by another process."))
        records = await asyncio.gather(*(store.get(d.run_id) for d, _ in active))
        for (driver, run), record in zip(active, records, strict=True):
            if record is not None and record.inbox > 0 and not run.done and not run.parked:
                loaded = await store.load(driver.run_id)
                driver._take_inbox(run, loaded.inbox)


def _ignore_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _done_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    future: asyncio.Future[None] = loop.create_future()
    future.set_result(None)
    return future


__all__ = ["DurableRun", "RunDriver"]
