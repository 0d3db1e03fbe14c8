"""piton: durable, event-driven workflows for Python."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core.state import MAX_PENDING_EVENTS as MAX_PENDING_EVENTS
    from .context import Context as Context
    from .context import DictState as DictState
    from .decorators import catch_error as catch_error
    from .decorators import step as step
    from .errors import ContextSerdeError as ContextSerdeError
    from .errors import EventNotAccepted as EventNotAccepted
    from .errors import IncompatibleWorkflowChange as IncompatibleWorkflowChange
    from .errors import JournalCorrupted as JournalCorrupted
    from .errors import LeaseLost as LeaseLost
    from .errors import PitonError as PitonError
    from .errors import RunNotFound as RunNotFound
    from .errors import RunStateMismatch as RunStateMismatch
    from .errors import StateKeyError as StateKeyError
    from .errors import StoreError as StoreError
    from .errors import StoreUnavailable as StoreUnavailable
    from .errors import TooManyPendingEvents as TooManyPendingEvents
    from .errors import WorkflowCancelledByUser as WorkflowCancelledByUser
    from .errors import WorkflowConfigurationError as WorkflowConfigurationError
    from .errors import WorkflowRuntimeError as WorkflowRuntimeError
    from .errors import WorkflowTimeoutError as WorkflowTimeoutError
    from .errors import WorkflowValidationError as WorkflowValidationError
    from .events import Event as Event
    from .events import HumanResponseEvent as HumanResponseEvent
    from .events import InputRequiredEvent as InputRequiredEvent
    from .events import StartEvent as StartEvent
    from .events import StepFailedEvent as StepFailedEvent
    from .events import StopEvent as StopEvent
    from .events import WorkflowCancelledEvent as WorkflowCancelledEvent
    from .events import WorkflowFailedEvent as WorkflowFailedEvent
    from .events import WorkflowTimedOutEvent as WorkflowTimedOutEvent
    from .handler import WorkflowHandler as WorkflowHandler
    from .resource import Resource as Resource
    from .retry import ConstantDelayRetryPolicy as ConstantDelayRetryPolicy
    from .retry import ExponentialBackoffRetryPolicy as ExponentialBackoffRetryPolicy
    from .retry import RetryInfo as RetryInfo
    from .retry import RetryPolicy as RetryPolicy
    from .retry import retry_policy as retry_policy
    from .serde import JsonSerializer as JsonSerializer
    from .serde import PickleSerializer as PickleSerializer
    from .views import RunView as RunView
    from .views import Waiting as Waiting
    from .worker import Worker as Worker
    from .workflow import Workflow as Workflow

__version__ = "0.1.0"

# Each public name and the module that defines it. They are imported on first use, so
# `import piton` (and the `piton` command, whose `piton runs` must start fast) loads only
# what a program touches.
_WHERE: dict[str, str] = {
    "MAX_PENDING_EVENTS": "._core.state",
    "Context": ".context",
    "DictState": ".context",
    "catch_error": ".decorators",
    "step": ".decorators",
    "ContextSerdeError": ".errors",
    "EventNotAccepted": ".errors",
    "IncompatibleWorkflowChange": ".errors",
    "JournalCorrupted": ".errors",
    "LeaseLost": ".errors",
    "PitonError": ".errors",
    "RunNotFound": ".errors",
    "RunStateMismatch": ".errors",
    "StateKeyError": ".errors",
    "StoreError": ".errors",
    "StoreUnavailable": ".errors",
    "TooManyPendingEvents": ".errors",
    "WorkflowCancelledByUser": ".errors",
    "WorkflowConfigurationError": ".errors",
    "WorkflowRuntimeError": ".errors",
    "WorkflowTimeoutError": ".errors",
    "WorkflowValidationError": ".errors",
    "Event": ".events",
    "HumanResponseEvent": ".events",
    "InputRequiredEvent": ".events",
    "StartEvent": ".events",
    "StepFailedEvent": ".events",
    "StopEvent": ".events",
    "WorkflowCancelledEvent": ".events",
    "WorkflowFailedEvent": ".events",
    "WorkflowTimedOutEvent": ".events",
    "WorkflowHandler": ".handler",
    "Resource": ".resource",
    "ConstantDelayRetryPolicy": ".retry",
    "ExponentialBackoffRetryPolicy": ".retry",
    "RetryInfo": ".retry",
    "RetryPolicy": ".retry",
    "retry_policy": ".retry",
    "JsonSerializer": ".serde",
    "PickleSerializer": ".serde",
    "RunView": ".views",
    "Waiting": ".views",
    "Worker": ".worker",
    "Workflow": ".workflow",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'piton' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # found once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
