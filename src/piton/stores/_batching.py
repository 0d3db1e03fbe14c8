"""The group-commit loop shared by the networked stores' writers.

A writer takes every job queued while its last batch ran and runs them as one batch
(``_run``, the backend's part: one transaction, one pipeline); each caller's future gets
its own outcome. It runs on the event loop, as a task that lives while jobs wait.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, Protocol, TypeVar

from piton.errors import StoreError, StoreUnavailable, StoreUnreachable


class _Job(Protocol):
    @property
    def future(self) -> asyncio.Future[Any]: ...


J = TypeVar("J", bound=_Job)


class BatchWriter(Generic[J]):
    """Batches the write jobs of one store on one event loop."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.pending: list[J] = []
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.transactions = 0  # batches written (a group commit counts once)
        self.commits = 0  # CommitRequests applied

    def submit(self, job: J) -> None:
        if self.closed:
            raise StoreError(f"{self.where} is closed; call `await store.open()`.")
        self.pending.append(job)
        if self.task is None:
            loop = asyncio.get_running_loop()
            self.task = loop.create_task(self._main(), name=f"piton writer for {self.where}")

    async def _run(self, jobs: list[J]) -> list[tuple[J, Any, BaseException | None]]:
        """Write ``jobs`` as one batch; an outcome (job, result, error) for each."""
        raise NotImplementedError

    def _reset(self) -> None:
        """After a batch failed in an unexpected way: drop what may be in a bad state."""

    async def _main(self) -> None:
        batch: list[J] = []
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                jobs = [job for job in batch if not job.future.done()]  # done: cancelled
                try:
                    outcomes = await self._run(jobs) if jobs else []
                except Exception as bug:  # fail this batch, keep serving
                    self._reset()
                    outcomes = [(job, None, bug) for job in jobs]
                for job, result, error in outcomes:
                    if job.future.done():
                        continue
                    if error is not None:
                        job.future.set_exception(error)
                    else:
                        job.future.set_result(result)
        except BaseException as exc:  # cancelled: the loop is closing
            self._reset()
            failure = StoreUnavailable(
                f"{self.where}: the write was interrupted ({type(exc).__name__}); it may or "
                "may not have been applied. Load the run to see."
            )
            for job in batch + self.pending:
                if not job.future.done():
                    job.future.set_exception(copy_error(failure))
            self.pending = []
            raise
        finally:
            self.task = None


def unreachable(error: StoreError) -> StoreError:
    """The request never ran (no connection could be opened, or the server refused it
    unrun): a ``StoreUnavailable`` becomes ``StoreUnreachable``, which anyone may send again;
    other errors (a refused login) stay as they are."""
    if not isinstance(error, StoreUnavailable) or isinstance(error, StoreUnreachable):
        return error
    marked = StoreUnreachable(*error.args)
    marked.__cause__ = error.__cause__
    marked.__suppress_context__ = True
    return marked


def copy_error(error: BaseException) -> BaseException:
    """One exception object per waiting caller, so their tracebacks do not mix."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


__all__ = ["BatchWriter", "copy_error", "unreachable"]
