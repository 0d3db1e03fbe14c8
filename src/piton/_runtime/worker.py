"""Worker: resumes a store's unfinished runs and wakes parked ones when they are due."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from piton.errors import WorkflowConfigurationError
from piton.stores.base import Store, open_store

if TYPE_CHECKING:
    from piton.handler import WorkflowHandler
    from piton.workflow import Workflow


log = logging.getLogger("piton.worker")


class Worker:
    """Works on every runnable run of ``workflows`` in ``store`` until closed.

        async with Worker("sqlite:///runs.db", workflows=[Convert]):
            await asyncio.sleep(3600)

    Unfinished runs are resumed at start (their owner crashed, or its lease expired);
    parked runs are woken when an event arrives in their inbox or their deadline
    passes. Closing the worker leaves its runs parked or resumable, never cancelled.
    """

    def __init__(
        self,
        store: Store | str,
        workflows: Iterable[Workflow | type[Workflow]],
        *,
        poll_interval: float = 0.5,
    ) -> None:
        from piton.workflow import Workflow

        self.store = open_store(store)
        self.poll_interval = poll_interval
        self.workflows: dict[str, Workflow] = {}
        for w in workflows:
            instance = w() if isinstance(w, type) else w
            if not isinstance(instance, Workflow):
                raise WorkflowConfigurationError(f"Worker takes workflows, got {w!r}.")
            instance._store_arg = self.store
            self.workflows[instance.workflow_name] = instance
        self._task: asyncio.Task[None] | None = None
        self._runs: dict[str, asyncio.Task[Any]] = {}
        self._idle = asyncio.Event()

    async def __aenter__(self) -> Worker:
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
        for record in await self.store.runnable(list(self.workflows), time.time()):
            if record.run_id in self.store.live or record.run_id in self._runs:
                continue
            workflow = self.workflows[record.workflow]
            handler = workflow._attach(record.run_id, stay=False)
            task = handler._task
            assert task is not None
            self._runs[record.run_id] = task
            task.add_done_callback(functools.partial(self._forget, record.run_id))
            handler.add_done_callback(functools.partial(_report, record.run_id))
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


def _report(run_id: str, handler: WorkflowHandler) -> None:
    """A run's own failure is stored with the run; a failure to load or drive it is logged.

    A run the worker could not load keeps its lease until it expires, then is tried again
    (by this or another worker): the lease is the back-off.
    """
    if handler.cancelled():
        return
    exc = handler.exception()
    if exc is not None and not handler._stored_outcome:
        log.error("piton worker: run %r could not be resumed: %s", run_id, exc, exc_info=exc)


__all__ = ["Worker"]
