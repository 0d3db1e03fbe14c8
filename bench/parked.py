"""Parked runs: what they cost the process that started them, and answering them all.

Run from the repository root::

    .venv/bin/python bench/parked.py [--counts 1000,2000,4000,10000] [--store URL]

For each count N, in a fresh child process (so RSS starts from the same point): start N
durable runs of a one-step workflow that waits for an ``Answer`` (``ctx.wait_for_event``),
keep every handler (a caller awaiting each run), and wait until all N are parked in the
store. Then send each run its answer through its handler and await all N results.
Printed: the time to park N runs, the process's RSS before and after (and per parked
run: "kept" after ``malloc_trim`` hands freed memory back to the OS, "peak" before), and
the time to answer and finish all N. Without ``--store`` each count gets its
own SQLite database in a scratch directory.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

from _harness import ROOT, machine_info, print_columns, print_machine, scratch_dir

sys.path.insert(0, str(ROOT / "src"))

from piton import Context, Event, StartEvent, StopEvent, Workflow, step  # noqa: E402
from piton.stores import open_store  # noqa: E402


class Answer(Event):
    text: str


class Ask(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(Answer)
        return StopEvent(result=answer.text)


def trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def one(url: str, count: int) -> dict[str, float]:
    store = open_store(url)
    await store.open()
    w = Ask(store=store, timeout=None)
    warm = w.run(run_id="warm-up")  # imports, the store's connections, the compiled workflow
    while len(await store.list_runs(status="parked", limit=10)) < 1:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await warm.send_event(Answer(text="warm"))
    await warm
    gc.collect()
    trim()
    before = rss_kb()
    started = time.perf_counter()
    handlers = [w.run(run_id=f"p{n}") for n in range(count)]
    while len(await store.list_runs(status="parked", limit=count + 10)) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    parked_s = time.perf_counter() - started
    await asyncio.sleep(1.0)  # a second of waiting: what does idling cost?
    gc.collect()
    peak = rss_kb()
    trim()  # hand freed memory back to the OS: what the parked runs keep, not the peak
    after = rss_kb()
    started = time.perf_counter()
    await asyncio.gather(*(h.send_event(Answer(text=str(n))) for n, h in enumerate(handlers)))
    results = await asyncio.gather(*handlers)
    answer_s = time.perf_counter() - started
    assert results == [str(n) for n in range(count)]
    await store.close()
    return {
        "count": count,
        "park_s": parked_s,
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "kb_per_run": (after - before) / count,
        "peak_kb_per_run": (peak - before) / count,
        "answer_s": answer_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1000,2000,4000,10000")
    parser.add_argument("--store", default=None, help="a store URL (default: SQLite files)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.child:
        url, count = args.child.rsplit("|", 1)
        print(json.dumps(asyncio.run(one(url, int(count)))))
        return
    print_machine(machine_info())
    rows = []
    with scratch_dir("parked") as tmp:
        for count in [int(c) for c in args.counts.split(",")]:
            url = args.store or f"sqlite:///{tmp}/parked-{count}.db"
            out = subprocess.run(
                [sys.executable, __file__, "--child", f"{url}|{count}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{count} parked: parked in {row['park_s']:.1f} s, RSS {row['rss_before_mb']:.0f}"
                f" -> {row['rss_after_mb']:.0f} MB ({row['kb_per_run']:.1f} KB/run), answered"
                f" and finished in {row['answer_s']:.1f} s",
                flush=True,
            )
    print_columns(
        [
            ("parked runs", ">11"),
            ("park s", ">7"),
            ("RSS before MB", ">13"),
            ("RSS after MB", ">12"),
            ("KB/run kept", ">11"),
            ("KB/run peak", ">11"),
            ("answer+finish s", ">15"),
        ],
        [
            [
                str(r["count"]),
                f"{r['park_s']:.1f}",
                f"{r['rss_before_mb']:.0f}",
                f"{r['rss_after_mb']:.0f}",
                f"{r['kb_per_run']:.1f}",
                f"{r['peak_kb_per_run']:.1f}",
                f"{r['answer_s']:.1f}",
            ]
            for r in rows
        ],
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
