"""Small workflows the CLI tests drive through the real ``piton`` command."""

from __future__ import annotations

from piton import Context, Event, StartEvent, StopEvent, Workflow, step


class CliReply(Event):
    text: str


class Echo(Workflow):
    @step
    async def echo(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=f"echo: {ev.message}")


class Ask(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(CliReply)
        return StopEvent(result=f"answer: {answer.text}")
