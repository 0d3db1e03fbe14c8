"""Reading the context dicts that llama-index-workflows' ``Context.to_dict()`` makes.

A run in flight under llama-index-workflows moves to piton without being lost:
``Context.from_dict(w, data)`` sees the llama shape (``version``, ``state``,
``is_running``, ``workers``, ... instead of piton's flat ``format`` payload) and turns it
into piton's run state here. The payload may be the nested dict itself, its JSON, or a
Redis hash of it (each top-level value a JSON string, str or bytes), as the seed
document's third example keeps it; ``context.py`` parses that layer first.

How the parts map (llama serialization versions 1 and 2):

- ``state``: the in-memory state store. A ``DictState``'s values, or the typed state
  model, become the run's state.
- ``is_running`` false: only the state is kept; ``run(ctx=...)`` starts a new run with
  it, as in llama-index-workflows.
- ``workers[step]``: the step's ``in_progress`` and ``queue`` entries are queued again
  (a step that was running runs again from its input, as piton does after a crash;
  a retry waiting out its delay keeps its retry number, last error and due time);
  its ``collected_waiters`` re-run their step, which waits again (and publishes its
  ``waiter_event`` again); an event that had already answered a waiter is kept for it.
  ``collected_events`` under an explicit ``buffer_id`` go into that piton buffer; the
  ``"default"`` buffer's events go back through their step, whose ``collect_events``
  call adds them again (llama's default buffer does not record what it waits for).
- ``deliveries``: events sent or returned but not yet routed are routed now. Sends a
  running step had made are not made twice when it runs again.
- ``elapsed_alive``: the time the run has used of its timeout, as piton's own.

Ignored: llama's counters (``stream_seq``, ``work_item_seq``, ``invocation_seq``,
``journal_seq``), ``last_alive_stamp`` (llama resets it on resume too), ids and
bookkeeping inside work items (``work_item_id``, ``worker_id``, ``recovery_counts``,
``received`` once counted, an in-progress item's copy of the buffers,
``collect_generations``), and what a waiting step's re-run sets again (the waited type,
its requirements, its timeout, which llama does not keep). ``streams`` and
``collection_release_states`` (llama features piton lacks) are refused when not empty.

Events and state models are resolved by class name (the module differs once the imports
change): the workflow's own types first, then loaded classes of that name, the
workflow's module first. Nothing is imported by a name the data gives.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ._core.graph import Graph
from ._core.state import RUNNING, Attempt, CollectBuffer, Envelope, RunState
from .errors import ContextSerdeError, PitonError
from .events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)
from .serde import JsonSerializer, TypeResolver

if TYPE_CHECKING:
    from .workflow import Workflow

VERSIONS = (1, 2)
"""The llama-index-workflows serialization versions read here."""

# keys every llama-index-workflows context has (versions 1-2: the first two; 0: all) and
# piton's never has: a damaged piton payload is never taken for a llama one
_SHAPE = frozenset({"workers", "is_running", "queues", "in_progress", "broker_log", "waiting_ids"})
_FRAMEWORK: dict[str, type[BaseModel]] = {
    cls.__name__: cls
    for cls in (Event, StartEvent, StopEvent, InputRequiredEvent, HumanResponseEvent)
}
_DEFAULT_BUFFER = "default"
# llama features piton has no counterpart for: a snapshot using them cannot move
_UNSUPPORTED = {
    "streams": "collection streams",
    "collection_release_states": "list[Event] collect parameters",
}


def is_llama_snapshot(tree: Mapping[str, Any]) -> bool:
    """A llama-index-workflows ``to_dict()`` payload (not piton's, which has ``format``)."""
    return "format" not in tree and bool(_SHAPE & tree.keys())


def read_llama_snapshot(tree: Mapping[str, Any], workflow: Workflow, run_id: str) -> RunState:
    """The piton run state (as run ``run_id``) for a llama-index-workflows context dict;
    ContextSerdeError naming the part and the fix when it cannot be moved."""
    graph = workflow._compiled().graph
    reader = _Reader(graph, type(workflow).__module__)
    version = tree.get("version")
    if version is None or version == 0:
        raise ContextSerdeError(
            "This is a llama-index-workflows context in the legacy format (version 0, no "
            "'version' key), which piton does not read. Load it with llama-index-workflows "
            "2.x and save it again: `Context.from_dict(w, data).to_dict()` gives version 2."
        )
    if isinstance(version, bool) or version not in VERSIONS:
        raise ContextSerdeError(
            f"This llama-index-workflows context has version {version!r:.40}; piton reads "
            f"versions {', '.join(map(str, VERSIONS))}. Save it with llama-index-workflows 2.x."
        )
    with _part("state"):
        values = reader.state(tree.get("state") or {})
    state = workflow._new_state(run_id, values=values)
    if not tree.get("is_running"):
        return state  # a finished or unstarted run: its state goes on into the next run
    for key, what in _UNSUPPORTED.items():
        if tree.get(key):
            raise ContextSerdeError(
                f"This llama-index-workflows context uses {what} ('{key}'), which piton "
                "does not have. Finish the run under llama-index-workflows."
            )
    state.status = RUNNING
    with _part("elapsed_alive"):  # the run's timeout budget already used, as llama keeps it
        state.active_elapsed = max(_num(tree.get("elapsed_alive")) or 0.0, 0.0)
    with _part("workers"):
        workers = _obj(tree.get("workers") or {}, "workers")
        deliveries = [
            _obj(d, "delivery") for d in _list(tree.get("deliveries") or [], "deliveries")
        ]
        sent = _sent_by_invocation(workers, deliveries)
        for step, worker in workers.items():
            reader.worker(state, _text(step, "step name"), _obj(worker, f"worker '{step}'"), sent)
    with _part("deliveries"):
        for item in deliveries:
            reader.delivery(state, item)
    return state


def _sent_by_invocation(
    workers: Mapping[str, Any], deliveries: list[dict[str, Any]]
) -> dict[str, int]:
    """Per running invocation, how many of its sends are already made (delivered, or
    waiting in ``deliveries``, which are routed here): llama numbers an invocation's sends
    from 0, as piton does, so its re-run's first that many are dropped."""
    done: dict[str, int] = {}
    for worker in workers.values():
        for item in (worker or {}).get("in_progress") or []:
            if isinstance(item, dict) and isinstance(item.get("invocation_id"), str):
                invocation = item["invocation_id"]
                made = {i for i in item.get("received") or [] if isinstance(i, int)}
                made |= {
                    d["index"]
                    for d in deliveries
                    if d.get("invocation_id") == invocation and isinstance(d.get("index"), int)
                }
                n = 0
                while n in made:
                    n += 1
                done[invocation] = n
    return done


class _Reader:
    def __init__(self, graph: Graph, home: str) -> None:
        self.graph = graph
        self.home = home  # the workflow's module: its types win a tie of names
        self.known: list[type[Any]] = list(dict.fromkeys(graph.event_types.values()))
        if graph.state_type is not None:
            self.known.append(graph.state_type)
        self.found: dict[str, type[Any]] = {}
        self.owners = 0
        self.types = TypeResolver.of(graph)

    # -- types and values ----------------------------------------------------------------

    def resolve(self, qualified: str, base: type[Any]) -> type[Any]:
        found = self.found.get(qualified)
        if found is not None and issubclass(found, base):
            return found
        module, _, name = qualified.rpartition(".")
        if (module == "workflows" or module.startswith("workflows.")) and name in _FRAMEWORK:
            found = _FRAMEWORK[name]
        else:
            found = self._by_name(name, base)
        if found is None or not issubclass(found, base):
            raise ContextSerdeError(
                f"The llama-index-workflows context names the type '{qualified[:200]}', and "
                f"workflow '{self.graph.workflow}' has no {_kind(base)} named '{name[:80]}'. "
                "Define it (with piton imports) in the workflow's module, or import the "
                "module that defines it, before restoring."
            )
        self.found[qualified] = found
        return found

    def _by_name(self, name: str, base: type[Any]) -> type[Any] | None:
        known = [c for c in self.known if c.__name__ == name and issubclass(c, base)]
        if len(known) == 1:
            return known[0]
        loaded = [c for c in dict.fromkeys(_subclasses(base)) if c.__name__ == name]
        for group in ([c for c in loaded if c.__module__ == self.home], loaded):
            if len(group) == 1:
                return group[0]
            if len(group) > 1:
                raise ContextSerdeError(
                    f"The llama-index-workflows context names the type '{name}', and more "
                    "than one class has that name: "
                    f"{', '.join(sorted(f'{c.__module__}.{c.__qualname__}' for c in group))}. "
                    "Keep one of them, or restore in a process that loads only the one the "
                    "workflow uses."
                )
        return None

    def value(self, tree: Any) -> Any:
        """A value llama's JsonSerializer wrote (JSON with ``__is_pydantic`` wrappers)."""
        if isinstance(tree, list):
            return [self.value(item) for item in tree]
        if not isinstance(tree, dict):
            return tree
        if tree.get("__is_component"):
            raise ContextSerdeError(
                f"The llama-index-workflows context holds a LlamaIndex component "
                f"('{str(tree.get('qualified_name'))[:200]}'), which piton cannot rebuild. "
                "Keep plain data or pydantic models in the state and events."
            )
        if tree.get("__is_pydantic") and isinstance(tree.get("qualified_name"), str):
            cls = self.resolve(tree["qualified_name"], BaseModel)
            data = tree.get("value")
            if not isinstance(data, dict):
                raise ContextSerdeError(
                    f"A stored {cls.__name__} is damaged: expected an object, got {data!r:.80}"
                )
            if issubclass(cls, Event):
                extra = data.get("_data") or {}
                fields = {k: v for k, v in data.items() if k != "_data"}
                return cls(**{**_obj(extra, "event data"), **fields})
            return cls.model_validate(data)
        return {k: self.value(v) for k, v in tree.items()}

    def serialized(self, text: Any, what: str) -> Any:
        """A value stored as the serializer's string (as events and state values are)."""
        if not isinstance(text, str):
            return self.value(text)
        try:
            tree = json.loads(text)
        except ValueError:
            raise ContextSerdeError(
                f"The {what} is not JSON (it begins {text[:40]!r}). piton reads llama-index-"
                "workflows contexts made with its JsonSerializer, not PickleSerializer."
            ) from None
        return self.value(tree)

    def event(self, text: Any, what: str) -> Event:
        event = self.serialized(text, what)
        if not isinstance(event, Event):
            raise ContextSerdeError(f"The {what} is not an event: {event!r:.80}")
        return event

    # -- the state store -----------------------------------------------------------------

    def state(self, tree: Mapping[str, Any]) -> Any:
        tree = _obj(tree, "state")
        state_type = self.graph.state_type
        store_type = tree.get("store_type", "in_memory")
        if store_type != "in_memory":
            raise ContextSerdeError(
                f"The llama-index-workflows state lives in a '{store_type!s:.40}' store; the "
                "context holds only a handle to it. Save the context with the in-memory "
                "state store to move the run."
            )
        data = tree.get("state_data")
        if isinstance(data, str):
            data = json.loads(data)
        if not data:
            return None  # no state yet: the workflow's initial state
        if isinstance(data, dict) and "_data" in data:
            values = {
                _text(k, "state key"): self.serialized(v, f"state value '{k}'")
                for k, v in _obj(data["_data"], "state values").items()
            }
            if state_type is None:
                return values
            return state_type.model_validate(values)
        value = self.value(data)
        if not isinstance(value, BaseModel):
            raise ContextSerdeError(
                f"The stored state is not a DictState or a model: {value!r:.80}"
            )
        if state_type is None:
            raise ContextSerdeError(
                f"The llama-index-workflows run keeps a typed state "
                f"({type(value).__name__}), and workflow '{self.graph.workflow}' has none. "
                f"Type its steps' context as Context[{type(value).__name__}]."
            )
        if not isinstance(value, state_type):
            value = state_type.model_validate(value.model_dump())
        return value

    # -- work ------------------------------------------------------------------------------

    def worker(
        self, state: RunState, step: str, worker: Mapping[str, Any], sent: Mapping[str, int]
    ) -> None:
        if step not in self.graph.steps:
            raise ContextSerdeError(
                f"The llama-index-workflows run has work for step '{step[:200]}', which "
                f"workflow '{self.graph.workflow}' does not have. Keep the step's name."
            )
        if worker.get("static_collect_events"):
            raise ContextSerdeError(
                f"Step '{step}' collects events through several event parameters, which "
                "piton does not have. Finish the run under llama-index-workflows."
            )
        with _part(f"{step}.collected_events"):
            for bid, events in _obj(worker.get("collected_events") or {}, "buffers").items():
                evs = [self.event(e, f"event collected by '{step}'") for e in _list(events, bid)]
                if bid == _DEFAULT_BUFFER:
                    for ev in evs:  # back through the step: its collect_events adds them
                        self.queue(state, step, ev, {})
                else:
                    self.buffer(state, bid, evs)
        with _part(f"{step}.in_progress"):
            for item in _list(worker.get("in_progress") or [], "in_progress"):
                item = {"event": item} if isinstance(item, str) else _obj(item, "in_progress")
                a = self.queue(state, step, self.event(item.get("event"), "event"), item)
                done = sent.get(str(item.get("invocation_id")), 0)
                if done:
                    state.delivered[a.key] = done
        with _part(f"{step}.queue"):
            for item in _list(worker.get("queue") or [], "queue"):
                item = _obj(item, "queued work")
                self.queue(state, step, self.event(item.get("event"), "event"), item)
        with _part(f"{step}.collected_waiters"):
            for w in _list(worker.get("collected_waiters") or [], "waiters"):
                w = _obj(w, "waiter")
                self.queue(state, step, self.event(w.get("event"), "waiting step's event"), w)
                if w.get("resolved_event"):  # answered: the re-run's wait takes it at once
                    ev = self.event(w["resolved_event"], "waiter's answer")
                    state.kept.append(Envelope(state.next_id("e"), ev))

    def queue(self, state: RunState, step: str, ev: Event, item: Mapping[str, Any]) -> Attempt:
        if item.get("bound_events") or item.get("collection_release_payload"):
            raise ContextSerdeError(
                f"Step '{step}' takes several events at once (a fan-in parameter), which "
                "piton does not have. Finish the run under llama-index-workflows."
            )
        if not any(isinstance(ev, t) for t in self.graph.steps[step].accepted):
            raise ContextSerdeError(
                f"The llama-index-workflows run has a {type(ev).__name__} for step "
                f"'{step}', which step '{step}' of workflow '{self.graph.workflow}' does not "
                "accept. Keep the step's event parameter."
            )
        attempts = item.get("attempts") or 0
        a = Attempt(
            step,
            Envelope(state.next_id("e"), ev),
            retry_number=attempts if isinstance(attempts, int) and attempts > 0 else 0,
            first_at=_num(item.get("first_attempt_at")),
            last_error=self.error(item.get("last_exception")),
            last_failed_at=_num(item.get("last_failed_at")),
        )
        not_before = _num(item.get("not_before"))
        if not_before is not None:  # a retry waiting out its delay: a timer, as piton's are
            timer_id = state.next_id("retry:")
            state.delayed[timer_id] = a
            state.deadlines[timer_id] = not_before
        else:
            state.queues.setdefault(step, deque()).append(a)
        return a

    def error(self, tree: Any) -> BaseException | None:
        """llama's ``last_exception`` (type and message), rebuilt without calling its code:
        a builtin exception, a type the workflow knows, or else piton's StoredError."""
        if not isinstance(tree, dict) or not isinstance(tree.get("exception_type"), str):
            return None
        message = str(tree.get("exception_message") or "")
        stored = {"type": tree["exception_type"], "message": message, "args": [message]}
        return JsonSerializer().decode_error(stored, self.types, construct=False)

    def buffer(self, state: RunState, bid: str, events: list[Event]) -> None:
        buf = state.buffers.setdefault(bid, CollectBuffer())
        for ev in events:
            self.owners += 1
            buf.pending.setdefault(type(ev), []).append((f"llama/{bid}/{self.owners}", ev))

    def delivery(self, state: RunState, item: Mapping[str, Any]) -> None:
        ev = self.event(item.get("event"), "undelivered event")
        target = item.get("step_id")
        if isinstance(ev, StopEvent):
            raise ContextSerdeError(
                "The llama-index-workflows run was ending (its StopEvent is not delivered "
                "yet). Let it finish under llama-index-workflows; its result is "
                f"{getattr(ev, 'result', None)!r:.80}."
            )
        if isinstance(target, str) and target:
            step = target.rpartition("/")[2]
            if step not in self.graph.steps:
                raise ContextSerdeError(
                    f"An event is addressed to step '{step}', which is missing."
                )
            self.queue(state, step, ev, {})
            return
        consumers = self.graph.consumers(type(ev))
        for step in consumers:
            self.queue(state, step, ev, {})
        if not consumers and not isinstance(ev, InputRequiredEvent):
            state.kept.append(Envelope(state.next_id("e"), ev))


def _kind(base: type[Any]) -> str:
    return "event type" if issubclass(base, Event) else "event type or pydantic model"


def _subclasses(base: type[Any]) -> list[type[Any]]:
    out: list[type[Any]] = []
    stack = [base]
    while stack:
        for sub in stack.pop().__subclasses__():
            out.append(sub)
            stack.append(sub)
    return out


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContextSerdeError(f"The {what} is damaged: expected an object, got {value!r:.80}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ContextSerdeError(f"The {what} is damaged: expected a list, got {value!r:.80}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ContextSerdeError(f"The {what} is damaged: expected a string, got {value!r:.80}")
    return value


@contextmanager
def _part(name: str) -> Iterator[None]:
    """Names the part being read in any error raised while reading it."""
    try:
        yield
    except ContextSerdeError as exc:
        if str(exc).startswith("In '"):
            raise
        raise ContextSerdeError(f"In '{name}' of the llama context: {exc}") from exc
    except PitonError:
        raise
    except Exception as exc:  # noqa: BLE001 - the payload is untrusted: say where it is damaged
        raise ContextSerdeError(
            f"In '{name}' of the llama context: it is damaged ({type(exc).__name__}: "
            f"{str(exc)[:300]})."
        ) from exc


__all__ = ["VERSIONS", "is_llama_snapshot", "read_llama_snapshot"]
