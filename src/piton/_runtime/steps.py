"""One execution of a step, as seen from inside it, and the control flow steps use.

A step's ``ctx`` (the public ``Context``) forwards the step-only operations to the
:class:`StepRun` of its execution: sends (held until the step's outcome), stream writes,
``collect_events``, ``wait_for_event`` and ``ctx.sleep`` (which suspend the step by
raising :class:`WaitingForEvent`), ``retry_info`` and ``checkpoint``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from piton._core import inputs as i
from piton._core.graph import type_key
from piton._core.state import Execution, WaitTimedOut
from piton.errors import WorkflowRuntimeError, WorkflowTimeoutError
from piton.events import Event
from piton.retry import RetryInfo

if TYPE_CHECKING:
    from piton._runtime.runner import Runner


class WaitingForEvent(BaseException):  # noqa: N818 - control flow, not an error
    """Raised inside a step by ``wait_for_event``: the step is suspended, not failed.

    A BaseException so that a step's ``except Exception`` does not swallow it.
    """

    def __init__(
        self,
        waiter_id: str,
        event_type: type[Event] | None,
        requirements: dict[str, Any],
        waiter_event: Event | None,
        timeout: float | None,
    ) -> None:
        super().__init__(waiter_id)
        self.waiter_id = waiter_id
        self.event_type = event_type
        self.requirements = requirements
        self.waiter_event = waiter_event
        self.timeout = timeout


class StepRun:
    """One execution of a step: what its ``ctx`` forwards to."""

    __slots__ = ("count", "ctx", "ex", "runner", "sends", "sleeps", "written")

    def __init__(self, runner: Runner, ex: Execution) -> None:
        self.runner = runner
        self.ex = ex
        self.sends: list[tuple[int, Any, str | None]] = []
        self.count = 0
        self.sleeps = 0
        self.written = 0
        self.ctx: Any = runner.link.for_step(self)

    def send(self, event: Event, step: str | None) -> None:
        self.runner.engine.check_target(event, step)
        self.sends.append((self.count, event, step))
        self.count += 1

    def stream_write(self, event: Event) -> None:
        index, self.written = self.written, self.written + 1
        ex_id = self.ex.id
        runner = self.runner
        runner.call(lambda: runner.feed(i.StreamWrite(runner.clock.now(), event, ex_id, index)))

    def take_sends(self) -> tuple[tuple[int, Any, str | None], ...]:
        sends = tuple(self.sends)
        self.sends.clear()
        return sends

    def collect(
        self, ev: Event, expected: list[type[Event]], buffer_id: str | None
    ) -> list[Event] | None:
        if buffer_id is None:  # cheap to derive: collect_events runs once per event
            first = expected[0].__qualname__ if expected else ""  # not __main__-bound
            buffer_id = f"{self.ex.attempt.step}:{first}*{len(expected)}"
        bid = buffer_id
        runner = self.runner

        def go() -> list[Event] | None:
            return runner.collect(i.Collect(runner.clock.now(), self.ex.id, ev, expected, bid))

        return runner.call(go)

    async def wait_for_event(
        self,
        event_type: type[Any],
        waiter_event: Event | None,
        waiter_id: str | None,
        requirements: dict[str, Any] | None,
        timeout: float | None,
    ) -> Any:
        requirements = dict(requirements or {})
        resolved_by = self.ex.attempt.resolved
        if waiter_id is None:
            # named by the type's qualname, not its module: a run started by `python app.py`
            # (module __main__) resumes in a worker that imports `app`
            reqs = ",".join(f"{k}={v!r}" for k, v in sorted(requirements.items()))
            at = self.ex.attempt.envelope.id
            waiter_id = f"waiter:{event_type.__qualname__}:{reqs}:{at}"
            legacy = f"waiter:{type_key(event_type)}:{reqs}:{at}"  # piton 0.1 runs
            if legacy in resolved_by and waiter_id not in resolved_by:
                waiter_id = legacy
        resolved = resolved_by.get(waiter_id)
        if resolved is None:
            raise WaitingForEvent(waiter_id, event_type, requirements, waiter_event, timeout)
        if isinstance(resolved, WaitTimedOut):
            raise WorkflowTimeoutError(
                f"Timed out waiting for {event_type.__name__} (waiter '{waiter_id}')."
            )
        return resolved

    async def sleep(self, seconds: float, sleep_id: str | None) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise WorkflowRuntimeError(
                f"ctx.sleep() needs a number of seconds >= 0, got {seconds!r}."
            )
        if sleep_id is None:
            sleep_id = f"sleep:{self.sleeps}:{self.ex.attempt.envelope.id}"
            self.sleeps += 1
        if sleep_id in self.ex.attempt.resolved:
            return
        raise WaitingForEvent(sleep_id, None, {}, None, float(seconds))

    def retry_info(self) -> RetryInfo:
        a = self.ex.attempt
        now = self.runner.clock.now()
        return RetryInfo(
            retry_number=a.retry_number,
            elapsed_seconds=0.0
            if a.retry_number == 0 or a.first_at is None
            else max(0.0, now - a.first_at),
            last_exception=a.last_error,
            last_failed_at=None
            if a.last_failed_at is None
            else datetime.fromtimestamp(a.last_failed_at, UTC),
        )

    async def checkpoint(self) -> None:
        """Commit the state and sends so far; return once that commit is durable."""
        sends = self.take_sends()
        runner = self.runner
        runner.feed(i.Checkpoint(runner.clock.now(), self.ex.id, sends))
        await runner.until_durable()


__all__ = ["StepRun", "WaitingForEvent"]
