"""Worker: executes the runs queued in a store, on as many machines as you start it on."""

from __future__ import annotations

from collections.abc import Iterable

from ._runtime.worker import RunWorker
from .errors import WorkflowConfigurationError
from .stores.base import Store
from .workflow import Workflow


class Worker(RunWorker):
    """Executes the runs of ``workflows`` in ``store``: queued ones (``Workflow.start``),
    abandoned ones (their owner died, or its lease expired) and parked ones once an
    event arrives or their deadline passes.

        async with Worker("postgresql://db/app", workflows=[Convert], concurrency=50):
            await asyncio.Event().wait()

    At most ``concurrency`` runs execute at once; a parked run is let go and counts for
    nothing. Runs of workflows this worker does not know are left for a worker that
    knows them. ``await worker.drain()`` shuts down gracefully: it claims nothing more,
    lets the steps running now finish within ``grace`` seconds and hands every lease
    back, so another worker continues at once; leaving the ``async with`` block (or
    ``close()``) lets go at once. Runs are never cancelled by a worker leaving.

    A workflow given as a class is instantiated with no arguments; the worker runs its
    runs in ``store``, whatever store the instance was made with. The same worker runs
    from a shell as ``piton worker module:Workflow --store URL --concurrency N``.
    """

    def __init__(
        self,
        store: Store | str,
        workflows: Iterable[Workflow | type[Workflow]],
        *,
        concurrency: int = 100,
        grace: float = 30.0,
        poll_interval: float = 0.5,
    ) -> None:
        self.workflows: dict[str, Workflow] = {}
        for w in workflows:
            instance = w() if isinstance(w, type) and issubclass(w, Workflow) else w
            if not isinstance(instance, Workflow):
                raise WorkflowConfigurationError(
                    f"Worker takes Workflow instances or classes, got {w!r}."
                )
            if instance.workflow_name in self.workflows:
                raise WorkflowConfigurationError(
                    f"Two workflows named '{instance.workflow_name}' were given to one "
                    "worker; a run names its workflow, so the worker could not tell which "
                    "one runs it. Give each workflow class its own name."
                )
            self.workflows[instance.workflow_name] = instance
        engines = [w._engine() for w in self.workflows.values()]
        super().__init__(
            store,
            engines,
            concurrency=concurrency,
            grace=grace,
            poll_interval=poll_interval,
        )


__all__ = ["Worker"]
