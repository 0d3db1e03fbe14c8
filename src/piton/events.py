"""Events: pydantic models that flow between steps.

Events accept extra fields (``StartEvent(ids=[1])``) which read like attributes
(``ev.ids``) or like a dict (``ev["ids"]``, ``ev.get("ids")``). As in
llama-index-workflows, the dict side (``[]``, ``get``, ``in``, ``len``, ``keys``,
``values``, ``items``, iteration, ``to_dict``) holds the extra fields only; declared
fields are attributes.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    model_serializer,
)


class Event(BaseModel):
    """Base class of every event. Unknown keyword arguments become fields."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def _extra(self) -> dict[str, Any]:
        extra = self.__pydantic_extra__  # a dict with extra="allow"; None only mid-init
        return extra if extra is not None else {}

    def __getitem__(self, key: str) -> Any:
        return self._extra()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)  # a declared field's name sets the field

    def __contains__(self, key: object) -> bool:
        return key in self._extra()

    def get(self, key: str, default: Any = None) -> Any:
        return self._extra().get(key, default)

    def keys(self) -> KeysView[str]:
        return self._extra().keys()

    def values(self) -> ValuesView[Any]:
        return self._extra().values()

    def items(self) -> ItemsView[str, Any]:
        return self._extra().items()

    def __len__(self) -> int:
        return len(self._extra())

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        """The extra fields' names, as iterating a dict gives its keys."""
        return iter(self._extra())

    def __bool__(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        """The extra fields, as a plain dict (declared fields are attributes)."""
        return dict(self._extra())

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Declared fields only, as llama-index-workflows shows an event."""
        fields = type(self).model_fields
        for name, value in self.__dict__.items():
            info = fields.get(name)
            if info is not None and info.repr:
                yield name, value


class StartEvent(Event):
    """The event a run starts with; ``w.run(**kwargs)`` builds it from ``kwargs``."""


class StopEvent(Event):
    """Returning it ends the run; ``await handler`` gives ``result``.

    For a subclass of ``StopEvent``, ``await handler`` gives the event itself.
    """

    result: Any = None

    def __init__(self, result: Any = None, **kwargs: Any) -> None:
        super().__init__(result=result, **kwargs)

    @model_serializer(mode="wrap")
    def _dump_result_last(self, handler: SerializerFunctionWrapHandler) -> Any:
        """``result`` comes last, and not at all while it is None (llama-index-workflows)."""
        data = handler(self)
        if isinstance(data, dict) and "result" in data:
            result = data.pop("result")
            if self.result is not None:
                data["result"] = result
        return data

    def __repr__(self) -> str:
        """Extra data, then the dump (declared fields, ``result`` last when set), as
        llama-index-workflows shows a StopEvent."""
        try:
            dumped = self.model_dump()
        except Exception:  # noqa: BLE001 - a repr must not fail: the plain pydantic one
            return super().__repr__()
        shown = {**self._extra(), **dumped}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def __str__(self) -> str:
        return str(self.result)


def _dump_exception(error: Any) -> Any:
    if not isinstance(error, BaseException):
        return error
    kind = type(error)
    return {
        "exception_type": f"{kind.__module__}.{kind.__qualname__}",
        "exception_message": str(error),
    }


class WorkflowFailedEvent(StopEvent):
    """Published last on the stream when a step fails for good (no retry left).

    ``await handler`` raises ``exception``, the step's own error. ``model_dump()`` gives
    the exception as ``{"exception_type": "module.QualName", "exception_message": str(e)}``,
    as llama-index-workflows does.
    """

    step_name: str = ""
    exception: Annotated[Any, PlainSerializer(_dump_exception)] = None
    attempts: int | None = None
    elapsed_seconds: float | None = None


class StepFailedEvent(Event):
    """What a ``@catch_error`` handler receives when a step it covers fails for good.

    ``input_event`` is the event the step was given, ``exception`` its last error (in a
    durable run replayed from the journal: the stored error, rebuilt without calling its
    code), ``attempts`` how many times it ran, ``elapsed_seconds`` the time from its first
    attempt to the last failure, ``failed_at`` that failure as an aware UTC datetime.
    """

    step_name: str
    input_event: Any
    exception: Annotated[Any, PlainSerializer(_dump_exception)]
    attempts: int
    elapsed_seconds: float
    failed_at: datetime


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
    "StepFailedEvent",
    "StopEvent",
    "WorkflowCancelledEvent",
    "WorkflowFailedEvent",
    "WorkflowTimedOutEvent",
]
