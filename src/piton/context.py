"""Context: a run's state store and the operations steps use.

The caller's ``handler.ctx`` and the ``ctx`` a step receives are both ``Context``
objects; inside a step the context also knows which execution it belongs to, which
``collect_events``, ``wait_for_event``, ``retry_info`` and ``checkpoint`` need.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from ._core import paths
from ._core.state import RunState
from ._llama_snapshot import is_llama_snapshot, read_llama_snapshot
from ._run_codec import decode_run, encode_run
from ._runtime.engine import LiveRun, RunLink, StepControl
from ._runtime.steps import WaitingForEvent
from .errors import (
    ContextSerdeError,
    ContextStateError,
    PitonError,
    StateKeyError,
    WorkflowRuntimeError,
)
from .events import Event
from .retry import RetryInfo
from .serde import JsonSerializer

if TYPE_CHECKING:
    from .workflow import Workflow

StateT = TypeVar("StateT")
T = TypeVar("T", bound=Event)
_MISSING: Any = object()
# The context of the step running in this task (or its thread): Context.get_step_context().
_STEP_CONTEXT: contextvars.ContextVar[StepContext[Any]] = contextvars.ContextVar("piton_step")


class DictState(BaseModel):
    """The state of a run without a typed state model: a dict with attribute access."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        return (self.__pydantic_extra__ or {})[key]

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in (self.__pydantic_extra__ or {})

    def get(self, key: str, default: Any = None) -> Any:
        return (self.__pydantic_extra__ or {}).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


def _get_path(root: Any, path: str) -> Any:
    """The state at dotted ``path`` (dict keys, list indices, model fields), or _MISSING."""
    found = paths.get_path(root, path)
    return _MISSING if found is paths.MISSING else found


