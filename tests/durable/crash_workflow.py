"""A durable workflow for tests/durable/test_crash.py, run as a subprocess and killed with SIGKILL.

DB is a SQLite file or a store URL (postgresql://..., redis://...).

    python crash_workflow.py run  DB RUN_ID SIDE_EFFECTS   # start or resume; prints the result
    python crash_workflow.py park DB RUN_ID SIDE_EFFECTS   # start a run that parks; prints "parked"
    python crash_workflow.py send DB RUN_ID SIDE_EFFECTS   # wake the parked run; prints the result

About 21 step executions: ``start`` fans out ITEMS events to ``work`` (num_workers=4),
``collect`` gathers their results (one execution per result), ``flaky`` fails on its
first attempt and is retried, ``loop`` runs LOOPS iterations with ``ctx.checkpoint()``
after each, ``finish`` ends the run. Every step body appends ``step:key`` to the
side-effect file (flushed and fsynced) just before it returns, so a line appears twice
only when a kill came after the line was written and before the step's commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from piton import (  # noqa: E402
    Context,
    Event,
    HumanResponseEvent,
    StartEvent,
    StopEvent,
    Workflow,
    retry_policy,
    step,
)
from piton.retry import retry_if_exception_type, stop_after_attempt, wait_fixed  # noqa: E402

ITEMS = 8
LOOPS = 6
NUM_WORKERS = {"start": 1, "work": 4, "collect": 1, "flaky": 1, "loop": 1, "finish": 1}
DELAY = 0.06


class Item(Event):
    i: int


class Done(Event):
    i: int
    value: int


class Summed(Event):
    total: int


class Checked(Event):
    total: int


class Looped(Event):
    total: int
    acc: int


class Transient(Exception):
    pass


def side_effect(key: str) -> None:
    with open(os.environ["PITON_SIDE_EFFECTS"], "a") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())


class CrashFlow(Workflow):
    @step
    async def start(self, ev: StartEvent, ctx: Context) -> Item | None:
        await asyncio.sleep(DELAY)
        for i in range(ITEMS):
            ctx.send_event(Item(i=i))
        side_effect("start:start")

    @step(num_workers=NUM_WORKERS["work"])
    async def work(self, ev: Item, ctx: Context) -> Done:
        await asyncio.sleep(DELAY)
        side_effect(f"work:{ev.i}")
        return Done(i=ev.i, value=ev.i * ev.i)

    @step(num_workers=1)
    async def collect(self, ev: Done, ctx: Context) -> Summed | None:
        got = ctx.collect_events(ev, [Done] * ITEMS)
        side_effect(f"collect:{ev.i}")
        if got is None:
            return None
        return Summed(total=sum(d.value for d in got))  # type: ignore[attr-defined]

    @step(
        retry_policy=retry_policy(
            retry=retry_if_exception_type(Transient),
            wait=wait_fixed(0.1),
            stop=stop_after_attempt(5),
        )
    )
    async def flaky(self, ev: Summed, ctx: Context) -> Checked:
        await asyncio.sleep(DELAY)
        attempt = ctx.retry_info().retry_number
        side_effect(f"flaky:attempt-{attempt}")
        if attempt == 0:
            raise Transient("first attempt always fails")
        return Checked(total=ev.total)

    @step
    async def loop(self, ev: Checked, ctx: Context) -> Looped:
        k = await ctx.store.get("loop.next", default=0)
        acc = await ctx.store.get("loop.acc", default=0)
        while k < LOOPS:
            await asyncio.sleep(DELAY * 2)
            acc += (k + 1) * 100
            k += 1
            await ctx.store.set("loop.acc", acc)
            await ctx.store.set("loop.next", k)
            side_effect(f"loop-iter:{k - 1}")
            await ctx.checkpoint()
        side_effect("loop:done")
        return Looped(total=ev.total, acc=acc)

    @step
    async def finish(self, ev: Looped, ctx: Context) -> StopEvent:
        side_effect("finish:finish")
        return StopEvent(result={"total": ev.total, "acc": ev.acc})


class ParkFlow(Workflow):
    @step
    async def prepare(self, ev: StartEvent, ctx: Context) -> Item:
        side_effect("prepare:prepare")
        return Item(i=ev.n)

    @step
    async def ask(self, ev: Item, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(HumanResponseEvent)
        side_effect("ask:ask")
        return StopEvent(result=f"{ev.i}:{answer.response}")


async def main(mode: str, db: str, run_id: str) -> None:
    url = db if "://" in db else "sqlite:///" + db  # a store URL, or a SQLite file
    if mode == "run":
        result = await CrashFlow(store=url).run(run_id=run_id)
        print(json.dumps(result), flush=True)
    elif mode == "park":
        handler = ParkFlow(store=url).run(run_id=run_id, n=7)
        store = ParkFlow(store=url).store
        assert store is not None
        while True:
            record = await store.get(run_id)
            if record is not None and record.status == "parked":
                break
            await asyncio.sleep(0.02)
        print("parked", flush=True)
        await handler  # never returns: the test kills this process while parked
    elif mode == "send":
        handler = ParkFlow(store=url).run(run_id=run_id)
        await handler.send_event(HumanResponseEvent(response="yes"))
        print(json.dumps(await handler), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    os.environ["PITON_SIDE_EFFECTS"] = sys.argv[4]
    crash_after = int(os.environ.get("PITON_TEST_CRASH_AFTER_COMMIT") or 0)
    if crash_after:
        from piton.testing import crash_after_commit

        crash_after_commit(crash_after)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
