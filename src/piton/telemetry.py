"""OpenTelemetry spans for runs and steps, when ``opentelemetry-api`` is installed.

A run's execution in a process is one span, ``piton.run <workflow>``; every attempt of a
step is a child span, ``piton.step <step>``. A durable run resumed later (by another
process, a worker after a crash, or when a parked run wakes) starts a new run span with a
link to the span of the execution before it: the span context of each execution is
written to the run's journal (the ``trace`` key of its ``Begin`` and ``Park`` entries),
so the link survives the process. See ``docs/telemetry.md``.

Spans go to the tracer provider given to :func:`use_tracer_provider`, else to
OpenTelemetry's global one (``opentelemetry.trace.set_tracer_provider``). With no
provider configured, or without ``opentelemetry-api``, telemetry is off: a run checks
that once, when it starts, and its steps then cost one ``is None`` test each.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from piton._core.inputs import StepDone, StepFailed, StepWaits

T = TypeVar("T")

TRACER_NAME: Final = "piton"

_trace: Any = None  # the module opentelemetry.trace; False once it failed to import
_context: Any = None  # the module opentelemetry.context
_override: Any = None  # the provider given to use_tracer_provider, if any
_cached: tuple[Any, Any] | None = None  # (provider, its tracer)


_UNKNOWN: Final = object()
_no_env_provider = False  # OTEL_PYTHON_TRACER_PROVIDER was not set when piton looked


def _load() -> bool:
    global _trace, _context, _no_env_provider
    if _trace is None:
        try:
            from opentelemetry import context, trace
        except ImportError:
            _trace = False
        else:
            _trace, _context = trace, context
            _no_env_provider = "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
    return _trace is not False


def use_tracer_provider(provider: Any) -> None:
    """Send piton's spans to ``provider`` (an OpenTelemetry ``TracerProvider``) rather than
    to the global one; ``None`` goes back to the global provider.

    OpenTelemetry lets a process set its global provider only once: tests, and programs
    that keep piton's spans apart, give piton one of its own here. It applies to runs
    that start afterwards."""
    global _override, _cached
    _override = provider
    _cached = None


def _tracer() -> Any:
    """The tracer for a run starting now, or None: telemetry is off."""
    global _cached
    trace = _trace
    if trace is False:  # no opentelemetry-api
        return None
    if trace is None:
        if not _load():
            return None
        trace = _trace
    provider = _override
    if provider is None:
        # opentelemetry's global provider, as get_tracer_provider() gives it; but while
        # none is set (and the environment names none), without its os.environ lookup
        if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None and _no_env_provider:
            return None
        provider = trace.get_tracer_provider()
    cached = _cached
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = None
    # the API's own providers: nothing configured (the proxy), or explicitly none
    if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        version = getattr(sys.modules.get("piton"), "__version__", None)
        tracer = provider.get_tracer(TRACER_NAME, version)
    _cached = (provider, tracer)
    return tracer


def enabled() -> bool:
    """Whether a run starting now would make spans."""
    return _tracer() is not None


# --- the span context in the journal ------------------------------------------------


def to_traceparent(span_context: Any) -> str:
    """A span context as a W3C ``traceparent`` string (what the journal keeps)."""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


def from_traceparent(text: Any) -> Any:
    """The span context a ``traceparent`` string names, or None if it is not one."""
    if not isinstance(text, str) or not _load():
        return None
    parts = text.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    trace = _trace
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))


def previous_execution(entries: Iterable[tuple[int, str]]) -> str | None:
    """The ``traceparent`` of the latest execution recorded in a run's journal tail (the
    ``trace`` key of its last Begin or Park entry), or None."""
    for _, text in reversed(list(entries)):
        if '"trace":' not in text:
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("k") in ("Begin", "Park"):
            found = entry.get("trace")
            if isinstance(found, str):
                return found
    return None


# --- spans ---------------------------------------------------------------------------

_ERROR_STATUSES: Final = frozenset({"failed", "timed_out", "lost"})


class RunTrace:
    """The span of one execution of a run in this process, and its steps' spans."""

    __slots__ = ("_parent", "run_id", "span", "tracer", "traceparent", "workflow")

    def __init__(self, tracer: Any, span: Any, workflow: str, run_id: str) -> None:
        self.tracer = tracer
        self.span = span
        self.workflow = workflow
        self.run_id = run_id
        self._parent = _trace.set_span_in_context(span)
        self.traceparent = to_traceparent(span.get_span_context())

    # -- steps ---------------------------------------------------------------------------

    def step_started(self, step: str, attempt: int, exec_id: str) -> Any:
        return self.tracer.start_span(
            f"piton.step {step}",
            context=self._parent,
            attributes={
                "piton.workflow": self.workflow,
                "piton.run_id": self.run_id,
                "piton.step": step,
                "piton.attempt": attempt,
                "piton.exec_id": exec_id,
            },
        )

    async def inside(self, span: Any, body: Awaitable[T]) -> T:
        """Await a step's body with its span as the current span (the user's own spans
        nest under it; a sync step's thread gets a copy of this context)."""
        token = _context.attach(_trace.set_span_in_context(span))
        try:
            return await body
        finally:
            _context.detach(token)

    def step_ended(self, span: Any, outcome: StepDone | StepFailed | StepWaits | None) -> None:
        """End a step's span with what the runtime fed for it (None: cancelled)."""
        kind = type(outcome).__name__
        if outcome is None:
            status = "cancelled"
        elif kind == "StepDone":
            status = "ok"
        elif kind == "StepWaits":
            status = "waiting"
        else:
            status = "failed" if outcome.retry_in is None else "retry"  # type: ignore[union-attr]
            error = outcome.error  # type: ignore[union-attr]
            span.record_exception(error)
            span.set_status(_trace.Status(_trace.StatusCode.ERROR, _describe(error)))
        span.set_attribute("piton.status", status)
        span.end()

    # -- the run -------------------------------------------------------------------------

    def end(self, status: str, error: BaseException | None = None) -> None:
        """End the run's span: the run ended, parked, or was let go in this process."""
        span = self.span
        span.set_attribute("piton.status", status)
        if status in _ERROR_STATUSES:
            if error is not None:
                span.record_exception(error)
            span.set_status(
                _trace.Status(_trace.StatusCode.ERROR, _describe(error) if error else status)
            )
        span.end()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def start_run(
    workflow: str,
    run_id: str,
    *,
    epoch: int | None = None,
    owner: str | None = None,
    resumed: bool = False,
    previous: Iterable[tuple[int, str]] = (),
) -> RunTrace | None:
    """Start the span of a run's execution here, or return None: telemetry is off.

    ``epoch`` and ``owner`` are a durable run's lease; ``resumed``: the run was stored
    before (it is not new); ``previous`` its journal tail, in which the latest earlier
    execution's span context is looked up to link to it."""
    tracer = _tracer()
    if tracer is None:
        return None
    trace = _trace
    attributes: dict[str, Any] = {"piton.workflow": workflow, "piton.run_id": run_id}
    if epoch is not None:
        attributes["piton.epoch"] = epoch
    if owner is not None:
        attributes["piton.owner"] = owner
    if resumed:
        attributes["piton.resumed"] = True
    links = []
    earlier = from_traceparent(previous_execution(previous)) if resumed else None
    if earlier is not None:
        links.append(trace.Link(earlier, {"piton.link": "previous_execution"}))
    span = tracer.start_span(f"piton.run {workflow}", attributes=attributes, links=links)
    return RunTrace(tracer, span, workflow, run_id)


__all__ = [
    "RunTrace",
    "enabled",
    "from_traceparent",
    "previous_execution",
    "start_run",
    "to_traceparent",
    "use_tracer_provider",
]
