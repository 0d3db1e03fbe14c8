"""piton: durable, event-driven workflows for Python."""

from ._core.state import MAX_PENDING_EVENTS as MAX_PENDING_EVENTS
from .context import Context as Context
from .context import DictState as DictState
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

__all__ = [
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
    "retry_policy",
    "step",
]
