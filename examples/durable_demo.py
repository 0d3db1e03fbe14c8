"""Durable demo: a run killed with SIGKILL resumes where it stopped.

    python examples/durable_demo.py

The script starts itself as a child process that converts 8 documents, one step per
document, checkpointed to SQLite (.piton/demo.db). It kills the child with SIGKILL
half-way, then resumes the same run (same run_id) here: the documents whose step
was committed are not converted again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from piton import Context, Event, StartEvent, StopEvent, Workflow, step

HERE = Path.cwd() / ".piton"
DB = HERE / "demo.db"
LOG = HERE / "demo-conversions.log"


class Convert(Event):
    doc_id: int


class Converter(Workflow):
    @step
    async def start(self, ev: StartEvent) -> Convert:
        return Convert(doc_id=0)

    @step(num_workers=1)
    async def convert(self, ev: Convert, ctx: Context) -> Convert | StopEvent:
        await asyncio.sleep(0.15)  # the "work"
        with LOG.open("a") as log:
            log.write(f"{ev.doc_id}\n")
        done = await ctx.store.get("done", default=[])
        done.append(ev.doc_id)
        await ctx.store.set("done", done)
        if ev.doc_id + 1 < 8:
            return Convert(doc_id=ev.doc_id + 1)
        return StopEvent(result=done)


async def run(run_id: str) -> list[int]:
    workflow = Converter(store=f"sqlite:///{DB}", timeout=60)
    result: list[int] = await workflow.run(run_id=run_id)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        asyncio.run(run(sys.argv[2]))
        return
    HERE.mkdir(exist_ok=True)
    LOG.unlink(missing_ok=True)
    run_id = f"demo-{int(time.time())}"
    child = subprocess.Popen([sys.executable, __file__, "--child", run_id])
    time.sleep(0.9)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    before = LOG.read_text().split() if LOG.exists() else []
    print(f"child killed with SIGKILL after converting documents {before}")
    result = asyncio.run(run(run_id))
    after = LOG.read_text().split()
    print(f"resumed run {run_id!r} in a new process: result {result}")
    print(f"conversions performed in all: {after}")
    repeated = sorted({d for d in after if after.count(d) > 1})
    print(f"converted twice (the step in flight at the kill, if any): {repeated}")


if __name__ == "__main__":
    main()
