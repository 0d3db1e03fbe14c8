"""Events: pydantic models that flow between steps.

Events accept extra fields (``StartEvent(ids=[1])``) which read like attributes
(``ev.ids``) or like a dict (``ev["ids"]``, ``ev.get("ids")``).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import Any

from pydantic import BaseModel, ConfigDict


class Event(BaseModel):
    """Base class of every event. Unknown keyword arguments become fields."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def _fields(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in type(self).model_fields}
        if self.__pydantic_extra__:
            data.update(self.__pydantic_extra__)
        return data

    def __getitem__(self, key: str) -> Any:
        fields = self._fields()  # a field named like a method (`items`, `keys`) wins
        if key in fields:
            return fields[key]
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._fields()

    def get(self, key: str, default: Any = None) -> Any:
        return self._fields().get(key, default)

    def keys(self) -> KeysView[str]:
        return self._fields().keys()

    def values(self) -> ValuesView[Any]:
        return self._fields().values()

    def items(self) -> ItemsView[str, Any]:
        return self._fields().items()

    def __len__(self) -> int:
        return len(self._fields())

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        """The field names, as iterating a dict gives its keys."""
        return iter(self._fields())

    def __bool__(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        """The event's fields, declared and extra, as a plain dict."""
        return self.model_dump()


class StartEvent(Event):
    """The event a run starts with; ``w.run(**kwargs)`` builds it from ``kwargs``."""


class StopEvent(Event):
    """Returning it ends the run; ``await handler`` gives ``result``.

    For a subclass of ``StopEvent``, ``await handler`` gives the event itself.
    """

    result: Any = None

    def __init__(self, result: Any = None, **kwargs: Any) -> None:
        super().__init__(result=result, **kwargs)


class WorkflowFailedEvent(StopEvent):
    """Published last on the stream when a step fails for good (no retry left).

    ``await handler`` raises ``exception``, the step's own error.
    """

    step_name: str = ""
    exception: Any = None
    attempts: int | None = None
    elapsed_seconds: float | None = None


class WorkflowTimedOutEvent(StopEvent):
    """Published last on the stream when the run's timeout passes."""

    timeout: float | None = None
    active_steps: list[str] = []


class WorkflowCancelledEvent(StopEvent):
    """Published last on the stream when the run is cancelled (``handler.cancel_run()``)."""


class InputRequiredEvent(Event):
    """Published to the stream when a step needs a human; needs no consumer."""


class HumanResponseEvent(Event):
    """A human's answer, sent into a run with ``handler.send_event(...)``."""


__all__ = [
    "Event",
    "HumanResponseEvent",
    "InputRequiredEvent",
    "StartEvent",
    "StopEvent",
    "WorkflowCancelledEvent",
    "WorkflowFailedEvent",
    "WorkflowTimedOutEvent",
]
