"""The workflow the workers run: score an expense, and ask a person when it is large."""

from __future__ import annotations

from piton import Context, Event, StartEvent, StopEvent, Workflow, step


class Expense(StartEvent):
    who: str
    amount: float


class Scored(Event):
    who: str
    amount: float
    risky: bool


class Approval(Event):
    approved: bool
    by: str


class Expenses(Workflow):
    @step
    async def score(self, ev: Expense) -> Scored:
        return Scored(who=ev.who, amount=ev.amount, risky=ev.amount > 1000)

    @step
    async def decide(self, ev: Scored, ctx: Context) -> StopEvent:
        if not ev.risky:
            return StopEvent(result=f"{ev.who}: {ev.amount:.2f} paid")
        # parks the run: no worker holds it while it waits, for seconds or for weeks
        answer = await ctx.wait_for_event(Approval)
        verdict = "paid" if answer.approved else "refused"
        return StopEvent(result=f"{ev.who}: {ev.amount:.2f} {verdict} by {answer.by}")
