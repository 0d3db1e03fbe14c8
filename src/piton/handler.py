"""WorkflowHandler: what ``w.run()`` returns. Await it for the result."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from ._core.status import RunStatus
from ._runtime.engine import RunControl
from .context import Context
from .errors import WorkflowRuntimeError
from .events import Event, StopEvent
from .views import Waiting, waiting_of


class WorkflowHandler(asyncio.Future[Any]):
    """A running workflow: ``await handler`` gives the result (or raises the run's error).

    The result is ``StopEvent.result``, or the event itself for a StopEvent subclass.
    Several handlers may follow one run (callers in one process attaching to it).
    """

    def __init__(self, *, run_id: str, ctx: Context[Any], control: RunControl) -> None:
        super().__init__(loop=control.outcome.get_loop())
        self._run_id = run_id
        self._ctx = ctx
        self._control = control
        self._stream_consumed = False  # a stream_events() went past the StopEvent
        # the run does not keep its handler alive: a handler nobody holds is collected,
        # and a durable run then keeps nothing in this process once it parks
        control.outcome.add_done_callback(functools.partial(_tell, weakref.ref(self)))
        control.handler_added()
        weakref.finalize(self, control.handler_dropped)

    def _take_outcome(self, outcome: asyncio.Future[Any]) -> None:
        error = None if outcome.cancelled() else outcome.exception()  # retrieved either way
        if self.done():
            return
        if outcome.cancelled():
            self.cancel()
        elif error is not None:
            self.set_exception(error)
        else:
            self.set_result(outcome.result())

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def ctx(self) -> Context[Any]:
        return self._ctx

    def is_done(self) -> bool:
        return self.done()

    @property
    def status(self) -> RunStatus:
        """Where the run stands: ``queued`` (not started yet), ``running``, ``parked``
        (a durable run waiting for an event or a deadline, held by no process), or its
        final status: ``completed``, ``failed``, ``cancelled``, ``timed_out``. For a
        durable run it is the status of its last durable commit."""
        return self._control.status

    @property
    def waiting_for(self) -> list[Waiting]:
        """What the run waits for now: one entry per ``wait_for_event`` / ``ctx.sleep``."""
        state = self._control.latest
        return [] if state is None or state.finished else waiting_of(state)

    async def stream_events(
        self, expose_internal: bool = False, *, cursor: int | None = None
    ) -> AsyncIterator[Event]:
        """Events published by the run, ending with its StopEvent, then live ones as they come.

        ``cursor`` skips the first ``cursor`` events: a listener that saw n events and
        re-attaches (after a crash, from another process) passes ``cursor=n`` to go on where
        it stopped. A durable run's stream is stored, so it replays from the first event.
        Once a ``stream_events()`` of this handler has gone past the StopEvent, another
        one without ``cursor=`` raises ``WorkflowRuntimeError``, as in llama-index-workflows;
        with ``cursor=0`` it reads the stream again from its start.
        ``expose_internal`` is accepted for llama-index-workflows compatibility; piton
        publishes no internal events.
        """
        if cursor is None:
            if self._stream_consumed:
                raise WorkflowRuntimeError(
                    f"All the streamed events of run '{self._run_id}' have already been "
                    "consumed by an earlier stream_events() of this handler. To read them "
                    "again, pass a cursor: stream_events(cursor=0) from the first event, "
                    "stream_events(cursor=n) after the first n."
                )
            cursor = 0
        elif cursor < 0:
            raise ValueError(f"stream_events(cursor={cursor}): the cursor counts events, >= 0.")
        async for ev in self._control.events(cursor):
            yield ev
            if isinstance(ev, StopEvent):
                self._stream_consumed = True

    def get_stop_event(self) -> StopEvent | None:
        """The event that closed the run's stream, once it is done: its ``StopEvent``, or a
        ``WorkflowFailedEvent`` / ``WorkflowTimedOutEvent`` / ``WorkflowCancelledEvent``."""
        if not self.done():
            return None
        for ev in reversed(self._control.stream):
            if isinstance(ev, StopEvent):
                return ev
        return None

    def send_event(self, event: Event, step: str | None = None) -> Awaitable[None]:
        """Send ``event`` into the run. It is sent at once; awaiting waits until it is stored."""
        return self._control.send_event(event, step)

    def cancel_run(self) -> Awaitable[None]:
        """Stop the run; ``await handler`` then raises ``WorkflowCancelledByUser``."""
        return self._control.cancel_run()

    def cancel(self, msg: Any | None = None) -> bool:
        """Stop waiting for this run (``asyncio.wait_for`` does on timeout).

        An in-memory run is cancelled with it. A durable run is not: it goes on in this
        process until it finishes or parks, and stays resumable if the process exits.
        ``cancel_run()`` is what ends a run.
        """
        cancelled = super().cancel(msg)
        if cancelled:
            self._control.listener_gone()
        return cancelled

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<WorkflowHandler run_id={self._run_id!r} {state}>"


def _tell(ref: weakref.ref[WorkflowHandler], outcome: asyncio.Future[Any]) -> None:
    handler = ref()
    if handler is not None:
        handler._take_outcome(outcome)
    elif not outcome.cancelled():
        outcome.exception()  # retrieved: nobody was left to see it


__all__ = ["WorkflowHandler"]
