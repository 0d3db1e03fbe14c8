"""Small workflows the CLI tests drive through the real ``piton`` command."""

from __future__ import annotations

import asyncio

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


class Tally(Event):
    n: int


class Counted(StartEvent):
    n: int
    log: str = ""  # a file each step appends its name to (to count executions)


def note(path: str, what: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(what + "\n")


class Chain(Workflow):
    """first -> second (waits for a CliReply) -> StopEvent; streams a Tally on the way."""

    @step
    async def first(self, ev: Counted, ctx: Context) -> Tally:
        note(ev.log, "first")
        ctx.write_event_to_stream(Tally(n=ev.n))
        return Tally(n=ev.n + 1)

    @step
    async def second(self, ev: Tally, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(CliReply)
        return StopEvent(result={"n": ev.n, "answer": answer.text})


class Handed(Event):
    n: int
    log: str


class Slow(Workflow):
    """first commits; second hangs the first time it runs (until the process is
    interrupted) and returns at once when it runs again."""

    @step
    async def first(self, ev: Counted) -> Handed:
        note(ev.log, "first")
        return Handed(n=ev.n, log=ev.log)

    @step
    async def second(self, ev: Handed) -> StopEvent:
        with open(ev.log, encoding="utf-8") as f:  # noqa: ASYNC230 - a tiny test file
            again = "second" in f.read().split()
        note(ev.log, "second")
        if not again:
            await asyncio.sleep(120)
        return StopEvent(result=ev.n * 2)


class Boom(Workflow):
    @step
    async def boom(self, ev: StartEvent) -> StopEvent:
        raise ValueError("the input is bad")
