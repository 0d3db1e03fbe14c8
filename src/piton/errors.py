"""The errors piton raises.

Every error derives from :class:`PitonError`::

    PitonError
    ├── WorkflowValidationError        the step graph or a signature is wrong (build time)
    │   └── StartStopEventError        no StartEvent consumer / StopEvent producer, or two
    │                                  types of either (also a WorkflowConfigurationError)
    ├── WorkflowConfigurationError     a bad option: num_workers, a store URL, ...
    ├── WorkflowRuntimeError           something went wrong while a run was executing
    │   ├── WorkflowTimeoutError       the run (or a step) used up its time
    │   ├── WorkflowCancelledByUser    handler.cancel_run() was called
    │   ├── ContextStateError          a Context method called where it cannot work
    │   ├── InvalidStartEvent          run(start_event=...) of what is not a StartEvent
    │   ├── EventNotAccepted           send_event() of an event type the workflow does not know
    │   ├── TooManyPendingEvents       a run already keeps as many untaken events as it may
    │   ├── RunStateMismatch           a rebuilt run disagrees with the store's record of it
    │   └── IncompatibleWorkflowChange the code no longer has a step/event the run needs
    ├── ContextSerdeError              a context/state/event could not be (de)serialized
    ├── StateKeyError                  ctx.store.get(path) found nothing (also KeyError, ValueError)
    └── StoreError                     the store failed; nothing committed is lost
        ├── StoreUnavailable           the database cannot be reached or is locked/full
        │   └── StoreUnreachable       ... and the request never reached it: safe to send again
        ├── RunNotFound                no run with that id in the store
        ├── LeaseLost                  another owner took the run over (fencing)
        └── JournalCorrupted           a stored journal row cannot be read

A step's own exception reaches ``await handler`` unchanged. Every message names
the workflow, run, step or key involved and says what to do. All errors pickle.
"""

from __future__ import annotations


class PitonError(Exception):
    """Root of every error piton raises."""

    def __reduce__(self) -> tuple[type[PitonError], tuple[object, ...]]:
        return (type(self), self.args)


class WorkflowValidationError(PitonError):
    """The workflow's step graph or a step signature is invalid."""


class WorkflowConfigurationError(PitonError):
    """An option given to a workflow, step or store is invalid."""


class StartStopEventError(WorkflowValidationError, WorkflowConfigurationError):
    """No step accepts a StartEvent or returns a StopEvent, or steps use two types of
    either. llama-index-workflows raises ``WorkflowConfigurationError`` here, piton raised
    ``WorkflowValidationError``: this is both, so code catching either name works."""


class WorkflowRuntimeError(PitonError):
    """A run could not go on."""


class WorkflowTimeoutError(WorkflowRuntimeError, TimeoutError):
    """The run exceeded its timeout, or a step exceeded its ``timeout=``."""


class WorkflowCancelledByUser(WorkflowRuntimeError):
    """The run was cancelled with ``handler.cancel_run()``."""


class ContextStateError(WorkflowRuntimeError):
    """A ``Context`` method was called where it cannot work: a step-only method outside a
    step, an event sent to a context whose run has not started or has finished, a second
    run on a context that is running one. The llama-index-workflows name; a
    ``WorkflowRuntimeError``, which piton raised there before."""


class InvalidStartEvent(WorkflowRuntimeError, ValueError):
    """``run(start_event=...)`` got something that is not a ``StartEvent``. Also a
    ``ValueError``, which is what llama-index-workflows raises there."""


class EventNotAccepted(WorkflowRuntimeError):
    """``send_event`` of an event type that no step of the workflow consumes or waits for."""


class TooManyPendingEvents(WorkflowRuntimeError):
    """The run already keeps as many events that nothing has taken yet as it may
    (``piton.MAX_PENDING_EVENTS``): the sender is refused instead of an event being dropped."""


class RunStateMismatch(WorkflowRuntimeError):
    """A run rebuilt from its journal disagrees with the store's record of it."""


class IncompatibleWorkflowChange(WorkflowRuntimeError):
    """A stored run needs a step or event type the current code does not have."""


class ContextSerdeError(PitonError, ValueError):
    """A context, state value or event could not be serialized or restored."""


class StateKeyError(PitonError, KeyError, ValueError):
    """``ctx.store.get(path)`` found nothing at ``path`` and no default was given.

    Also a ``ValueError``, which is what llama-index-workflows raises there.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidCursor(PitonError, ValueError):
    """A paging cursor (``list_runs(after=...)``, ``piton runs --after``) that no listing
    gave: take the cursor from the last run of the page before."""


class StoreError(PitonError):
    """The store failed. What was committed before the failure is kept."""


class StoreUnavailable(StoreError):
    """The store cannot be reached, is locked, or is out of space."""


class StoreUnreachable(StoreUnavailable):
    """The request never ran: no connection to the store could be opened, or the server
    refused it unrun while starting up. It changed nothing, so sending it again is safe even
    for a request that is not idempotent (``deliver``). A plain ``StoreUnavailable`` from a
    write means its outcome is unknown: it may or may not have been applied."""


class RunNotFound(StoreError, LookupError):
    """No run with the given id exists in the store."""


class LeaseLost(StoreError):
    """This process no longer owns the run: another owner holds a newer lease."""


class JournalCorrupted(StoreError):
    """A stored journal entry or snapshot cannot be decoded."""


__all__ = [
    "ContextSerdeError",
    "ContextStateError",
    "EventNotAccepted",
    "IncompatibleWorkflowChange",
    "InvalidCursor",
    "InvalidStartEvent",
    "JournalCorrupted",
    "LeaseLost",
    "PitonError",
    "RunNotFound",
    "RunStateMismatch",
    "StartStopEventError",
    "StateKeyError",
    "StoreError",
    "StoreUnavailable",
    "StoreUnreachable",
    "TooManyPendingEvents",
    "WorkflowCancelledByUser",
    "WorkflowConfigurationError",
    "WorkflowRuntimeError",
    "WorkflowTimeoutError",
    "WorkflowValidationError",
]
