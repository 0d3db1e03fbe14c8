"""The workflows of tests/durable/test_promises.py, one per situation the issue reports.

Steps write their visible effects with ``files.side_effect`` (one fsynced line each).
``PITON_MODEL_BLOCK`` makes the first process block at a chosen point, so the test can
kill it there; a resuming process runs without it.
"""

from __future__ import annotations

import asyncio
import os

from piton import (
    Context,
    Event,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    retry_policy,
    step,
)
from piton.retry import retry_if_exception_type, stop_after_attempt, wait_fixed

from .files import side_effect

DOCS = 10


def blocked(point: str) -> bool:
    return os.environ.get("PITON_MODEL_BLOCK") == point


class Answer(Event):
    text: str


class Ask(InputRequiredEvent):
    question: str


class Note(Event):
    text: str


class Mid(Event):
    pass


class DocLoop(Workflow):
    """The seed's document loop: convert each document once, checkpoint after each."""

    @step
    async def convert(self, ev: StartEvent, ctx: Context) -> StopEvent:
        done: list[int] = list(await ctx.store.get("converted_ids", default=[]))
        for doc_id in range(1, DOCS + 1):
            if doc_id in done:
                continue
            side_effect(f"convert:{doc_id}")
            if blocked(f"doc-{doc_id}"):
                await asyncio.sleep(3600)  # the test kills the process here
            done.append(doc_id)
            await ctx.store.set("converted_ids", done)
            await ctx.checkpoint()
        return StopEvent(result=done)


class AskFlow(Workflow):
    """A human answers a question; the run waits for the answer."""

    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(Answer, waiter_event=Ask(question="name?"))
        return StopEvent(result=f"answer: {answer.text}")


class WorkThenWait(Workflow):
    """A step works a while, then waits for an event its caller sent during that work."""

    @step
    async def work(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await asyncio.sleep(0.2)
        answer = await ctx.wait_for_event(Answer, timeout=5)
        return StopEvent(result=f"answer: {answer.text}")


class KeepFlow(Workflow):
    """A Note sent while only a waiter for Answer exists must be kept for a later waiter."""

    @step
    async def first(self, ev: StartEvent, ctx: Context) -> Mid:
        await ctx.wait_for_event(Answer, waiter_event=Ask(question="go?"), waiter_id="go")
        return Mid()

    @step
    async def second(self, ev: Mid, ctx: Context) -> StopEvent:
        note = await ctx.wait_for_event(Note, waiter_id="note")
        return StopEvent(result=f"note: {note.text}")


class Flaky(Exception):
    """An exception whose constructor has a keyword-only argument (not rebuildable from args)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class RetryFlow(Workflow):
    """Fails on its first attempt, is retried after a 1 s back-off, then succeeds."""

    @step(
        retry_policy=retry_policy(
            retry=retry_if_exception_type(Flaky),
            wait=wait_fixed(1.0),
            stop=stop_after_attempt(3),
        )
    )
    async def flaky(self, ev: StartEvent, ctx: Context) -> StopEvent:
        attempt = ctx.retry_info().retry_number
        side_effect(f"attempt-{attempt}")
        if attempt == 0:
            raise Flaky("the first attempt fails", code=503)
        return StopEvent(result=f"ok after {attempt} retry")


class SlowFlow(Workflow):
    """One step that the first process never finishes (it blocks mid-step)."""

    @step
    async def slow(self, ev: StartEvent, ctx: Context) -> StopEvent:
        side_effect("slow:start")
        if blocked("slow"):
            await asyncio.sleep(3600)
        return StopEvent(result="slow done")


class QuickFlow(Workflow):
    """Two quick steps: the StopEvent's commit races the listener that sees it."""

    @step
    async def first(self, ev: StartEvent, ctx: Context) -> Mid:
        return Mid()

    @step
    async def end(self, ev: Mid, ctx: Context) -> StopEvent:
        return StopEvent(result=42)


class FailFlow(Workflow):
    """A quick step, then one that fails for good: the failure reaches listeners."""

    @step
    async def first(self, ev: StartEvent, ctx: Context) -> Mid:
        return Mid()

    @step
    async def end(self, ev: Mid, ctx: Context) -> StopEvent:
        raise ValueError("this step always fails")


FLOWS: dict[str, type[Workflow]] = {
    cls.__name__: cls
    for cls in (DocLoop, AskFlow, WorkThenWait, KeepFlow, RetryFlow, SlowFlow, QuickFlow, FailFlow)
}
