"""The durable runs this process drives: who drives which run, and their leases.

- ``live_runs(store)``: run_id -> the RunDriver driving it here, per database (two store
  objects on one database share it, since they share the process's owner id);
- ``LeaseKeeper``: renews the leases of every run one store object drives on one loop,
  in one store call;
- ``ParkedWatch``: wakes the drivers of this process's callers that wait on parked runs
  (or on runs another process holds), reading all their rows in one store call;
- ``LeaveCleanly``: on SIGTERM, hands the leases back before the process dies (promise 12).

These registries are the runtime's; stores hold data only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import weakref
from typing import TYPE_CHECKING

from piton.errors import JournalCorrupted, LeaseLost, StoreError
from piton.stores.base import RunRecord, Store

if TYPE_CHECKING:
    from piton._runtime.durable import RunDriver

log = logging.getLogger("piton.run")

_LIVE: dict[str, dict[str, RunDriver]] = {}


def live_runs(store: Store) -> dict[str, RunDriver]:
    """run_id -> the RunDriver driving it in this process, whichever store object it used."""
    return _LIVE.setdefault(store.identity, {})


class LeaseKeeper:
    """Renews the leases of every run one store object drives on one loop, in one call.

    It also looks for events another process put in a running run's inbox. One keeper
    per (store, loop) instead of a task per run: a renewal costs one store call for all.
    """

    _keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, LeaseKeeper]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.runs: dict[str, RunDriver] = {}
        self.task = loop.create_task(self._loop())

    @classmethod
    def of(cls, store: Store, loop: asyncio.AbstractEventLoop) -> LeaseKeeper:
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
        records = await store.get_many([d.run_id for d in active])
        for driver in active:
            record = records.get(driver.run_id)
            if record is not None and record.inbox > 0 and driver.live:
                loaded = await store.load(driver.run_id)
                try:
                    messages = driver.decode_inbox(loaded.inbox)
                except JournalCorrupted as exc:
                    log.error("piton: %s", exc)
                    continue
                if driver.live:
                    driver.take_inbox(messages)


class ParkedWatch:
    """Wakes the drivers that wait on runs this process does not run now, for one store.

    A caller awaiting a parked run holds a driver that must learn when the run can go
    on (an event arrived, its deadline passed, its owner went away) or ended elsewhere.
    One watch per (store, loop) reads the rows of every waiting run in one ``get_many``,
    when the store says work arrived (NOTIFY, pub/sub) or every ``POLL`` seconds, so
    10,000 parked runs cost one query a second, not 10,000. A deadline is a timer on the
    run's clock; a send from this process pokes its driver directly (``RunDriver.poke``).
    """

    POLL = 1.0  # seconds between reads when the store says nothing
    GAP = 0.05  # at least this long between two reads, however often the store wakes us

    _watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, ParkedWatch]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.waiting: dict[str, tuple[asyncio.Future[RunRecord | None], RunDriver]] = {}
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, store: Store, loop: asyncio.AbstractEventLoop) -> ParkedWatch:
        watches = cls._watches.setdefault(loop, {})
        watch = watches.get(id(store))
        if watch is None or watch.store is not store:
            watch = watches[id(store)] = cls(store, loop)
        return watch

    async def news(self, driver: RunDriver, wake_at: float | None) -> RunRecord | None:
        """Wait until the run may be attached to again or has ended (or its deadline
        ``wake_at``, run time, comes); its row as read then, or None when the driver should
        read it itself (poked, its deadline came, or the row is gone)."""
        future: asyncio.Future[RunRecord | None] = self.loop.create_future()
        timer = None
        if wake_at is not None:
            clock = driver.clock
            timer = clock.call_later(max(wake_at - clock.now(), 0.0), _settle, future, None)
        driver._watching = future
        self.waiting[driver.run_id] = (future, driver)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._loop())
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            driver._watching = None
            if self.waiting.get(driver.run_id, (None,))[0] is future:
                del self.waiting[driver.run_id]

    async def _loop(self) -> None:
        store = self.store
        while self.waiting:
            started = self.loop.time()
            try:
                await store.wait_for_work(self.POLL)
            except Exception:  # noqa: BLE001 - a store that cannot listen: poll
                await asyncio.sleep(self.POLL)
            if not self.waiting:
                return
            try:
                records = await store.get_many(list(self.waiting))
            except Exception as exc:  # noqa: BLE001 - never leave the waiters unwatched
                log.warning("piton: watching parked runs in %s failed: %r", store.url, exc)
                await asyncio.sleep(self.POLL)  # the store is away: look again later
                continue
            for run_id, (future, driver) in list(self.waiting.items()):
                if future.done():
                    continue
                record = records.get(run_id)
                if record is None or record.finished or driver.wakeable(record):
                    future.set_result(record)
            records = {}  # not kept while waiting
            rest = self.GAP - (self.loop.time() - started)
            if rest > 0:
                await asyncio.sleep(rest)


def _settle(future: asyncio.Future[RunRecord | None], value: RunRecord | None) -> None:
    if not future.done():
        future.set_result(value)


class LeaveCleanly:
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
            d.task for d in LeaseKeeper.drivers(loop) if d.task is not None and not d.task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


__all__ = ["LeaseKeeper", "LeaveCleanly", "ParkedWatch", "live_runs"]
