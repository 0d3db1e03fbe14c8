"""The reducer's inputs (what happened) and commands (what the shell must do).

Inputs are plain data: the events, values and errors they carry are what the
journal of a durable run stores, and replaying them rebuilds the RunState.

:data:`Input` lists every input kind once; :data:`INPUTS` is that list as a tuple. The
reducer's dispatch and the journal codec's table of on-disk names both cover exactly
these kinds (each checks it), so a new input cannot be handled but not stored, or the
other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, get_args

from .state import Execution

Sends = tuple[tuple[int, Any, "str | None"], ...]
"""Events a step sent: (index within the execution, event, target step or None)."""


# --- inputs -------------------------------------------------------------------------


class _Input:
    __slots__ = ()

    commits: ClassVar[bool] = True
    """A durable run commits its journal after this input. Inputs that say False (state
    writes, stream writes, collect calls) ride along with the next commit."""


@dataclass(slots=True, frozen=True)
class Begin(_Input):
    """Start a new run with ``start_event``, or resume a restored one (``start_event=None``).

    A durable run records who attached to it (``owner``, a process) under which lease
    ``epoch``: the journal then shows that no two processes held the run at once.
    ``trace`` is the W3C traceparent of this execution's OpenTelemetry span, when
    telemetry is on (``piton.telemetry``), so a later execution can link to it; the
    reducer does not use it.
    """

    at: float
    start_event: Any = None
    owner: str | None = None
    epoch: int = 0
    trace: str | None = None


@dataclass(slots=True, frozen=True)
class StepDone(_Input):
    """A step returned ``result``.

    ``step`` and ``took`` (the step's name, and the seconds its attempt ran, rounded to
    microseconds) are for people reading the journal (``piton show``); the reducer does not
    use them. The same holds for ``StepFailed`` and ``StepWaits``.
    """

    at: float
    exec_id: str
    result: Any = None
    sends: Sends = ()
    step: str = ""
    took: float | None = None


@dataclass(slots=True, frozen=True)
class StepFailed(_Input):
    """A step raised ``error``. ``retry_in`` is the decision the live run took (seconds
    until the retry, or None: give up), so replaying this entry never asks the retry
    policy again (see ``reducer.retry_decision``)."""

    at: float
    exec_id: str
    error: BaseException
    retry_in: float | None = None
    step: str = ""
    took: float | None = None


@dataclass(slots=True, frozen=True)
class StepWaits(_Input):
    """A step called ``wait_for_event`` for an event that has not arrived.

    With ``event_type=None`` it is ``ctx.sleep()``: only the timeout wakes it.
    """

    at: float
    exec_id: str
    waiter_id: str
    event_type: type[Any] | None
    requirements: dict[str, Any] = field(default_factory=dict)
    waiter_event: Any = None
    timeout: float | None = None
    sends: Sends = ()
    step: str = ""
    took: float | None = None


@dataclass(slots=True, frozen=True)
class Checkpoint(_Input):
    """``ctx.checkpoint()``: deliver the sends made so far and commit."""

    at: float
    exec_id: str
    sends: Sends = ()


@dataclass(slots=True, frozen=True)
class Send(_Input):
    """An event from outside the run (``handler.send_event``)."""

    at: float
    event: Any
    target: str | None = None


@dataclass(slots=True, frozen=True)
class SetState(_Input):
    commits: ClassVar[bool] = False

    at: float
    path: str
    value: Any


@dataclass(slots=True, frozen=True)
class ReplaceState(_Input):
    commits: ClassVar[bool] = False

    at: float
    value: Any


@dataclass(slots=True, frozen=True)
class Collect(_Input):
    """``ctx.collect_events``; ``expected`` is the caller's list of types (not copied)."""

    commits: ClassVar[bool] = False

    at: float
    exec_id: str
    event: Any
    expected: Sequence[type[Any]]
    buffer_id: str


@dataclass(slots=True, frozen=True)
class StreamWrite(_Input):
    """``ctx.write_event_to_stream``; from a step, numbered so a re-run's repeats drop."""

    commits: ClassVar[bool] = False

    at: float
    event: Any
    exec_id: str = ""
    index: int = -1


@dataclass(slots=True, frozen=True)
class TimerFired(_Input):
    at: float
    timer_id: str


@dataclass(slots=True, frozen=True)
class Cancel(_Input):
    at: float


@dataclass(slots=True, frozen=True)
class Park(_Input):
    """The process lets go of an idle run (durable runs): the run clock stops.

    ``trace``: as in ``Begin``, the span of the execution that parks the run."""

    at: float
    trace: str | None = None


Input = (
    Begin
    | StepDone
    | StepFailed
    | StepWaits
    | Checkpoint
    | Send
    | SetState
    | ReplaceState
    | Collect
    | StreamWrite
    | TimerFired
    | Cancel
    | Park
)

INPUTS: Final[tuple[type[Input], ...]] = get_args(Input)
"""Every input kind, in one place (the members of :data:`Input`)."""

# --- commands -----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class RunStep:
    execution: Execution


@dataclass(slots=True, frozen=True)
class CancelStep:
    exec_id: str


@dataclass(slots=True, frozen=True)
class Publish:
    """Show ``event`` on the run's stream. A durable run shows a fact (``live=False``) only
    once the commit that holds it is durable; ``live`` events (``write_event_to_stream``)
    go out at once."""

    event: Any
    live: bool = False


@dataclass(slots=True, frozen=True)
class ArmTimer:
    timer_id: str
    deadline: float


@dataclass(slots=True, frozen=True)
class DisarmTimer:
    timer_id: str


@dataclass(slots=True, frozen=True)
class Collected:
    events: list[Any] | None


@dataclass(slots=True, frozen=True)
class Commit:
    """Durable runs: make these journal entries durable, in order."""

    entries: tuple[Any, ...]


@dataclass(slots=True, frozen=True)
class Finish:
    status: str
    result: Any = None
    error: BaseException | None = None


Command = RunStep | CancelStep | Publish | ArmTimer | DisarmTimer | Collected | Commit | Finish
