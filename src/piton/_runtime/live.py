"""The durable runs this process drives: who drives which run, and their leases.

- ``live_runs(store)``: run_id -> the RunDriver driving it here, per database (two store
  objects on one database share it, since they share the process's owner id);
- ``LeaseKeeper``: renews the leases of every run one store object drives on one loop,
  in one store call;
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
from piton.stores.base import Store

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
        records = await asyncio.gather(*(store.get(d.run_id) for d in active))
        for driver, record in zip(active, records, strict=True):
            if record is not None and record.inbox > 0 and driver.live:
                loaded = await store.load(driver.run_id)
                try:
                    messages = driver.decode_inbox(loaded.inbox)
                except JournalCorrupted as exc:
                    log.error("piton: %s", exc)
                    continue
                if driver.live:
                    driver.take_inbox(messages)


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


__all__ = ["LeaseKeeper", "LeaveCleanly", "live_runs"]
