"""Workflows the HTTP tests serve (in a thread, and by ``piton serve`` in a subprocess)."""

from __future__ import annotations

import asyncio

from pydantic import Field

from piton import Context, Event, StartEvent, StopEvent, Workflow, step


class Order(StartEvent):
    item: str
    qty: int = Field(gt=0, le=50)


class Progress(Event):
    n: int


class Count(Workflow):
    """Writes one Progress event per unit, then returns."""

    @step
    async def count(self, ev: Order, ctx: Context) -> StopEvent:
        for n in range(ev.qty):
            ctx.write_event_to_stream(Progress(n=n))
            await asyncio.sleep(0.01)
        return StopEvent(result=f"{ev.qty} x {ev.item}")


class Approval(Event):
    ok: bool


class Approve(Workflow):
    """Waits for an Approval sent from outside."""

    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(Approval)
        return StopEvent(result="approved" if answer.ok else "refused")


workflows = [Count, Approve]
