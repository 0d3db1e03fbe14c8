"""A first piton workflow: fan out work to parallel steps and collect the results."""

import asyncio

from piton import Context, Event, StartEvent, StopEvent, Workflow, step


class Converted(Event):
    doc_id: int


class Convert(Workflow):
    @step
    async def start(self, ev: StartEvent, ctx: Context) -> Converted | None:
        await ctx.store.set("expected", len(ev.ids))
        for doc_id in ev.ids:
            ctx.send_event(Converted(doc_id=doc_id))
        return None

    @step(num_workers=8)
    async def gather(self, ev: Converted, ctx: Context) -> StopEvent | None:
        expected = await ctx.store.get("expected")
        done = ctx.collect_events(ev, [Converted] * expected)
        return None if done is None else StopEvent(result=sorted(e.doc_id for e in done))


async def main() -> None:
    result = await Convert().run(ids=[3, 1, 2])
    print("converted:", result)


if __name__ == "__main__":
    asyncio.run(main())
