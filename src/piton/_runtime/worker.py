"""Worker: resumes a store's unfinished runs and wakes parked ones when they are due."""

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
from piton.errors import WorkflowConfigurationError
from piton.stores.base import Store, open_store

log = logging.getLogger("piton.worker")


class RunWorker:
    """Works on every runnable run of the ``engines``' workflows in ``store`` until closed.

    Unfinished runs are resumed at start (their owner crashed, or its lease expired);
    parked runs are woken when an event arrives in their inbox or their deadline
    passes. Closing the worker leaves its runs parked or resumable, never cancelled.
    ``clock`` is the run time asked of the store for due runs (the engines' clock).
    """

    def __init__(
        self,
        store: Store | str,
        engines: Iterable[Engine],
        *,
        poll_interval: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        self.store = open_store(store)
        self.poll_interval = poll_interval
        self.engines: dict[str, Engine] = {}
        for engine in engines:
            if engine.name in self.engines and self.engines[engine.name] is not engine:
                raise WorkflowConfigurationError(
                    f"Two workflows named '{engine.name}' were given to one worker; a run "
                    "names its workflow, so the worker could not tell which one runs it."
                )
            self.engines[engine.name] = engine
        clocks = {id(e.clock): e.clock for e in self.engines.values()}
        self.clock = clock or (next(iter(clocks.values())) if len(clocks) == 1 else SYSTEM_CLOCK)
        self._task: asyncio.Task[None] | None = None
        self._runs: dict[str, asyncio.Task[Any]] = {}
        self._idle = asyncio.Event()

    async def __aenter__(self) -> RunWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self.store.open()
        await self.poll()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def poll(self) -> int:
        """Take every run that is runnable now; return how many were started."""
        started = 0
        live = live_runs(self.store)
        for record in await self.store.runnable(list(self.engines), self.clock.now()):
            if record.run_id in live or record.run_id in self._runs:
                continue
            engine = self.engines[record.workflow]
            driver = RunDriver.launch(
                engine, self.store, record.run_id, engine.new_link(), None, stay=False
            )
            task = driver.task
            assert task is not None
            self._runs[record.run_id] = task
            task.add_done_callback(functools.partial(self._forget, record.run_id))
            driver.outcome.add_done_callback(functools.partial(_report, driver))
            started += 1
        return started

    def _forget(self, run_id: str, _: object) -> None:
        self._runs.pop(run_id, None)
        if not self._runs:
            self._idle.set()

    async def _loop(self) -> None:
        failing = False
        while True:
            try:  # woken early when the store can tell (a delivered event)
                await self.store.wait_for_work(self.poll_interval)
            except Exception:  # noqa: BLE001 - the store is down: poll again later
                await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except Exception as exc:  # noqa: BLE001 - log once per outage, keep polling
                if not failing:
                    log.error("piton worker: looking for runs in %s failed: %s", self.store.url, exc)
                failing = True
            else:
                if failing:
                    log.info("piton worker: %s answers again", self.store.url)
                failing = False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._runs.values()):
            task.cancel()
        for task in list(self._runs.values()):
            with contextlib.suppress(BaseException):
                await task

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no run is active in this worker (for tests and scripts)."""
        if self._runs:
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
            "piton worker: run %r could not be resumed: %s", driver.run_id, exc, exc_info=exc
        )


__all__ = ["RunWorker"]
