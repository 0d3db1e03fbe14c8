"""Where a run stands, as plain data: ``RunView`` and ``Waiting``.

``await workflow.get_run(run_id)`` reads a durable run from its store without resuming it
(the journal is replayed in memory; no step and no user code runs), and
``handler.status`` / ``handler.waiting_for`` tell the caller of a live run the same.

A run's ``status`` is one of ``queued``, ``running``, ``parked`` (waiting for an event or
a deadline, held by no process), ``completed``, ``failed``, ``cancelled``, ``timed_out``;
the last four are final.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._core.state import RunState, shown_status
from ._core.status import FINAL_STATUSES, RunStatus
from .events import Event, StopEvent


@dataclass(frozen=True)
class Waiting:
    """One thing a run waits for: an event (``wait_for_event``) or a time (``ctx.sleep``)."""

    step: str
    waiter_id: str
    event_type: str | None  # the event's class name; None for ctx.sleep()
    requirements: dict[str, Any] = field(default_factory=dict)
    deadline: datetime | None = None  # when the wait times out (or the sleep ends)


@dataclass(frozen=True)
class RunView:
    """A run as its store (or its live process) holds it."""

    run_id: str
    workflow: str
    status: RunStatus
    state: Any  # the state store's values: a dict, or the typed state model
    waiting: list[Waiting]
    kept: list[Event]  # events sent to the run that nothing has taken yet
    running_steps: list[str]
    result: Any = None
    error: BaseException | None = None
    seq: int = 0  # journal entries committed (durable runs)
    owner: str | None = None  # the process holding it now, if any
    updated_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


def waiting_of(state: RunState) -> list[Waiting]:
    return [
        Waiting(
            step=w.attempt.step,
            waiter_id=w.id,
            event_type=None if w.event_type is None else w.event_type.__name__,
            requirements=dict(w.requirements),
            deadline=None if w.deadline is None else datetime.fromtimestamp(w.deadline, UTC),
        )
        for w in state.waiters.values()
    ]


def view_of(
    state: RunState,
    *,
    status: RunStatus | None = None,
    seq: int = 0,
    owner: str | None = None,
    updated_at: float | None = None,
) -> RunView:
    result = state.result
    if type(result) is StopEvent:  # as `await handler` gives it: a subclass stays itself
        result = result.result
    return RunView(
        run_id=state.run_id,
        workflow=state.graph.workflow,
        status=status or shown_status(state.status),
        state=state.values,
        waiting=waiting_of(state),
        kept=[env.event for env in state.kept],
        running_steps=sorted(
            {ex.attempt.step for ex in state.running.values()}
            | {step for step, queue in state.queues.items() if queue}
        ),
        result=result,
        error=state.error,
        seq=seq,
        owner=owner,
        updated_at=None if updated_at is None else datetime.fromtimestamp(updated_at, UTC),
    )


__all__ = ["RunView", "Waiting"]
