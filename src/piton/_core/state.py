"""RunState: everything a run is, as plain data the reducer updates.

Nothing here reads a clock, does I/O or touches asyncio. Times are the ``at``
values carried by inputs (seconds since the epoch).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .graph import Graph
from .status import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PARKED,
    RUNNING,
    TIMED_OUT,
    RunStatus,
)
from .status import FINAL_STATUSES as FINAL

NEW: Final = "new"  # a RunState not begun yet; shown to the world as "queued"
StateStatus = RunStatus | Literal["new"]


def shown_status(status: StateStatus) -> RunStatus:
    """The status the world sees: a run not begun yet is ``queued``."""
    return "queued" if status == NEW else status

RUN_TIMER = "run"

MAX_PENDING_EVENTS = 1000
"""How many sent events a run keeps while nothing takes them (promise 10)."""


@dataclass(slots=True)
class Envelope:
    """An event inside a run, with the run-unique id it was delivered under."""

    id: str
    event: Any
    target: str | None = None
    # the @catch_error recoveries used on this event's lineage (handler -> count), if any
    recoveries: dict[str, int] | None = None


@dataclass(slots=True)
class WaitTimedOut:
    """Marks a waiter whose timeout fired: the re-run's wait_for_event raises."""

    timeout: float | None = None


@dataclass(slots=True)
class Attempt:
    """One unit of work for a step: the event plus its retry and waiter history."""

    step: str
    envelope: Envelope
    retry_number: int = 0
    first_at: float | None = None
    last_error: BaseException | None = None
    last_failed_at: float | None = None
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Who the attempt is across retries and resumes: one event at one step.

        Two steps that consume the same event are two attempts, so their sends and
        collect claims are counted apart.
        """
        return f"{self.step}/{self.envelope.id}"


@dataclass(slots=True)
class Execution:
    """An attempt that a worker slot is running now."""

    id: str
    attempt: Attempt
    started_at: float


@dataclass(slots=True)
class Waiter:
    """A step suspended in ``wait_for_event`` until a matching event arrives."""

    id: str
    attempt: Attempt
    event_type: type[Any] | None
    requirements: dict[str, Any]
    deadline: float | None = None


@dataclass(slots=True)
class CollectBuffer:
    """Events held by ``collect_events`` under one buffer id.

    ``pending`` holds unclaimed events by exact type, in arrival order. A complete
    batch moves to ``claimed`` under the key of the attempt that completed
    it, so a retry of that attempt gets the same batch back; it is dropped when the
    attempt finishes. ``seen`` holds the keys of unfinished attempts already added.
    """

    pending: dict[type[Any], list[tuple[str, Any]]] = field(default_factory=dict)
    claimed: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)


@dataclass(slots=True)
class RunState:
    run_id: str
    graph: Graph
    status: StateStatus = NEW
    values: Any = field(default_factory=dict)
    queues: dict[str, deque[Attempt]] = field(default_factory=dict)
    running: dict[str, Execution] = field(default_factory=dict)
    busy: dict[str, int] = field(default_factory=dict)
    waiters: dict[str, Waiter] = field(default_factory=dict)
    delayed: dict[str, Attempt] = field(default_factory=dict)
    deadlines: dict[str, float] = field(default_factory=dict)
    buffers: dict[str, CollectBuffer] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    streamed: dict[str, int] = field(default_factory=dict)  # attempt/retry -> writes published
    kept: list[Envelope] = field(default_factory=list)  # sent events nothing has taken yet
    max_kept: int = MAX_PENDING_EVENTS
    counter: int = 0
    timeout: float | None = None
    active_elapsed: float = 0.0
    active_since: float | None = None
    result: Any = None
    error: BaseException | None = None
    durable: bool = False
    journal: list[Any] = field(default_factory=list)

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def is_idle(self) -> bool:
        """No step running, queued or due for a retry: only waiters/external events remain."""
        return not self.running and not self.delayed and not any(self.queues.values())


__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "FINAL",
    "MAX_PENDING_EVENTS",
    "NEW",
    "PARKED",
    "RUNNING",
    "RUN_TIMER",
    "TIMED_OUT",
    "Attempt",
    "CollectBuffer",
    "Envelope",
    "Execution",
    "RunState",
    "WaitTimedOut",
    "Waiter",
]
