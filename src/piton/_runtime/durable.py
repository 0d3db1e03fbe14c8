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
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

from piton._core import inputs as i
from piton._core.state import (
    COMPLETED,
    MAX_PENDING_EVENTS,
    RunState,
    StateStatus,
    shown_status,
)
from piton._core.status import RunStatus
from piton._run_codec import encode_run
from piton._runtime.clock import SYSTEM_CLOCK
from piton._runtime.committer import (
    STORE_DEADLINE,
    AlreadyCreated,
    DurableCommitter,
    Phase,
    _Default,
)
from piton._runtime.engine import Engine, RunLink
from piton._runtime.live import LeaseKeeper, LeaveCleanly, ParkedWatch, live_runs
from piton._runtime.outage import patiently
from piton._runtime.restore import rebuild
from piton._runtime.runner import Runner
from piton.errors import (
    ContextSerdeError,
    JournalCorrupted,
    RunNotFound,
    RunStateMismatch,
    WorkflowRuntimeError,
)
from piton.events import Event, StopEvent
from piton.serde import JsonSerializer, TypeResolver
from piton.stores.base import CommitRequest, Loaded, RunRecord, Store, may_claim
from piton.telemetry import start_run

log = logging.getLogger("piton.run")

T = TypeVar("T")
Message = tuple[int, Event | None, str | None]  # inbox id, event (None: cancel), target step
# an inbox message asking the run to stop (``cancel_run`` from a process not driving it)
CANCEL_MESSAGE = json.dumps({"__piton_cancel__": True})
LEAVE_TIMEOUT = 2.0  # seconds a leaving process waits for its last commits, then its release



def in_flight(link: RunLink) -> RunState | None:
    """The unfinished run a context holds (restored, or left by an earlier run), if any."""
    state = link.state if link.run is None else None
    if state is None or state.finished or state.status == "new":
        return None
    return state

