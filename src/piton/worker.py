"""Worker: resumes a store's unfinished runs and wakes parked ones when they are due."""

from __future__ import annotations

from collections.abc import Iterable

from ._runtime.worker import RunWorker
from .errors import WorkflowConfigurationError
from .stores.base import Store
from .workflow import Workflow


class Worker(RunWorker):
    """Works on every runnable run of ``workflows`` in ``store`` until closed.

        async with Worker("sqlite:///runs.db", workflows=[Convert]):
            await asyncio.sleep(3600)

    Unfinished runs are resumed at start (their owner crashed, or its lease expired);
    parked runs are woken when an event arrives in their inbox or their deadline
    passes. Closing the worker leaves its runs parked or resumable, never cancelled.
    A workflow given as a class is instantiated with no arguments; the worker runs its
    runs in ``store``, whatever store the instance was made with.
    """

    def __init__(
        self,
        store: Store | str,
        workflows: Iterable[Workflow | type[Workflow]],
        *,
        poll_interval: float = 0.5,
    ) -> None:
        self.workflows: dict[str, Workflow] = {}
        for w in workflows:
            instance = w() if isinstance(w, type) and issubclass(w, Workflow) else w
            if not isinstance(instance, Workflow):
                raise WorkflowConfigurationError(
                    f"Worker takes Workflow instances or classes, got {w!r}."
                )
            self.workflows[instance.workflow_name] = instance
        engines = [w._engine() for w in self.workflows.values()]
        super().__init__(store, engines, poll_interval=poll_interval)


__all__ = ["Worker"]
