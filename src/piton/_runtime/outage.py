"""Waiting out a store that does not answer: back-off, a deadline, one log line per outage.

When PostgreSQL or Redis restarts, or the network drops, store calls fail with
``StoreUnavailable`` until the server is back; the stores reconnect on the next call. The
runtime retries what is safe to retry, with exponential back-off, until a deadline
(``Store.deadline``, for callers) or for ever (workers):

- ``patiently(op, what=..., deadline=..., log=...)`` runs a store call until it answers.
  For operations that are safe to repeat: reads, claims and renewals by the same owner,
  releases. With ``idempotent=False`` (``deliver``) it retries only a ``StoreUnreachable``,
  whose request certainly never ran; a failure of unknown outcome is raised at once.
- ``Outage`` is the state of one outage of one operation (when it began, the next pause,
  whether it was logged), for loops that retry by themselves (the committer).

Outages are measured in real time (the loop's monotonic clock), like leases: they are
about servers, not about a run's own time, which a ``FakeClock`` may move.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from piton.errors import StoreUnavailable, StoreUnreachable

T = TypeVar("T")

FIRST_PAUSE = 0.05  # seconds before the first retry; doubled after each failure
LONGEST_PAUSE = 2.0  # the back-off stops growing here


def retry_safe(exc: BaseException, *, idempotent: bool) -> bool:
    """Whether the store call that failed with ``exc`` may be sent again.

    Only ``StoreUnavailable`` is worth a retry. An idempotent call (a read, a claim or
    renewal by the same owner, a release) may be repeated whatever happened to the first
    try; any other only when its request certainly never ran (``StoreUnreachable``).
    """
    if not isinstance(exc, StoreUnavailable):
        return False
    return idempotent or isinstance(exc, StoreUnreachable)


class Outage:
    """One stretch of failures of one operation: when it began, how long to pause next,
    and the log lines (a WARNING when it begins, an INFO when the store answers again).

    ``deadline`` is how many seconds of failing are tolerated (None: for ever); past it,
    ``failed`` raises a ``StoreUnavailable`` that says how long it tried, and ``advice``:
    what the caller can do.
    """

    def __init__(
        self,
        what: str,
        deadline: float | None,
        log: logging.Logger,
        *,
        advice: str = "retry once the store is back",
        first: float = FIRST_PAUSE,
        longest: float = LONGEST_PAUSE,
    ) -> None:
        self.what = what
        self.advice = advice
        self.deadline = deadline
        self.log = log
        self.first = first
        self.longest = longest
        self.began: float | None = None  # loop time of the first failure; None: no outage
        self.failures = 0
        self._pause = first

    @property
    def ongoing(self) -> bool:
        return self.began is not None

    def elapsed(self) -> float:
        return 0.0 if self.began is None else _now() - self.began

    def failed(self, exc: StoreUnavailable) -> None:
        """Note a failure: log the first of an outage; past the deadline, raise."""
        now = _now()
        if self.began is None:
            self.began = now
            until = "for ever" if self.deadline is None else f"for up to {self.deadline:g} s"
            self.log.warning("piton: %s: %s Retrying %s.", self.what, exc, until)
        self.failures += 1
        if self.deadline is not None and now - self.began >= self.deadline:
            raise self.expired(exc) from exc

    def expired(self, exc: StoreUnavailable) -> StoreUnavailable:
        """The error a caller gets once the deadline has passed."""
        return StoreUnavailable(
            f"{self.what}: the store did not answer for {self.elapsed():.1f} s (deadline "
            f"{self.deadline:g} s, {self.failures} tries); last error: {exc} Nothing "
            f"committed is lost: {self.advice}. To wait longer, raise Store.deadline."
        )

    async def pause(self) -> None:
        """Sleep before the next try: back-off with jitter, never past the deadline."""
        delay = self._pause * random.uniform(0.5, 1.0)
        self._pause = min(self._pause * 2, self.longest)
        if self.deadline is not None and self.began is not None:
            left = self.began + self.deadline - _now()
            delay = min(delay, max(left, 0.0))
        await asyncio.sleep(delay)

    def over(self) -> None:
        """The store answered: end the outage, logging how long it lasted."""
        if self.began is not None:
            self.log.info(
                "piton: %s: the store answers again after %.1f s (%d failed tries).",
                self.what,
                self.elapsed(),
                self.failures,
            )
        self.began = None
        self.failures = 0
        self._pause = self.first


async def patiently(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline: float | None,
    log: logging.Logger,
    idempotent: bool = True,
    advice: str = "retry once the store is back",
) -> T:
    """``await op()`` until the store answers; retry ``StoreUnavailable`` with back-off.

    ``what`` names the operation in logs and errors ("run 'r1': load"). ``deadline``: give
    up after that many seconds of failing with a ``StoreUnavailable`` saying how long it
    tried (None: never; a worker). Other errors are raised at once. ``op`` must be safe to
    repeat; with ``idempotent=False`` only a ``StoreUnreachable`` (the request never ran) is
    retried and any other ``StoreUnavailable`` (the request may have run) is raised at once.
    ``advice`` ends the deadline's error: what the caller can do.
    """
    outage = Outage(what, deadline, log, advice=advice)
    while True:
        try:
            result = await op()
        except StoreUnavailable as exc:
            if not retry_safe(exc, idempotent=idempotent):
                raise
            outage.failed(exc)
            await outage.pause()
            continue
        outage.over()
        return result


def _now() -> float:
    return asyncio.get_running_loop().time()


__all__ = ["FIRST_PAUSE", "LONGEST_PAUSE", "Outage", "patiently", "retry_safe"]
