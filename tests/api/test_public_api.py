"""Pins the public API: a change to it must be a deliberate edit of this list."""

import piton

EXPECTED = [
    "ConstantDelayRetryPolicy",
    "Context",
    "ContextSerdeError",
    "DictState",
    "Event",
    "EventNotAccepted",
    "ExponentialBackoffRetryPolicy",
    "HumanResponseEvent",
    "IncompatibleWorkflowChange",
    "InputRequiredEvent",
    "JournalCorrupted",
    "JsonSerializer",
    "LeaseLost",
    "MAX_PENDING_EVENTS",
    "PickleSerializer",
    "PitonError",
    "Resource",
    "RetryInfo",
    "RetryPolicy",
    "RunNotFound",
    "RunStateMismatch",
    "RunView",
    "StartEvent",
    "StateKeyError",
    "StepFailedEvent",
    "StopEvent",
    "StoreError",
    "StoreUnavailable",
    "TooManyPendingEvents",
    "Waiting",
    "Worker",
    "Workflow",
    "WorkflowCancelledByUser",
    "WorkflowCancelledEvent",
    "WorkflowConfigurationError",
    "WorkflowFailedEvent",
    "WorkflowHandler",
    "WorkflowRuntimeError",
    "WorkflowTimedOutEvent",
    "WorkflowTimeoutError",
    "WorkflowValidationError",
    "catch_error",
    "retry_policy",
    "step",
]


def test_all_is_pinned_and_sorted() -> None:
    assert piton.__all__ == EXPECTED
    assert sorted(piton.__all__) == piton.__all__


def test_every_name_is_importable() -> None:
    for name in piton.__all__:
        assert getattr(piton, name) is not None, name
