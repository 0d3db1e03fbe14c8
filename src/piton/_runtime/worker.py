"""Worker: claims a store's runnable runs, up to its concurrency, and drives them.

A worker is a loop: wait until the store says work arrived (NOTIFY, pub/sub) or
``poll_interval`` passes, then claim runnable runs of its workflows in one atomic store
call (``Store.claim_runnable``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a Lua script
on Redis) and drive each until it finishes or parks. A parked run is let go at once:
only runs executing now count toward ``concurrency``. Leases are renewed for every run
of the process by one ``LeaseKeeper``.

Shutting down (``drain``): claim nothing more, let the steps running now finish (up to
``grace`` seconds), commit them, then hand every lease back so another worker goes on
at once. ``close`` without a drain lets go at once (steps running are cut off and run
again elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable
from typing import Any

from piton._runtime.clock import SYSTEM_CLOCK, Clock
from piton._runtime.durable import RunDriver
from piton._runtime.engine import Engine
from piton._runtime.live import live_runs
from piton._runtime.outage import patiently
from piton.errors import WorkflowConfigurationError
from piton.stores.base import RunRecord, Store, open_store

log = logging.getLogger("piton.worker")


class RunWorker:
    """Works on the runnable runs of the ``engines``' workflows in ``store`` until closed."""

    def __init__(
        self,
        store: Store | str,
        engines: Iterable[Engine],
        *,
        concurrency: int = 100,
        poll_interval: float = 0.5,
        grace: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise WorkflowConfigurationError(
                f"Worker concurrency must be an integer >= 1 (the most runs it executes at "
                f"once), got {concurrency!r}."
            )
        if not isinstance(grace, int | float) or isinstance(grace, bool) or grace < 0:
            raise WorkflowConfigurationError(
                f"Worker grace must be a number of seconds >= 0, got {grace!r}."
            )
        self.store = open_store(store)
        self._own_store = not isinstance(store, Store)  # made from a URL: closed with us
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.grace = float(grace)
        self.engines: dict[str, Engine] = {}
        for engine in engines:
            if engine.name in self.engines and self.engines[engine.name] is not engine:
                raise WorkflowConfigurationError(
                    f"Two workflows named '{engine.name}' were given to one worker; a run "
                    "names its workflow, so the worker could not tell which one runs it."
                )
            self.engines[engine.name] = engine
        if not self.engines:
            raise WorkflowConfigurationError("A worker needs at least one workflow to run.")
        clocks = {id(e.clock): e.clock for e in self.engines.values()}
        self.clock = clock or (next(iter(clocks.values())) if len(clocks) == 1 else SYSTEM_CLOCK)
        self.claimed = 0  # runs this worker claimed since it started (for logs and tests)
        self._task: asyncio.Task[None] | None = None
        self._drivers: dict[str, RunDriver] = {}
        self._idle = asyncio.Event()
        self._freed: asyncio.Event | None = None
        self._stopping = False

    async def __aenter__(self) -> RunWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def active(self) -> int:
        """Runs this worker executes now (parked runs are not held, so not counted)."""
        return len(self._drivers)

    async def start(self) -> None:
        # a store that cannot be reached yet (a worker started before its database): wait
        await patiently(
            self.store.open, what=f"worker: opening {self.store.url}", deadline=None, log=log
        )
        log.info(
            "piton worker %s: working on %s in %s (concurrency %d)",
            self.store.owner,
            ", ".join(sorted(self.engines)),
            self.store.url,
            self.concurrency,
        )
        self._freed = asyncio.Event()
        await self.poll()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def poll(self) -> int:
        """Claim runnable runs, as many as there are free slots; return how many."""
        free = self.concurrency - len(self._drivers)
        if free <= 0 or self._stopping:
            return 0
        store = self.store
        records = await store.claim_runnable(
            list(self.engines), self.clock.now(), store.owner, store.lease, free
        )
        started = 0
        live = live_runs(store)
        for record in records:
            if self._stopping:
                await self._hand_back(record, None)
                continue
            here = live.get(record.run_id)
            if here is not None:
                # a caller in this process waits on the run: it attaches itself
                await self._hand_back(record, here)
                continue
            self._launch(record)
            started += 1
        return started

    def _launch(self, record: RunRecord) -> None:
        engine = self.engines[record.workflow]
        driver = RunDriver.launch(
            engine,
            self.store,
            record.run_id,
            engine.new_link(),
            None,
            stay=False,
            claimed=record,
            deadline=None,  # a worker waits out an outage of its store, however long
        )
        self.claimed += 1
        self._drivers[record.run_id] = driver
        self._idle.clear()
        task = driver.task
        assert task is not None
        task.add_done_callback(functools.partial(self._forget, record.run_id, driver))
        driver.outcome.add_done_callback(functools.partial(_report, driver))

    async def _hand_back(self, record: RunRecord, here: RunDriver | None) -> None:
        with contextlib.suppress(Exception):  # not handed back: its lease expires instead
            await self.store.release([(record.run_id, record.epoch)], self.store.owner)
        if here is not None:
            here.poke()

    def _forget(self, run_id: str, driver: RunDriver, _: object) -> None:
        if self._drivers.get(run_id) is driver:
            del self._drivers[run_id]
        if self._freed is not None:
            self._freed.set()  # a slot is free: claim again without waiting for the poll
        if not self._drivers:
            self._idle.set()

    async def _loop(self) -> None:
        failing = False
        freed = self._freed
        assert freed is not None
        while not self._stopping:
            if len(self._drivers) >= self.concurrency:
                freed.clear()
                await freed.wait()  # full: nothing to claim until a run finishes or parks
                continue
            if not freed.is_set():
                await self._wait_for_work(freed)
            freed.clear()
            try:
                await self.poll()
            except Exception as exc:  # noqa: BLE001 - log once per outage, keep polling
                if not failing:
                    log.error(
                        "piton worker: claiming runs in %s failed: %s (retrying every %ss)",
                        self.store.url,
                        exc,
                        self.poll_interval,
                    )
                failing = True
                await asyncio.sleep(self.poll_interval)
            else:
                if failing:
                    log.info("piton worker: %s answers again", self.store.url)
                failing = False

    async def _wait_for_work(self, freed: asyncio.Event) -> None:
        """Until the store says work arrived, a slot frees up, or ``poll_interval`` passes."""
        told = asyncio.ensure_future(self.store.wait_for_work(self.poll_interval))
        slot = asyncio.ensure_future(freed.wait())
        try:
            await asyncio.wait(
                {told, slot}, timeout=self.poll_interval, return_when="FIRST_COMPLETED"
            )
        finally:
            slot.cancel()
            told.cancel()
            with contextlib.suppress(BaseException):
                await told  # a store that cannot listen fails here: we polled anyway

    async def drain(self, grace: float | None = None) -> None:
        """Shut down gracefully: claim nothing more, let the running steps finish (up to
        ``grace`` seconds, the worker's by default), then hand every lease back."""
        grace = self.grace if grace is None else grace
        self._stopping = True
        await self._stop_loop()
        drivers = list(self._drivers.values())
        if drivers:
            log.info(
                "piton worker %s: draining %d run(s), up to %ss",
                self.store.owner,
                len(drivers),
                grace,
            )
            settling = [asyncio.ensure_future(d.drain()) for d in drivers]
            _, late = await asyncio.wait(settling, timeout=grace)
            for future in late:
                future.cancel()
            if late:
                log.warning(
                    "piton worker %s: %d run(s) still had steps running after %ss; they run "
                    "again on the run's next owner",
                    self.store.owner,
                    len(late),
                    grace,
                )
        await self.close()

    async def _stop_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def close(self) -> None:
        """Stop now: the runs this worker drives are let go (their leases handed back)."""
        self._stopping = True
        await self._stop_loop()
        drivers = list(self._drivers.values())
        tasks = [d.task for d in drivers if d.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        # a run claimed for a driver that was cancelled before it began: hand it back too
        unstarted = [(d.run_id, d.claimed.epoch) for d in drivers if d.claimed is not None]
        if unstarted:
            with contextlib.suppress(Exception):  # not handed back: its lease expires
                await asyncio.wait_for(self.store.release(unstarted, self.store.owner), 2.0)
        if self._own_store:
            with contextlib.suppress(Exception):
                await self.store.close()
        log.info("piton worker %s: stopped", self.store.owner)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no run is active in this worker (for tests and scripts)."""
        if self._drivers:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)


def _report(driver: RunDriver, outcome: asyncio.Future[Any]) -> None:
    """A run's own failure is stored with the run; a failure to load or drive it is logged.

    A run the worker could not load keeps its lease until it expires, then is tried again
    (by this or another worker): the lease is the back-off.
    """
    if outcome.cancelled():
        return
    exc = outcome.exception()
    if exc is not None and not driver.stored_outcome:
        log.error(
            "piton worker: run %r could not be driven here: %s", driver.run_id, exc, exc_info=exc
        )


__all__ = ["RunWorker"]
