"""Waking the processes that wait for work: shared by the stores that can be told."""

from __future__ import annotations

import asyncio


class Waiters:
    """Who waits for work on one event loop, and a notice that came while nobody waited.

    A notice that finds no waiter is kept, so the next ``wait`` returns at once: a worker
    that was busy polling when an event was delivered polls again instead of sleeping.
    """

    def __init__(self) -> None:
        self.futures: set[asyncio.Future[None]] = set()
        self.pending = False

    async def wait(self, timeout: float) -> None:
        if self.pending:
            self.pending = False
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self.futures.discard(waiter)

    def wake(self) -> None:
        futures, self.futures = self.futures, set()
        woke = False
        for waiter in futures:
            if not waiter.done():
                waiter.set_result(None)
                woke = True
        if not woke:
            self.pending = True


__all__ = ["Waiters"]