class RunDriver:
    """Attaches a caller to a durable run and keeps it going while the caller listens.

    ``outcome`` gets the run's result or error, as stored. The driver is the handlers'
    ``RunControl``: every caller in this process that attaches to the run follows it.
    """

    def __init__(
        self,
        engine: Engine,
        store: Store,
        run_id: str,
        link: RunLink,
        start_event: Event | None,
        *,
        stay: bool = True,
        claimed: RunRecord | None = None,
        follow_only: bool = False,
        deadline: float | None | _Default = STORE_DEADLINE,
    ) -> None:
        self.engine = engine
        # seconds store calls and commits are retried while the store cannot be reached,
        # before the caller gets StoreUnavailable (None: for ever, as workers do)
        self.deadline = store.deadline if deadline is STORE_DEADLINE else deadline
        self.clock = engine.clock
        self.store = store
        self.run_id = run_id
        self.link = link
        self.loop = asyncio.get_running_loop()
        self.outcome: asyncio.Future[Any] = self.loop.create_future()
        self.start_event = start_event
        # a restored context's unfinished run (Context.from_dict): with no start event, a
        # new run goes on from it, its state stored with the run's creation
        self.restored = in_flight(link) if start_event is None else None
        self.stay = stay
        self.claimed = claimed  # a run a worker claimed for this driver (its row after the claim)
        self.follow_only = follow_only  # waits for the run's end; never runs it here
        self.ser: JsonSerializer = link.serializer
        self.task: asyncio.Task[None] | None = None
        self.stored_outcome = False  # the outcome is the run's own, as stored
        self.abandoned = False  # its caller stopped listening (a cancelled handler)
        self.handlers = 0  # the handlers that follow the run, alive
        self.stream: list[Event] = []
        self.run: Runner | None = None
        self.committer: DurableCommitter | None = None
        self._watching: asyncio.Future[RunRecord | None] | None = None
        # set once the first attach decided (the run executes here, is held elsewhere,
        # parked, finished or failed to load): sends before that wait for it
        self._attached = asyncio.Event()
        self._stream_wake: asyncio.Future[None] | None = None
        self.finished = False
        self.final_status: RunStatus | None = None  # a finished run's status, as stored
        self.let_go_status: RunStatus | None = None  # its status when this process let it go
        self._latest: RunState | None = None

    @classmethod
    def launch(
        cls,
        engine: Engine,
        store: Store,
        run_id: str,
        link: RunLink,
        start_event: Event | None,
        *,
        stay: bool = True,
        claimed: RunRecord | None = None,
        deadline: float | None | _Default = STORE_DEADLINE,
    ) -> RunDriver:
        """A driver for ``run_id``, registered as this process's and started on the loop.

        ``claimed``: the run's row as a worker's claim left it; the driver takes it from
        there (no second claim)."""
        driver = cls(
            engine, store, run_id, link, start_event, stay=stay, claimed=claimed, deadline=deadline
        )
        live_runs(store)[run_id] = driver
        driver.task = driver.loop.create_task(driver.main())
        return driver

    @property
    def latest(self) -> RunState | None:
        """The run's state as this process last knew it (None: never loaded here)."""
        return self._latest

    @property
    def status(self) -> RunStatus:
        """The run's status as of its last durable commit (promise 9: never ahead of it)."""
        if self.final_status is not None:
            return self.final_status
        if self.committer is not None:
            return self.committer.durable_status
        return self.let_go_status or "queued"

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
        if self.outcome.done():
            return
        self.stored_outcome = True
        if error is not None:
            self.outcome.set_exception(error)
        else:
            value = result.result if type(result) is StopEvent else result
            self.outcome.set_result(value)

    def _on_finish(self, cmd: i.Finish) -> None:
        """The run's final commit is durable: now the caller may learn how it ended."""
        state = self.run.state if self.run is not None else None
        status = cmd.status if state is None else state.status
        self.final_status = shown_status(cast(StateStatus, status))
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
            if self.finished or self.outcome.done():
                return
            # news from the runner (a commit showed a fact) or from the driver (a new
            # runner, a stored result); the poll is only a fallback
            if self._stream_wake is None:
                self._stream_wake = self.loop.create_future()
            waiters: set[asyncio.Future[None]] = {self._stream_wake}
            if self.run is not None and not self.run.done:
                waiters.add(self.run.news())
            await asyncio.wait(waiters, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)

    def send_event(self, event: Event, step: str | None) -> asyncio.Future[None]:
        if not self._attached.is_set():
            # the driver has not attached yet (a new run's row may not exist): decide then
            self.engine.check_target(event, step)
            return asyncio.ensure_future(self._once_attached(lambda: self.send_event(event, step)))
        run, committer = self.run, self.committer
        if run is not None and committer is not None and self.live:
            if committer.phase is Phase.CREATING:
                # the run_id may be another process's: feed the event only to a run whose
                # row exists, else it is lost with a state that never becomes the run
                self.engine.check_target(event, step)
                return asyncio.ensure_future(self._send_once_created(committer, event, step))
            run.send(event, step)
            return _done_future(self.loop)
        self.engine.check_target(event, step)
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
        await self._deliver(CANCEL_MESSAGE, None)

    async def _once_attached(self, then: Callable[[], Awaitable[None]]) -> None:
        await self._attached.wait()
        await then()

    async def _deliver(self, text: str, step: str | None) -> None:
        store = self.store
        await self._patiently(
            lambda: store.deliver(self.run_id, text, step, limit=MAX_PENDING_EVENTS),
            "delivering an event",
            idempotent=False,  # sent twice, it would arrive twice
        )
        self.poke()

    async def _get(self) -> RunRecord | None:
        return await self.store.get(self.run_id)

    async def _patiently(self, op: Callable[[], Awaitable[T]], what: str, **kw: Any) -> T:
        """A store call, retried while the store cannot be reached, up to the deadline."""
        return await patiently(
            op, what=f"run '{self.run_id}': {what}", deadline=self.deadline, log=log, **kw
        )

    def followable(self) -> bool:
        """Another caller in this process may follow this driver rather than start a
        second one: it still runs or waits, and its caller did not walk away from it."""
        return not self.outcome.done() and not self.abandoned

    def listen(self) -> None:
        """Another caller in this process follows the run: keep it until it finishes."""
        self.stay = True

    def handler_added(self) -> None:
        self.handlers += 1

    def handler_dropped(self) -> None:
        """No handler of the run is left in this process: nobody can await its result
        here, so once it finishes or parks the process lets it go and keeps nothing of it
        (a worker wakes it later). A caller that attaches later follows it again.

        The garbage collector may call this from any thread: the work is on the loop."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._handler_gone)

    def _handler_gone(self) -> None:
        self.handlers -= 1
        if self.handlers <= 0:
            self.stay = False
            self.poke()

    def listener_gone(self) -> None:
        """The handler was cancelled: finish or park the run, then let it go (never cancel it)."""
        self.stay = False
        self.abandoned = True
        self.poke()

    def cancel_run(self) -> asyncio.Future[None]:
        if not self._attached.is_set():
            return asyncio.ensure_future(self._once_attached(self.cancel_run))
        run = self.run
        if run is not None and self.live and self.committer is not None:
            if self.committer.phase is Phase.CREATING:
                return asyncio.ensure_future(self._cancel_once_created(self.committer))
            run.cancel()
            return _done_future(self.loop)
        return asyncio.ensure_future(self._deliver(CANCEL_MESSAGE, None))

    # -- attaching and running -----------------------------------------------------------------

    async def main(self) -> None:
        try:
            await self._patiently(self.store.open, "opening the store")
            LeaveCleanly.install(self.loop)
            while True:  # attach at least once, even if the caller stopped listening
                try:
                    ended = await self._attach_and_run()
                finally:
                    self._attached.set()
                if ended == "finished" or not self.stay or self.outcome.done():
                    return
                await self._wait_for_wake()
                if not self.stay or self.outcome.done():
                    return  # the caller stopped listening: leave the run parked
        except asyncio.CancelledError:
            await self._leave()
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the caller
            if not self.outcome.done():
                self.outcome.set_exception(exc)
        finally:
            live = live_runs(self.store)
            if live.get(self.run_id) is self:
                del live[self.run_id]

    @classmethod
    def follow(cls, engine: Engine, store: Store, run_id: str, link: RunLink) -> RunDriver:
        """A driver that waits for the run's end, whoever runs it, and never runs it here
        (not registered as this process's: a caller that attaches later runs the run)."""
        driver = cls(engine, store, run_id, link, None, follow_only=True)
        driver.task = driver.loop.create_task(driver.main())
        return driver

    async def _leave(self) -> None:
        """The process lets go of the run (its loop ends, SIGTERM, a worker closes): stop the
        steps, let the commits already queued land, and hand the lease back (promise 12)."""
        committer, claimed = self.committer, self.claimed
        if committer is None and claimed is not None:  # a worker's claim, not yet taken up
            self.claimed = None
            await self._hand_back(claimed.epoch)
            return
        if committer is None or committer.phase in (Phase.PARKED, Phase.LOST):
            return
        finished = committer.phase is Phase.FINISHED
        committer.lose(asyncio.CancelledError())
        with contextlib.suppress(BaseException):
            await committer.settled(timeout=LEAVE_TIMEOUT)
        if finished or not committer.has_row:
            return
        await self._hand_back(committer.epoch)

    async def _hand_back(self, epoch: int) -> None:
        try:  # bounded: a process that is leaving must not hang on a store going away
            await asyncio.wait_for(
                self.store.release([(self.run_id, epoch)], self.store.owner), LEAVE_TIMEOUT
            )
        except Exception as exc:  # noqa: BLE001 - leaving anyway: the lease will expire
            log.warning("piton: could not hand back the lease of run %r: %r", self.run_id, exc)

    async def _attach_and_run(self) -> str:
        store = self.store
        if self.start_event is not None:
            start_event, self.start_event = self.start_event, None  # one attempt to create
            with contextlib.suppress(AlreadyCreated):
                return await self._create_and_run(start_event)
        elif self.restored is not None:
            restored, self.restored = self.restored, None
            with contextlib.suppress(AlreadyCreated):  # the run id exists: attach to it
                return await self._create_restored(restored)
        record, self.claimed = self.claimed, None
        if record is not None:
            epoch: int | None = record.epoch
        else:
            record = await self._patiently(lambda: store.get(self.run_id), "reading the run")
            if record is None:
                raise RunNotFound(f"No run '{self.run_id}' in {store.url}.")
            if record.workflow != self.engine.name:
                raise WorkflowRuntimeError(
                    f"Run '{self.run_id}' belongs to workflow '{record.workflow}', not "
                    f"'{self.engine.name}'. Use another run_id."
                )
            if record.finished:
                await self._replay_finished(record)
                return "finished"
            if self.follow_only:
                return "busy"
            epoch = await self._patiently(  # a claim by the same owner may be repeated
                lambda: store.claim(self.run_id, store.owner, store.lease), "claiming the run"
            )
        if epoch is None:
            return "busy"
        try:
            loaded = await self._patiently(lambda: store.load(self.run_id), "loading the run")
            state = rebuild(loaded, self.engine, self.ser)
            inbox = self.decode_inbox(loaded.inbox)
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
            first = self.ser.loads(record.start, TypeResolver(self.engine.graph.event_types))
        return await self._execute(
            state,
            epoch=epoch,
            seq=loaded.record.seq,
            begin=i.Begin(self.clock.now(), first, store.owner, epoch),
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
        store, now = self.store, self.clock.now()
        start = self.ser.dumps(start_event, f"start event {type(start_event).__name__}")
        record = RunRecord(
            run_id=self.run_id,
            workflow=self.engine.name,
            status="running",
            fingerprint=self.engine.fingerprint,
            owner=store.owner,
            epoch=1,
            lease_until=SYSTEM_CLOCK.now() + store.lease,  # leases are real time
            start=start,
        )
        state = self.engine.new_state(self.run_id, values=self._initial_values())
        return await self._execute(
            state,
            epoch=1,
            seq=0,
            begin=i.Begin(now, start_event, store.owner, 1),
            create=record,
        )

    async def _create_restored(self, state: RunState) -> str:
        """A new run that goes on from a restored context's unfinished run: created with
        the state as its snapshot at seq 0 (one transaction), then resumed as after a
        crash (steps that were running run again)."""
        store, now = self.store, self.clock.now()
        state.run_id = self.run_id
        state.timeout = self.engine.config.timeout
        snapshot = json.dumps(encode_run(state, self.ser, keep_running=True))
        record = RunRecord(
            run_id=self.run_id,
            workflow=self.engine.name,
            status="running",
            fingerprint=self.engine.fingerprint,
            owner=store.owner,
            epoch=1,
            lease_until=SYSTEM_CLOCK.now() + store.lease,
        )
        self.link.state = None
        return await self._execute(
            state,
            epoch=1,
            seq=0,
            begin=i.Begin(now, None, store.owner, 1),
            create=record,
            create_snapshot=snapshot,
        )

    def _initial_values(self) -> Any:
        values = self.link.values
        if values is None and self.link.state is not None:
            values = self.link.state.values
        return values

    def _decode_stream(self, text: str) -> Event:
        value = self.ser.loads(text, TypeResolver(self.engine.graph.event_types))
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
        create_snapshot: str | None = None,
    ) -> str:
        state.durable = True
        committer = DurableCommitter(
            self.store,
            state,
            self.ser,
            epoch=epoch,
            seq=seq,
            strict=self.engine.config.durability == "strict",
            snapshot_every=self.engine.config.snapshot_every,
            clock=self.clock,
            create=create,
            deadline=self.deadline,
        )
        committer.create_snapshot = create_snapshot
        run = Runner(
            self.engine,
            state,
            self.link,
            committer=committer,
            outcome=self.outcome,
            stream=self.stream,  # shared across re-attachments
        )
        committer.runner = run
        run.on_finish = self._on_finish
        tel = start_run(
            self.engine.name,
            self.run_id,
            epoch=epoch,
            owner=self.store.owner,
            resumed=loaded is not None,
            previous=loaded.entries if loaded is not None else (),
        )
        if tel is not None:  # the journal keeps this execution's span, for the next to link
            run.tel = tel
            begin = dataclasses.replace(begin, trace=tel.traceparent)
            committer.keep_park = (
                loaded is None or loaded.record.fingerprint == self.engine.fingerprint
            )
        self._latest = state
        self.run, self.committer = run, committer
        self._attached.set()
        self._notify_stream()  # a listener that came before the run follows it now
        live_runs(self.store)[self.run_id] = self
        keeper = LeaseKeeper.of(self.store, self.loop)
        keeper.runs[self.run_id] = self
        try:
            committer.snapshot_due = loaded is not None  # compact on every resume
            committer.holding = True
            if loaded is not None and loaded.record.fingerprint != self.engine.fingerprint:
                committer.fingerprint = self.engine.fingerprint  # resumed by new code
            run.feed(begin)
            if inbox:
                self.take_inbox(inbox)
            committer.holding = False
            committer.maybe_park()
            return await committer.outcome
        finally:
            if keeper.runs.get(self.run_id) is self:
                del keeper.runs[self.run_id]
            if committer.outcome.done() and not committer.outcome.cancelled():
                self.link.let_go(run.state)
            ended = None if tel is None else _how_it_ended(run, committer)
            if tel is not None and ended is not None:
                tel.end(*ended)

    def decode_inbox(self, inbox: list[tuple[int, str, str | None]]) -> list[Message]:
        """The inbox's events, decoded before any is taken: an event this process cannot
        read fails the load of this run (JournalCorrupted naming it), and stays stored."""
        types = TypeResolver(self.engine.graph.event_types)
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

    def take_inbox(self, messages: list[Message]) -> None:
        run, committer = self.run, self.committer
        assert run is not None and committer is not None
        for msg_id, event, step in messages:
            if msg_id in committer.inbox_taken:
                continue  # taken already; its removal is on its way to the store
            committer.inbox_taken.add(msg_id)
            committer.inbox_done.append(msg_id)
            now = self.clock.now()
            run.feed(i.Cancel(now) if event is None else i.Send(now, event, step))
        if committer.inbox_done and self.live:
            run.feed(i.Checkpoint(self.clock.now(), ""))  # commits the inbox removal

    async def _replay_finished(self, record: RunRecord) -> None:
        self.final_status = record.status
        store = self.store
        loaded = await self._patiently(lambda: store.load(self.run_id), "loading the run")
        self.stream[:] = [self._decode_stream(text) for text in loaded.stream]
        types = TypeResolver(self.engine.graph.event_types)
        if record.status == COMPLETED and record.result is not None:
            self.resolve(self.ser.loads(record.result, types), None)
        else:
            error = (
                self.ser.decode_error(json.loads(record.error), types)
                if record.error
                else WorkflowRuntimeError(f"Run '{self.run_id}' ended as {record.status}.")
            )
            self.resolve(None, error)

    async def drain(self) -> None:
        """Start no other step of the run here; return once the steps running now have
        finished and their commits are written (a worker shutting down)."""
        run, committer = self.run, self.committer
        if run is None or run.done or committer is None:
            return
        run.draining = True
        while run.tasks and not run.done:
            await asyncio.wait(list(run.tasks.values()))
        await committer.settled(timeout=LEAVE_TIMEOUT)

    def wakeable(self, record: RunRecord) -> bool:
        """Whether this process should attach to the run again now: parked with an event
        in its inbox or a deadline passed, or held by nobody (or an owner that is gone)."""
        if self.follow_only:
            return False
        if record.status == "parked":
            return record.inbox > 0 or (
                record.wake_at is not None and record.wake_at <= self.clock.now()
            )
        # a lease is real time (the store's), not run time
        return may_claim(record, self.store.owner, SYSTEM_CLOCK.now())

    def poke(self) -> None:
        """Something this process did may wake the run (an event sent, a caller left)."""
        watching = self._watching
        if watching is not None and not watching.done():
            watching.set_result(None)

    async def _wait_for_wake(self) -> None:
        """Parked (or held by another process): wait for an event, a deadline or the end.

        The waiting costs nothing per run: one ``ParkedWatch`` per store reads the rows of
        every run this process waits on in one call, when the store says work arrived
        or once a second; a deadline is a timer; a send from this process pokes the run.
        """
        self.run = None
        if self.committer is not None:  # parked here: keep nothing of the run but its state
            self.let_go_status, self.committer = self.committer.durable_status, None
        me = asyncio.current_task()
        record: RunRecord | None = None
        while self.stay and not self.outcome.done():  # until its caller walks away
            if me is not None and me.cancelling():
                raise asyncio.CancelledError  # a store driver swallowed it: honour it
            if record is None:
                record = await self._patiently(self._get, "reading the run")
                if record is None:
                    return
            if record.finished:
                await self._replay_finished(record)
                return
            if self.wakeable(record):
                return
            wake_at = record.wake_at if record.status == "parked" else None
            record = None  # the row may be large (its start event): not kept while waiting
            record = await ParkedWatch.of(self.store, self.loop).news(self, wake_at)


def _how_it_ended(
    run: Runner, committer: DurableCommitter
) -> tuple[str, BaseException | None] | None:
    """The status an execution's span ends with: the run's (it finished or parked), or
    ``released`` (the process let it go) or ``lost`` (its lease or its store, with the
    error). None: the run_id was another process's (or an earlier call's) run, which the
    driver now attaches to: the span is dropped unended, so it is never exported."""
    outcome = committer.outcome
    if not outcome.done() or outcome.cancelled():
        return "released", None
    error = outcome.exception()
    if error is None:
        return shown_status(run.state.status), run.state.error
    if isinstance(error, AlreadyCreated):
        return None
    if isinstance(error, asyncio.CancelledError):
        return "released", None
    return "lost", error


def _done_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    future: asyncio.Future[None] = loop.create_future()
    future.set_result(None)
    return future


__all__ = ["RunDriver"]
