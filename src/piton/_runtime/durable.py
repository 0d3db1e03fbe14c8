"""Durable runs: a Runner whose commit points are made durable in a Store.

``RunDriver`` is what a handler of a durable run talks to. It attaches to the run
(creating it, claiming it from a dead or expired owner, or replaying the stored
result of a finished one), drives a Runner with a ``DurableCommitter`` until the run
finishes or parks, and, while the caller still listens, waits for whatever wakes a
parked run. When the process leaves (its loop ends, SIGTERM) it hands the run's lease
back at once (promise 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from piton._core import inputs as i
from piton._core.state import COMPLETED, MAX_PENDING_EVENTS, RunState
from piton._runtime.committer import AlreadyCreated, DurableCommitter, Phase
from piton._runtime.restore import rebuild
from piton._runtime.runner import Runner, check_target
from piton.errors import (
    ContextSerdeError,
    JournalCorrupted,
    LeaseLost,
    RunNotFound,
    RunStateMismatch,
    StoreError,
    WorkflowRuntimeError,
)
from piton.events import Event, StopEvent
from piton.serde import JsonSerializer, TypeResolver
from piton.stores.base import CommitRequest, Loaded, RunRecord, Store, may_claim

if TYPE_CHECKING:
    from piton.context import Context
    from piton.handler import WorkflowHandler
    from piton.workflow import Compiled, Workflow

log = logging.getLogger("piton.run")

Message = tuple[int, Event | None, str | None]  # inbox id, event (None: cancel), target step
LEAVE_TIMEOUT = 2.0  # seconds a leaving process waits for its last commits, then its release


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
        self.run: Runner | None = None
        self.committer: DurableCommitter | None = None
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stream_wake: asyncio.Future[None] | None = None
        self.finished = False
        self.final_status: str | None = None  # a finished run's status, as stored
        self._latest: RunState | None = None

    @property
    def latest(self) -> RunState | None:
        """The run's state as this process last knew it (None: never loaded here)."""
        return self._latest

    @property
    def status(self) -> str:
        """The run's status as of its last durable commit (promise 9: never ahead of it)."""
        if self.final_status is not None:
            return self.final_status
        if self.committer is not None:
            return self.committer.durable_status
        return "queued"

    @property
    def live(self) -> bool:
        """This process runs the run now (it is not parked, lost or finished here)."""
        committer = self.committer
        return (
            committer is not None
            and self.run is not None
            and not self.run.done
            and committer.phase in (Phase.CREATING, Phase.RUNNING)
        )

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

    def _on_finish(self, cmd: i.Finish) -> None:
        """The run's final commit is durable: now the caller may learn how it ended."""
        state = self.run.state if self.run is not None else None
        self.final_status = cmd.status if state is None else state.status
        if state is not None and state.status == COMPLETED:
            self.resolve(state.result, None)
        else:
            self.resolve(None, state.error if state is not None else cmd.error)

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
            if self.run is not None and self.live:
                waiter = self.run.news()
            else:
                waiter = self._stream_wake or self.loop.create_future()
                self._stream_wake = waiter
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), 0.5)

    def send(self, event: Event, step: str | None) -> asyncio.Future[None]:
        run, committer = self.run, self.committer
        if run is not None and committer is not None and self.live:
            if committer.phase is Phase.CREATING:
                # the run_id may be another process's: feed the event only to a run whose
                # row exists, else it is lost with a state that never becomes the run
                check_target(self.compiled, event, step)
                return asyncio.ensure_future(self._send_once_created(committer, event, step))
            run.send(event, step)
            return _done_future(self.loop)
        check_target(self.compiled, event, step)
        text = self.ser.dumps(event, f"event {type(event).__name__}")
        return asyncio.ensure_future(self._deliver(text, step))

    async def _send_once_created(
        self, committer: DurableCommitter, event: Event, step: str | None
    ) -> None:
        created = await asyncio.shield(committer.created)
        if created and self.run is not None and self.committer is committer and self.live:
            self.run.send(event, step)
            return
        # another process made the run (or ours was let go): its inbox takes the event
        text = self.ser.dumps(event, f"event {type(event).__name__}")
        await self._deliver(text, step)

    async def _cancel_once_created(self, committer: DurableCommitter) -> None:
        created = await asyncio.shield(committer.created)
        if created and self.run is not None and self.committer is committer and self.live:
            self.run.cancel()
            return
        await self._deliver(json.dumps({"__piton_cancel__": True}), None)

    async def _deliver(self, text: str, step: str | None) -> None:
        await self.store.deliver(self.run_id, text, step, limit=MAX_PENDING_EVENTS)
        self._wake.set()

    def listener_gone(self) -> None:
        """The handler was cancelled: finish or park the run, then let it go (never cancel it)."""
        self.stay = False
        self._wake.set()

    def cancel(self) -> asyncio.Future[None]:
        run = self.run
        if run is not None and self.live and self.committer is not None:
            if self.committer.phase is Phase.CREATING:
                return asyncio.ensure_future(self._cancel_once_created(self.committer))
            run.cancel()
            return _done_future(self.loop)
        return asyncio.ensure_future(self._deliver(json.dumps({"__piton_cancel__": True}), None))

    # -- attaching and running -----------------------------------------------------------------

    async def main(self) -> None:
        try:
            await self.store.open()
            _LeaveCleanly.install(self.loop)
            while True:  # attach at least once, even if the caller stopped listening
                outcome = await self._attach_and_run()
                if outcome == "finished" or not self.stay or self.handler.done():
                    return
                await self._wait_for_wake()
                if not self.stay or self.handler.done():
                    return  # the caller stopped listening: leave the run parked
        except asyncio.CancelledError:
            await self._leave()
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the handler
            if not self.handler.done():
                self.handler.set_exception(exc)
        finally:
            if self.store.live.get(self.run_id) is self:
                del self.store.live[self.run_id]

    async def _leave(self) -> None:
        """The process lets go of the run (its loop ends, SIGTERM, a worker closes): stop the
        steps, let the commits already queued land, and hand the lease back (promise 12)."""
        committer = self.committer
        if committer is None or committer.phase in (Phase.PARKED, Phase.LOST):
            return
        finished = committer.phase is Phase.FINISHED
        committer.lose(asyncio.CancelledError())
        with contextlib.suppress(BaseException):
            await committer.settled(timeout=LEAVE_TIMEOUT)
        if finished or not committer.has_row:
            return
        try:  # bounded: a process that is leaving must not hang on a store going away
            await asyncio.wait_for(
                self.store.release([(self.run_id, committer.epoch)], self.store.owner),
                LEAVE_TIMEOUT,
            )
        except Exception as exc:  # noqa: BLE001 - leaving anyway: the lease will expire
            log.warning("piton: could not hand back the lease of run %r: %r", self.run_id, exc)

    async def _attach_and_run(self) -> str:
        store = self.store
        if self.start_event is not None:
            start_event, self.start_event = self.start_event, None  # one attempt to create
            with contextlib.suppress(AlreadyCreated):
                return await self._create_and_run(start_event)
        record = await store.get(self.run_id)
        if record is None:
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
        try:
            loaded = await store.load(self.run_id)
            state = rebuild(loaded, self.workflow, self.compiled, self.ser)
            inbox = self._decode_inbox(loaded.inbox)
            self.stream[:] = [self._decode_stream(text) for text in loaded.stream]
        except BaseException:
            with contextlib.suppress(Exception):  # another process may try at once
                await store.release([(self.run_id, epoch)], store.owner)
            raise
        if state.finished:
            return await self._mismatch(loaded, state, epoch)
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
            inbox=inbox,
        )

    async def _mismatch(self, loaded: Loaded, state: RunState, epoch: int) -> str:
        """The journal says the run ended, the store's record says it did not: fail the run
        with that reason and log it, rather than leave it waiting for nothing (promise 11)."""
        record = loaded.record
        error = RunStateMismatch(
            f"Run '{self.run_id}' of workflow '{record.workflow}': its journal (up to seq "
            f"{record.seq}) ends the run as {state.status}, but the store records it as "
            f"{record.status}. The run is failed rather than guessed at; its journal is kept."
        )
        log.error("piton: %s", error)
        await self.store.commit(
            CommitRequest(
                run_id=self.run_id,
                epoch=epoch,
                seq=record.seq,
                status="failed",
                error=json.dumps(self.ser.encode_error(error)),
                release=True,
            )
        )
        self.resolve(None, error)
        return "finished"

    async def _create_and_run(self, start_event: Event) -> str:
        """A new run: its record and its first commit (the Begin entry) in one transaction.

        Raises ``AlreadyCreated`` when the run_id is taken; the caller then attaches to it.
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
        inbox: list[Message] | None = None,
        create: RunRecord | None = None,
    ) -> str:
        state.durable = True
        committer = DurableCommitter(
            self.store,
            state,
            self.ser,
            epoch=epoch,
            seq=seq,
            strict=self.workflow._durability == "strict",
            snapshot_every=self.snapshot_every,
            create=create,
        )
        run = Runner(
            self.workflow,
            self.compiled,
            state,
            self.ctx,
            self.handler,
            committer=committer,
            stream=self.stream,  # shared across re-attachments
        )
        committer.runner = run
        run.on_finish = self._on_finish
        self._latest = state
        self.run, self.committer = run, committer
        self._notify_stream()  # a listener that came before the run follows it now
        self.store.live[self.run_id] = self
        self.handler._runner = self
        keeper = _LeaseKeeper.of(self.store, self.loop)
        keeper.runs[self.run_id] = self
        try:
            committer.snapshot_due = loaded is not None  # compact on every resume
            committer.holding = True
            if loaded is not None and loaded.record.fingerprint != self.compiled.fingerprint:
                committer.fingerprint = self.compiled.fingerprint  # resumed by new code
            run.feed(begin)
            if inbox:
                self._take_inbox(inbox)
            committer.holding = False
            committer.maybe_park()
            return await committer.outcome
        finally:
            if keeper.runs.get(self.run_id) is self:
                del keeper.runs[self.run_id]
            if committer.outcome.done() and not committer.outcome.cancelled():
                self.ctx._state = run.state
                self.ctx._runner = None

    def _decode_inbox(self, inbox: list[tuple[int, str, str | None]]) -> list[Message]:
        """The inbox's events, decoded before any is taken: an event this process cannot
        read fails the load of this run (JournalCorrupted naming it), and stays stored."""
        types = TypeResolver(self.compiled.graph.event_types)
        messages: list[Message] = []
        for msg_id, text, step in inbox:
            try:
                payload = json.loads(text)
                if isinstance(payload, dict) and payload.get("__piton_cancel__"):
                    messages.append((msg_id, None, None))
                    continue
                event = self.ser.decode(payload, types)
                if not isinstance(event, Event):
                    raise ContextSerdeError(f"it holds a {type(event).__name__}, not an Event")
            except Exception as exc:  # noqa: BLE001 - stored data is untrusted
                raise JournalCorrupted(
                    f"Run '{self.run_id}': inbox event {msg_id} cannot be read ({exc}). It "
                    "stays in the inbox; import the module that defines its type, or delete it."
                ) from exc
            messages.append((msg_id, event, step))
        return messages

    def _take_inbox(self, messages: list[Message]) -> None:
        run, committer = self.run, self.committer
        assert run is not None and committer is not None
        for msg_id, event, step in messages:
            if msg_id in committer.inbox_taken:
                continue  # taken already; its removal is on its way to the store
            committer.inbox_taken.add(msg_id)
            committer.inbox_done.append(msg_id)
            run.feed(i.Cancel(time.time()) if event is None else i.Send(time.time(), event, step))
        if committer.inbox_done and self.live:
            run.feed(i.Checkpoint(time.time(), ""))  # commits the inbox removal

    async def _replay_finished(self, record: RunRecord) -> None:
        self.final_status = record.status
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
            if record.status != "parked" and may_claim(record, self.store.owner, now):
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

    @classmethod
    def drivers(cls, loop: asyncio.AbstractEventLoop) -> list[RunDriver]:
        return [d for k in cls._keepers.get(loop, {}).values() for d in k.runs.values()]

    async def _loop(self) -> None:
        store = self.store
        interval = min(store.lease / 3, 0.5)
        idle = 0
        while idle < 10:  # a keeper with nothing to keep ends after a few rounds
            await asyncio.sleep(interval)
            active = [
                driver
                for driver in list(self.runs.values())
                if driver.live
                and driver.committer is not None
                and driver.committer.has_row  # a run being created has no row yet
            ]
            idle = 0 if active else idle + 1
            if active:
                with contextlib.suppress(StoreError):
                    await self._renew(active)

    async def _renew(self, active: list[RunDriver]) -> None:
        store = self.store
        pairs = [(d.run_id, d.committer.epoch) for d in active if d.committer is not None]
        lost = set(await store.renew(pairs, store.owner, store.lease))
        for driver in active:
            if driver.run_id in lost and driver.committer is not None:
                driver.committer.lose(
                    LeaseLost(f"Run '{driver.run_id}' was taken over by another process.")
                )
        records = await asyncio.gather(*(store.get(d.run_id) for d in active))
        for driver, record in zip(active, records, strict=True):
            if record is not None and record.inbox > 0 and driver.live:
                loaded = await store.load(driver.run_id)
                try:
                    messages = driver._decode_inbox(loaded.inbox)
                except JournalCorrupted as exc:
                    log.error("piton: %s", exc)
                    continue
                if driver.live:
                    driver._take_inbox(messages)


class _LeaveCleanly:
    """On SIGTERM, hand back the leases of the runs this process drives, then die of
    SIGTERM as the process would have (promise 12). Installed on a loop in the main
    thread when nobody else handles SIGTERM there."""

    _installed: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> None:
        if loop in cls._installed or threading.current_thread() is not threading.main_thread():
            return
        cls._installed.add(loop)
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the application handles SIGTERM itself
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, cls._on_sigterm, loop)

    @classmethod
    def _on_sigterm(cls, loop: asyncio.AbstractEventLoop) -> None:
        loop.create_task(cls._leave(loop))

    @staticmethod
    async def _leave(loop: asyncio.AbstractEventLoop) -> None:
        tasks = [
            d.handler._task
            for d in _LeaseKeeper.drivers(loop)
            if d.handler._task is not None and not d.handler._task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _ignore_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _done_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    future: asyncio.Future[None] = loop.create_future()
    future.set_result(None)
    return future


__all__ = ["RunDriver"]
