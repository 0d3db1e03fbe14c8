"""The durable run's committer: makes a Runner's commit points durable in a Store.

A ``DurableCommitter`` is the Runner's ``Committer`` for a run with a store. It encodes
each reducer input as it is fed (a value that cannot be stored fails where it was made),
turns the reducer's commit points into ``CommitRequest``s, and writes them in order from
one task, merging those that queue up while a write is in flight. When a write is
durable it tells the Runner (``advance``), which then shows the facts that commit holds
and starts the steps that waited for it (promise 9).

It also owns the run's phase in this process::

    CREATING --(first commit lands)--> RUNNING --(idle: park)--> PARKED
        |                                 |
        +------(the run ends)-------------+----------> FINISHED
    any phase --(a commit fails, the lease is lost, the process lets go)--> LOST

PARKED and LOST close the run here: later inputs are ignored, the store has the rest.

While the store is unavailable (a server restart, a dropped connection) the committer
keeps the run as it is, its steps going on, and writes the commit again with back-off
(``outage.Outage``) until ``deadline`` seconds have passed (None: for ever, as workers
do); only then is the run lost here, with ``StoreUnavailable``. Nothing is shown to the
world meanwhile: ``advance`` waits for the commit (promise 9). A write whose outcome is
unknown (the connection broke while it was under way) is resolved by reading the run's
row back (``_landed``): our epoch and the seq after the commit mean it landed; the seq
before it means it did not, and it is written again; anything else means another process
has the run (``LeaseLost``, or ``AlreadyCreated`` for a first commit). No guessing.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from typing import TYPE_CHECKING, Any

from piton._core import inputs as i
from piton._core.reducer import waiting_count
from piton._core.state import (
    COMPLETED,
    FINAL,
    PARKED,
    RUN_TIMER,
    RUNNING,
    RunState,
    shown_status,
)
from piton._core.status import RunStatus
from piton._journal_codec import encode_input
from piton._run_codec import encode_run
from piton._runtime import faults
from piton._runtime.clock import Clock
from piton._runtime.outage import Outage
from piton.errors import (
    ContextSerdeError,
    LeaseLost,
    PitonError,
    RunNotFound,
    StoreError,
    StoreUnavailable,
    StoreUnreachable,
)
from piton.events import Event
from piton.serde import JsonSerializer
from piton.stores.base import CommitRequest, RunRecord, Store

if TYPE_CHECKING:
    from piton._runtime.runner import Runner

log = logging.getLogger("piton.run")

PARK_GRACE = 0.25  # a run idle until a deadline closer than this stays in memory


class _Default(enum.Enum):
    STORE = "the store's deadline"


STORE_DEADLINE = _Default.STORE  # DurableCommitter(deadline=...): use Store.deadline


class Phase(enum.Enum):
    CREATING = "creating"  # a new run: its first commit creates it; no step starts before
    RUNNING = "running"
    PARKED = "parked"  # idle: the parking commit is queued, the process lets the run go
    FINISHED = "finished"  # the final commit is queued
    LOST = "lost"  # a commit failed, the lease was lost, or the process let go


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.CREATING: frozenset({Phase.RUNNING, Phase.FINISHED, Phase.LOST}),
    Phase.RUNNING: frozenset({Phase.PARKED, Phase.FINISHED, Phase.LOST}),
    Phase.PARKED: frozenset({Phase.LOST}),
    Phase.FINISHED: frozenset({Phase.LOST}),
    Phase.LOST: frozenset(),
}


class AlreadyCreated(Exception):
    """Another process created the run first."""


class DurableCommitter:
    """Commits one run's journal to a store, in order, and tells the Runner what is durable."""

    def __init__(
        self,
        store: Store,
        state: RunState,
        ser: JsonSerializer,
        *,
        epoch: int,
        seq: int,
        strict: bool,
        snapshot_every: int,
        clock: Clock,
        create: RunRecord | None = None,
        deadline: float | None | _Default = STORE_DEADLINE,
    ) -> None:
        self.clock = clock
        # seconds a commit is retried while the store is unavailable (None: for ever)
        self.deadline = store.deadline if deadline is STORE_DEADLINE else deadline
        self.store = store
        self.state = state
        self.ser = ser
        self.epoch = epoch
        self.seq = seq
        self.strict = strict
        self.snapshot_every = snapshot_every
        self.create = create  # the row to create with the first commit
        self.create_snapshot: str | None = None  # the run before that commit (restored)
        self.phase = Phase.CREATING if create is not None else Phase.RUNNING
        # read on every input and step start: plain attributes, kept in step with the phase
        self.holds_steps = strict or self.phase is Phase.CREATING
        self.closed = False  # PARKED or LOST: later inputs are ignored here
        self.ticket = 0
        self.durable = 0
        # the run's status as of its last durable commit: what the world may be told
        self.durable_status: RunStatus = "queued" if create is not None else "running"
        self.runner: Runner  # set by the driver right after construction
        loop = asyncio.get_running_loop()
        self.outcome: asyncio.Future[str] = loop.create_future()
        # a new run: True once its row exists, False if the run_id was taken or it failed
        self.created: asyncio.Future[bool] = loop.create_future()
        if create is None:
            self.created.set_result(True)
        self.inbox_done: list[int] = []  # taken, their removal not yet in a commit
        self.inbox_taken: set[int] = set()  # every message this run took, committed or not
        self.commits = 0
        self.snapshot_due = False
        self.holding = False  # no parking while a resume feeds its inbox
        # telemetry: a commit that parks the run carries no snapshot, so its Park entry (and
        # the span context in it) stays in the journal tail for the next execution to link
        # to; that execution compacts on resume. Never under changed code (see restore).
        self.keep_park = False
        self.fingerprint: str | None = None  # stored with the next commit (new code)
        self._encoded: list[str] = []
        self._stream_out: list[str] = []
        self._open: CommitRequest | None = None  # asked for in this feed, not yet queued
        self._queue: list[tuple[int, CommitRequest]] = []
        self._drainer: asyncio.Task[None] | None = None

    # -- the Committer protocol -------------------------------------------------------------

    def record(self, inp: i.Input) -> None:
        self._encoded.append(encode_input(inp, self.ser))

    def commit(self, entries: tuple[Any, ...]) -> None:
        n = len(entries)
        encoded, self._encoded = self._encoded[:n], self._encoded[n:]
        self.ticket += 1
        self._open = CommitRequest(run_id=self.state.run_id, epoch=self.epoch, seq=0, entries=encoded)
        self.commits += 1
        if self.commits % self.snapshot_every == 0:
            self.snapshot_due = True

    def stream(self, event: Event) -> None:
        try:
            text = self.ser.dumps(event, f"stream event {type(event).__name__}")
        except ContextSerdeError:
            text = json.dumps({"unserializable": type(event).__name__})
        self._stream_out.append(text)

    def after_feed(self) -> None:
        if self._open is not None:
            self._queue_open()
        if self.state.status in FINAL:
            if self.phase is Phase.CREATING or self.phase is Phase.RUNNING:
                self._to(Phase.FINISHED)
            return
        if not self.holding and self.phase is Phase.RUNNING:
            self.maybe_park()

    # -- phases ---------------------------------------------------------------------------

    def _to(self, phase: Phase) -> None:
        if phase not in _NEXT[self.phase]:
            raise AssertionError(f"run {self.state.run_id}: no transition {self.phase} -> {phase}")
        self.phase = phase
        self.holds_steps = self.strict or phase is Phase.CREATING
        self.closed = phase is Phase.PARKED or phase is Phase.LOST

    def maybe_park(self) -> None:
        if self.holding or self.phase is not Phase.RUNNING or self.state.status != RUNNING:
            return
        if self._idle():
            state = self.state  # re-read: the reducer changes it
            tel = self.runner.tel  # the span that parks the run, for the next one to link to
            trace = None if tel is None else tel.traceparent
            self.runner.feed(i.Park(self.clock.now(), trace))  # the reducer parks it, or fails it
            if state.status == PARKED:
                self._to(Phase.PARKED)
                self.runner.drop_timers()  # the store holds the deadlines now

    def _idle(self) -> bool:
        state = self.state
        if state.running or any(state.queues.values()):
            return False
        deadlines = [d for k, d in state.deadlines.items() if k != RUN_TIMER]
        return not deadlines or min(deadlines) > self.clock.now() + PARK_GRACE

    def lose(self, exc: BaseException) -> None:
        """Stop working on this run here; what was committed stays."""
        if self.phase is not Phase.LOST:
            self._to(Phase.LOST)
        self.runner.abandon(exc)
        if not self.created.done():
            self.created.set_result(False)
        if not self.outcome.done():
            self.outcome.set_exception(exc)

    async def settled(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the commits already queued to be written."""
        drainer = self._drainer
        if drainer is not None and not drainer.done():
            await asyncio.wait({drainer}, timeout=timeout)

    @property
    def has_row(self) -> bool:
        return self.create is None

    # -- writing ----------------------------------------------------------------------------

    def _queue_open(self) -> None:
        """After a feed: its commit, now with the feed's stream and status, joins the queue."""
        request = self._open
        if request is None:
            return
        self._open = None
        state = self.state
        request.stream, self._stream_out = self._stream_out, []
        request.status = shown_status(state.status)
        request.waiters = waiting_count(state)
        if state.status == PARKED:
            deadlines = list(state.deadlines.values())
            request.wake_at = min(deadlines) if deadlines else None
            request.release = True
        if state.finished:
            request.result, request.error = self._final_payload()
            request.release = True
        if self.inbox_done:
            request.inbox_done, self.inbox_done = self.inbox_done, []
        if self.fingerprint is not None:
            request.fingerprint, self.fingerprint = self.fingerprint, None
        self._queue.append((self.ticket, request))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

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
            request = _merge([r for _, r in batch])
            request.seq = self.seq
            state = self.state
            if (
                self.snapshot_due
                and not self._encoded
                and not state.finished
                and not (self.keep_park and request.status == PARKED)
            ):
                # the state now is the state after the batch's last entry: it covers them all
                request.snapshot = json.dumps(encode_run(state, self.ser, keep_running=True))
                self.snapshot_due = False
            try:
                await self._write_patiently(request)
            except (AlreadyCreated, StoreError, PitonError) as exc:
                self.lose(exc)
                return
            faults.after_commit()
            self.seq += len(request.entries)
            self.durable = batch[-1][0]
            self.durable_status = request.status
            if self.phase is Phase.LOST:
                continue  # written, but the process let go: nobody is told
            self.runner.advance()
            if request.status == PARKED:
                self._settle("parked")
            elif request.status in FINAL:
                self._settle("finished")

    async def _write_patiently(self, request: CommitRequest) -> None:
        """Write ``request``, retrying while the store is unavailable, until the deadline.

        A try that failed after its request may have reached the server leaves the
        outcome in doubt: before writing again, the run's row is read back (``_landed``).
        """
        outage = Outage(
            f"run '{request.run_id}': commit at seq {request.seq}",
            self.deadline,
            log,
            advice=(
                "the run stopped here after its last durable commit; once the store is back, "
                f"w.run(run_id={request.run_id!r}) or a worker resumes it"
            ),
        )
        doubted = False  # a try may have reached the server: read back before writing again
        while True:
            try:
                await self._attempt(request, doubted)
                break
            except StoreUnreachable as exc:  # this try never reached the server
                error: StoreUnavailable = exc
            except StoreUnavailable as exc:
                doubted, error = True, exc
            if self.phase is Phase.LOST:
                raise error  # the process let the run go: stop trying
            outage.failed(error)  # raises once the deadline has passed
            await outage.pause()
        outage.over()

    async def _attempt(self, request: CommitRequest, doubted: bool) -> None:
        """One try: if an earlier one is in doubt, read the run back first; then write."""
        if doubted and await self._landed(request):
            return
        try:
            await self._write(request)
        except (LeaseLost, AlreadyCreated):
            # refused by the fence: after a try in doubt, maybe that try landed late
            if not doubted or not await self._landed_once_more(request):
                raise

    async def _write(self, request: CommitRequest) -> None:
        record = self.create
        if record is None:
            await self.store.commit(request)
            return
        # a new run: create it with the first commit (one transaction when it is plain)
        # snapshot= only when there is one: a store written before the argument still works
        extra = {} if self.create_snapshot is None else {"snapshot": self.create_snapshot}
        if request.plain:
            created = await self.store.create(record, request.entries, request.stream, **extra)
        else:
            created = await self.store.create(record, [], [], **extra)
            if created:
                self._row_exists()  # a failure of the commit below is a commit's failure
                await self.store.commit(request)
        if not created:
            raise AlreadyCreated()
        self._row_exists()

    def _row_exists(self) -> None:
        self.create = None
        if not self.created.done():
            self.created.set_result(True)
        if self.phase is Phase.CREATING:
            self._to(Phase.RUNNING)

    async def _landed(self, request: CommitRequest) -> bool:
        """Whether ``request``, whose write failed with its outcome unknown, is in the store:
        read the run's row back and compare its epoch and seq. Raises ``LeaseLost`` (or
        ``AlreadyCreated``, for a first commit) when the row shows another process's run."""
        run_id, seq = request.run_id, request.seq
        after = seq + len(request.entries)  # the run's seq once the request has landed
        record = await self.store.get(run_id)
        mine = self.create
        if mine is not None:  # the first commit: did our row come into being?
            if record is None:
                return False  # the create did not land: write it again
            released = record.owner is None and request.release and record.seq == after
            if record.epoch != mine.epoch or not (record.owner == mine.owner or released):
                raise AlreadyCreated()
            self._row_exists()  # ours: whatever is missing is written as a commit
        elif record is None:
            raise RunNotFound(
                f"Run '{run_id}' is gone from the store (deleted?) while its commit at seq "
                f"{seq} was in doubt; this process stops working on it."
            )
        elif record.epoch != request.epoch:
            raise LeaseLost(
                f"Run '{run_id}' was taken over by another process (epoch {record.epoch}, ours "
                f"{request.epoch}) while its commit at seq {seq} was in doubt; this process "
                "stops working on it."
            )
        if record.seq == after and record.status == request.status:
            log.info("piton: run '%s': its commit at seq %d was in doubt; it landed.", run_id, seq)
            return True
        if record.seq == seq:
            log.info(
                "piton: run '%s': its commit at seq %d was in doubt; it did not land, writing "
                "it again.",
                run_id,
                seq,
            )
            return False
        raise LeaseLost(
            f"Run '{run_id}': its commit at seq {seq} ({len(request.entries)} entries, status "
            f"{request.status}) was in doubt, and the store holds seq {record.seq} with status "
            f"{record.status}: not what this process wrote. It stops working on the run."
        )

    async def _landed_once_more(self, request: CommitRequest) -> bool:
        """After the fence refused a rewrite: read back once; if the store cannot tell now,
        the refusal stands (the run is let go here; what was committed stays)."""
        try:
            return await self._landed(request)
        except StoreUnavailable:
            return False

    def _settle(self, outcome: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)


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
    merged.waiters = last.waiters
    merged.fingerprint = next((r.fingerprint for r in batch if r.fingerprint), None)
    return merged


__all__ = ["STORE_DEADLINE", "AlreadyCreated", "DurableCommitter", "Phase"]
