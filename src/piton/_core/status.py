"""Run statuses: one ``Literal`` type shared by the reducer, the stores and the API.

``queued``: written, not started (``Workflow.start``, or a run whose creation is on its
way). ``running``: some process drives it. ``parked``: a durable run waiting for an event
or a deadline, held by no process. The four final statuses never change again.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

RunStatus = Literal["queued", "running", "parked", "completed", "failed", "cancelled", "timed_out"]

QUEUED: Final = "queued"
RUNNING: Final = "running"
PARKED: Final = "parked"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
TIMED_OUT: Final = "timed_out"

STATUSES: Final[tuple[RunStatus, ...]] = get_args(RunStatus)
FINAL_STATUSES: Final[frozenset[RunStatus]] = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
ACTIVE_STATUSES: Final[frozenset[RunStatus]] = frozenset({QUEUED, RUNNING, PARKED})

__all__ = [
    "ACTIVE_STATUSES",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "FINAL_STATUSES",
    "PARKED",
    "QUEUED",
    "RUNNING",
    "STATUSES",
    "RunStatus",
    "TIMED_OUT",
]
