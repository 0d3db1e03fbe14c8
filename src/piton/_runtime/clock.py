"""The clock: the one way the runtime reads time and waits for it.

Run time (the ``at`` of every input, timers for ``ctx.sleep``, ``wait_for_event``
time-outs, retry back-offs, the run's time-out, and the ``now`` a worker asks the store
for due runs) goes through a :class:`Clock`. ``SYSTEM_CLOCK`` is the real one;
:class:`FakeClock` (``piton.testing.FakeClock``) is moved by hand, so tests of an hour's
sleep take no time. Leases and polling are not run time: they measure whether a process
is alive, against the store's own clock, and stay on real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        """Call ``callback(*args)`` on the running loop once ``delay`` seconds have passed."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time: ``time.time()`` and the event loop's timers."""

    now = staticmethod(time.time)  # read once per input: the builtin itself, no wrapper

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class _FakeTimer:
    __slots__ = ("args", "callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[..., None], args: tuple[Any, ...]):
        self.deadline = deadline
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when a test says so.

        clock = FakeClock()
        handler = Nap(timeout=None, clock=clock).run()
        await clock.next()          # jump to the first deadline the run set (its sleep)
        assert await handler == "rested"

    ``advance(seconds)`` moves time on and fires every timer due on the way, in deadline
    order, letting the loop run between them; ``next()`` waits (in real time, up to
    ``timeout``) until some timer is set, then jumps to the earliest one.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        if delay <= 0:  # due already (a resumed run's past deadline): no need to advance
            return asyncio.get_running_loop().call_soon(callback, *args)
        timer = _FakeTimer(self._now + float(delay), callback, args)
        heapq.heappush(self._timers, (timer.deadline, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(seconds, _resolve, future)
        try:
            await future
        finally:
            timer.cancel()  # a sleep given up is no deadline for next() to jump to

    @property
    def pending(self) -> list[float]:
        """The deadlines of the timers set and not yet fired or cancelled, earliest first."""
        return sorted(t.deadline for _, _, t in self._timers if not t.cancelled)

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing the timers due on the way."""
        if seconds < 0:
            raise ValueError(f"FakeClock.advance({seconds}): time only moves forward.")
        target = self._now + seconds
        await _settle()
        while self._timers and self._timers[0][0] <= target:
            deadline, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, deadline)
            timer.callback(*timer.args)
            await _settle()
        self._now = target
        await _settle()

    async def next(self, timeout: float = 10.0) -> float:
        """Wait (real time) until a timer is set, jump to the earliest, fire it; return the
        new time. Raises TimeoutError if nothing sets a timer within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            await _settle()
            pending = self.pending
            if pending:
                await self.advance(max(pending[0] - self._now, 0.0))
                return self._now
            if loop.time() > give_up:
                raise TimeoutError(f"FakeClock.next(): no timer was set within {timeout} s.")
            await asyncio.sleep(0.001)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:.3f}, pending={len(self.pending)})"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _settle(rounds: int = 20) -> None:
    """Let the loop run what is ready now (steps resuming, callbacks)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "Timer"]