def _copy(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    return copy.deepcopy(value)


class StateStore(Generic[StateT]):
    """``ctx.store``: the run's state, safe to share between concurrent steps."""

    def __init__(self, ctx: Context[StateT]) -> None:
        self._ctx = ctx

    async def get(self, path: str, default: Any = _MISSING) -> Any:
        """The value at dotted ``path`` (``"user.name"``), or ``default``."""
        value = _get_path(self._ctx._values(), path)
        if value is _MISSING:
            if default is _MISSING:
                raise StateKeyError(
                    f"No state at path '{path}'. Set it first, or pass a default: "
                    f"`await ctx.store.get({path!r}, default=None)`."
                )
            return default
        return _copy(value)

    async def set(self, path: str, value: Any) -> None:
        """Set ``value`` at dotted ``path``, creating intermediate dicts."""
        paths.check_set_path(self._ctx._values(), path)
        try:
            copied = _copy(value)
        except Exception as exc:  # noqa: BLE001 - deepcopy fails in many ways; name the key
            raise ContextSerdeError(
                f"ctx.store.set({path!r}, ...): a {type(value).__qualname__} cannot be kept in "
                f"the run's state, because it cannot be copied ({type(exc).__name__}: {exc}). "
                "Store plain data (JSON values, pydantic models); keep locks, open files, "
                "sockets and clients out of the state, for example as a Resource, and store "
                "what identifies them (a path, a URL) instead."
            ) from exc
        self._ctx._update(path, copied)

    async def get_state(self) -> StateT:
        """A copy of the whole state: the typed model, or a :class:`DictState`."""
        values = self._ctx._values()
        if isinstance(values, BaseModel):
            return cast(StateT, values.model_copy(deep=True))
        return cast(StateT, DictState(**copy.deepcopy(values)))

    async def set_state(self, state: StateT) -> None:
        """Replace the whole state."""
        self._ctx._replace(self._ctx._coerce_state(state))

    async def clear(self) -> None:
        """Reset the state to its initial value."""
        self._ctx._replace(self._ctx._initial_state())

    @asynccontextmanager
    async def edit_state(self) -> AsyncIterator[StateT]:
        """Edit the state in a block; the edit is saved on exit, other editors wait."""
        async with self._ctx._edit_lock():
            state = await self.get_state()
            yield state
            await self.set_state(state)


class Context(Generic[StateT]):
    """A run's context. ``Context(workflow)`` makes an empty one to pass to ``run(ctx=)``."""

    def __init__(self, workflow: Workflow, *, serializer: JsonSerializer | None = None) -> None:
        self._workflow = workflow
        self._link = RunLink(
            serializer=serializer or JsonSerializer(),
            for_step=functools.partial(StepContext, self),  # once per step: no wrapper
            owner=self,
        )
        self._store: StateStore[StateT] = StateStore(self)

    @property
    def _serializer(self) -> JsonSerializer:
        return self._link.serializer

    @staticmethod
    def get_step_context() -> Context[Any]:
        """The context of the step running now: what its ``ctx`` parameter receives, for
        decorators and helpers around a step that declares no ``ctx``. Raises
        ``WorkflowRuntimeError`` outside a step."""
        try:
            return _STEP_CONTEXT.get()
        except LookupError:
            raise WorkflowRuntimeError(
                "Context.get_step_context() may only be called from within a step function "
                "(or code it calls, in the same task or thread)."
            ) from None

    # -- the state store ------------------------------------------------------

    @property
    def store(self) -> StateStore[StateT]:
        return self._store

    def _run_state(self) -> RunState | None:
        return self._link.current()

    def _values(self) -> Any:
        state = self._link.current()
        if state is not None:
            return state.values
        if self._link.values is None:
            self._link.values = self._initial_state()
        return self._link.values

    def _initial_state(self) -> Any:
        return self._workflow._engine().initial_values()

    def _coerce_state(self, state: Any) -> Any:
        state_type = self._workflow._compiled().graph.state_type
        if state_type is not None:
            if not isinstance(state, state_type):
                raise ContextSerdeError(
                    f"set_state() needs a {state_type.__name__}, got {type(state).__qualname__}."
                )
            return state.model_copy(deep=True)
        if isinstance(state, DictState):
            return state.to_dict()
        if isinstance(state, Mapping):
            return dict(copy.deepcopy(state))
        if isinstance(state, BaseModel):
            return state.model_dump()
        raise ContextSerdeError(
            f"set_state() needs a dict or DictState, got {type(state).__qualname__}."
        )

    def _update(self, path: str, value: Any) -> None:
        link = self._link
        if link.run is not None:
            link.run.set_state(path, value)
        elif link.state is not None:
            link.state.values = paths.set_path(link.state.values, path, value)
        else:
            link.values = paths.set_path(self._values(), path, value)

    def _replace(self, value: Any) -> None:
        link = self._link
        if link.run is not None:
            link.run.replace_state(value)
        elif link.state is not None:
            link.state.values = value
        else:
            link.values = value

    def _edit_lock(self) -> asyncio.Lock:
        link = self._link  # shared by the run's context and its steps' contexts
        if link.lock is None:
            link.lock = asyncio.Lock()
        return link.lock

    # -- events -----------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        run = self._link.run
        return run is not None and not run.state.finished

    def _live(self, what: str) -> LiveRun:
        run = self._link.run
        if run is None or run.state.finished:
            raise ContextStateError(
                f"ctx.{what}() needs a running workflow; this context's run has not started "
                "or has finished. Call it from a step or while `handler` is running."
            )
        return run

    def send_event(self, event: Event, step: str | None = None) -> None:
        """Send ``event`` to every step that accepts it, or only to ``step``."""
        self._live("send_event").send(event, step)

    def write_event_to_stream(self, event: Event | None) -> None:
        """Publish ``event`` to ``handler.stream_events()``."""
        if event is not None:
            self._live("write_event_to_stream").stream_write(event)

    def _step_only(self, what: str) -> StepControl:
        raise ContextStateError(f"ctx.{what}() can only be called inside a step.")

    def collect_events(
        self, ev: Event, expected: list[type[Event]], buffer_id: str | None = None
    ) -> list[Event] | None:
        """Buffer ``ev``; once events of all ``expected`` types are in, return them in that order."""
        return self._step_only("collect_events").collect(ev, expected, buffer_id)

    async def wait_for_event(
        self,
        event_type: type[T],
        waiter_event: Event | None = None,
        waiter_id: str | None = None,
        requirements: dict[str, Any] | None = None,
        timeout: float | None = 2000,
    ) -> T:
        """Suspend the step until an ``event_type`` event (matching ``requirements``) arrives.

        The step then runs again from the top and this call returns the event, so
        keep it near the top of the step. ``waiter_event`` is published once.
        """
        event: T = await self._step_only("wait_for_event").wait_for_event(
            event_type, waiter_event, waiter_id, requirements, timeout
        )
        return event

    def retry_info(self) -> RetryInfo:
        """The retry state of the running step (``retry_number`` 0 on the first attempt)."""
        return self._step_only("retry_info").retry_info()

    async def checkpoint(self) -> None:
        """Deliver the events sent so far and, for a durable run, commit the progress."""
        await self._step_only("checkpoint").checkpoint()

    async def sleep(self, seconds: float, sleep_id: str | None = None) -> None:
        """Sleep durably: the step is suspended and runs again from the top after ``seconds``.

        A durable run is parked meanwhile (no process needs to stay up) and wakes in
        whichever process runs a worker for its store. On the re-run this call returns
        at once, so keep code before it safe to repeat, as with ``wait_for_event``.
        """
        await self._step_only("sleep").sleep(seconds, sleep_id)

    def kept_events(self) -> list[Event]:
        """Events sent to the run that no step and no waiter has taken yet (promise 10).

        The first ``wait_for_event`` they match takes them. A run keeps at most
        ``MAX_PENDING_EVENTS`` (1,000); a send past that raises ``TooManyPendingEvents``.
        """
        state = self._run_state()
        return [env.event for env in state.kept] if state is not None else []

    async def running_steps(self) -> list[str]:
        state = self._run_state()
        return sorted({ex.attempt.step for ex in state.running.values()}) if state else []

    # -- serialization ------------------------------------------------------------

    def to_dict(self, serializer: JsonSerializer | None = None) -> dict[str, str]:
        """The run as a flat ``dict[str, str]`` (each value a JSON string).

        Steps running now are recorded as not yet done, so a restore re-runs them.
        """
        ser = serializer or self._serializer
        state = self._run_state()
        if state is None:
            state = self._workflow._new_state("", values=self._values())
        snapshot = state
        run = self._link.run
        if run is not None and not run.done:
            # a threaded step must not read the state while the loop thread changes it
            tree = run.call(lambda: encode_run(snapshot, ser))
        else:
            tree = encode_run(snapshot, ser)
        tree["serializer"] = ser.name
        return {key: json.dumps(value, separators=(",", ":")) for key, value in tree.items()}

    @classmethod
    def from_dict(
        cls,
        workflow: Workflow,
        data: Mapping[str, Any] | str | bytes,
        serializer: JsonSerializer | None = None,
    ) -> Context[Any]:
        """Rebuild a context from :meth:`to_dict`'s output (str or bytes values, or its JSON).

        Also reads what llama-index-workflows' ``Context.to_dict()`` made (the nested
        dict, its JSON, or a Redis hash of it), so a run in flight there goes on here.
        """
        ser = serializer or JsonSerializer()
        graph = workflow._compiled().graph
        tree = _parse_flat(data)
        if is_llama_snapshot(tree):  # made by llama-index-workflows: a run moving to piton
            ctx: Context[Any] = cls(workflow, serializer=ser)
            ctx._link.state = read_llama_snapshot(tree, workflow, uuid.uuid4().hex)
            return ctx
        if "format" not in tree:
            raise ContextSerdeError(
                "The data is neither a piton context (no 'format' key) nor one made by "
                "llama-index-workflows (no 'is_running' or 'workers' key). Pass what "
                "ctx.to_dict() returned."
            )
        stored = tree.pop("serializer", "json")
        if stored == "pickle" and ser.name != "pickle":
            raise ContextSerdeError(
                "This context was written with PickleSerializer; pass "
                "serializer=PickleSerializer() to from_dict() to read it."
            )
        ctx = cls(workflow, serializer=ser)
        try:
            ctx._link.state = decode_run(tree, graph, ser)
        except ContextSerdeError:
            raise
        except PitonError as exc:  # e.g. work for a step this workflow no longer has
            raise ContextSerdeError(
                f"The context cannot be restored into workflow '{graph.workflow}': {exc}"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - the payload is untrusted: say it is damaged
            raise ContextSerdeError(
                f"The context data is damaged ({type(exc).__name__}: {exc})."
            ) from exc
        return ctx


def _parse_flat(data: Mapping[str, Any] | str | bytes) -> dict[str, Any]:
    """to_dict()'s flat dict (str or bytes values, or its JSON text) -> one JSON tree per key.

    A llama-index-workflows context (nested, or kept in a Redis hash) comes out as its tree.
    """
    if isinstance(data, str | bytes):
        data = _json_value(data, "The context data")
    if not isinstance(data, Mapping):
        raise ContextSerdeError(f"Context.from_dict() needs a dict, got {type(data).__qualname__}.")
    tree: dict[str, Any] = {}
    for raw_key, raw in data.items():
        if isinstance(raw_key, bytes):
            try:
                raw_key = raw_key.decode()
            except UnicodeDecodeError as exc:
                raise ContextSerdeError(
                    f"A context key is damaged: {raw_key[:80]!r} is not UTF-8 ({exc})."
                ) from exc
        key = str(raw_key)
        tree[key] = (
            _json_value(raw, f"Context key '{key[:80]}'") if isinstance(raw, str | bytes) else raw
        )
    return tree


def _json_value(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ContextSerdeError(f"{what} nests too deeply to be read; it is damaged.") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise ContextSerdeError(f"{what} is damaged: it is not valid JSON ({exc}).") from exc


class StepContext(Context[StateT]):
    """The context a step receives: the run's context plus its own execution."""

    def __init__(self, parent: Context[StateT], step_run: StepControl) -> None:
        self._workflow = parent._workflow
        self._link = parent._link  # the run's: its state, its runner, its edit lock
        self._store = parent._store
        self._step_run = step_run
        # Made once per execution, in the execution's own task, before the step's body
        # runs (a sync step's thread runs in a copy of that task's context).
        _STEP_CONTEXT.set(self)

    def _step_only(self, what: str) -> StepControl:
        return self._step_run

    def send_event(self, event: Event, step: str | None = None) -> None:
        self._step_run.send(event, step)

    def write_event_to_stream(self, event: Event | None) -> None:
        if event is not None:
            self._step_run.stream_write(event)


def link_of(ctx: Context[Any]) -> RunLink:
    """The runtime's side of ``ctx`` (what a run started with it updates)."""
    return ctx._link


def prepare_run(ctx: Context[Any], workflow: Workflow) -> RunLink:
    """Check that ``ctx`` may start a run of ``workflow``, and bind it to that instance."""
    if ctx._workflow is not workflow and type(ctx._workflow) is not type(workflow):
        raise WorkflowRuntimeError(
            f"This context belongs to workflow '{ctx._workflow.workflow_name}', not "
            f"'{workflow.workflow_name}'."
        )
    if ctx.is_running:
        raise ContextStateError(
            "This context is already running a workflow. Wait for that run to finish, or "
            "start the new run with a new Context."
        )
    ctx._workflow = workflow
    return ctx._link


__all__ = ["Context", "DictState", "StateStore", "StepContext", "WaitingForEvent"]
