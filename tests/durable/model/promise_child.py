"""One process of a tests/durable/test_promises.py situation: ``python promise_child.py '<json>'``.

The JSON names a ``mode``, the store ``url``, the ``flow`` (a name in ``flows.FLOWS``),
the ``run_id`` and options. The process reports on stdout, one JSON object a line:

- ``run``: start or attach (``w.run(run_id=...)``) and print ``{"result": ...}`` or
  ``{"error": ...}``; ``timeout`` bounds the wait (then ``{"timeout": ...}``);
  ``leave_after`` (a side-effect line) makes the process end its event loop once the
  step wrote it, without awaiting the run, then ``linger`` seconds before exiting;
- ``worker``: a ``piton.Worker`` finishes the run; then print the stored result;
- ``ask``: start the run, read the stream up to the first ``Ask``, print ``{"asked": ...}``
  and exit (``kill``: SIGKILL itself right after reading it; ``kill_when_parked``: once
  the store shows the run parked, while still listening);
- ``send``: attach, ``await handler.send_event(...)``, print ``{"sent": ...}``, exit
  ``linger`` seconds later (or, with ``result_within``, print the run's result; with
  ``kill_after_send``, SIGKILL itself the moment the send returned);
- ``listen-kill``: start the run and SIGKILL itself the moment the stream shows an event
  whose type is in ``targets`` (after printing ``{"saw": ...}``).

``host`` pretends the process runs on another machine: its runs' owner names that host,
so only a released or expired lease frees them (a dead local process is noticed at once).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import flows  # noqa: E402
from model.files import read_lines  # noqa: E402
from model.targets import open_with_lease  # noqa: E402
from piton import Event, Worker, Workflow  # noqa: E402


def say(**record: Any) -> None:
    print(json.dumps(record, default=repr), flush=True)


def workflow(opts: dict[str, Any]) -> Workflow:
    store = open_with_lease(opts["url"], opts.get("lease"))
    cls = flows.FLOWS[opts["flow"]]
    return cls(store=store, durability=opts.get("durability", "fast"))


async def parked(store: Any, run_id: str) -> None:
    while True:
        record = await store.get(run_id)
        if record is not None and record.status == "parked":
            return
        await asyncio.sleep(0.02)


def event(opts: dict[str, Any]) -> Event:
    kind = {"Answer": flows.Answer, "Note": flows.Note}[opts["event"]]
    return kind(text=opts["text"])


async def wait_for_line(path: str, line: str) -> None:
    while True:  # the step writes the line in another task of this loop
        if line in read_lines(path):
            return
        await asyncio.sleep(0.01)


async def run(opts: dict[str, Any]) -> None:
    handler = workflow(opts).run(run_id=opts["run_id"], **opts.get("start", {}))
    if opts.get("leave_after"):
        await wait_for_line(os.environ["PITON_MODEL_EFFECTS"], opts["leave_after"])
        say(leaving=opts["leave_after"])
        return  # the event loop ends while the run is mid-step
    try:
        say(result=await asyncio.wait_for(handler, opts.get("timeout", 60)))
    except TimeoutError:
        say(timeout=opts.get("timeout", 60))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        say(error=f"{type(exc).__name__}: {exc}")


async def worker(opts: dict[str, Any]) -> None:
    w = workflow(opts)
    store = w.store
    assert store is not None
    deadline = time.monotonic() + opts.get("timeout", 60)
    async with Worker(store, workflows=[w]):
        while time.monotonic() < deadline:
            record = await store.get(opts["run_id"])
            if record is not None and record.finished:
                break
            await asyncio.sleep(0.05)
        else:
            say(timeout=opts.get("timeout", 60), record=repr(await store.get(opts["run_id"])))
            return
    say(result=await asyncio.wait_for(w.run(run_id=opts["run_id"]), 10))


async def ask(opts: dict[str, Any]) -> None:
    w = workflow(opts)
    handler = w.run(run_id=opts["run_id"])
    async for ev in handler.stream_events():
        if isinstance(ev, flows.Ask):
            say(asked=ev.question)
            if opts.get("kill_when_parked"):  # still listening when the run parked
                await parked(w.store, opts["run_id"])
            if opts.get("kill") or opts.get("kill_when_parked"):
                os.kill(os.getpid(), signal.SIGKILL)
            return
    say(error="the stream ended without an Ask")


async def send(opts: dict[str, Any]) -> None:
    handler = workflow(opts).run(run_id=opts["run_id"])
    await asyncio.sleep(opts.get("send_after", 0.0))  # e.g. while the run is being resumed
    await handler.send_event(event(opts))
    say(sent=opts["text"])
    if opts.get("kill_after_send"):  # the send returned: the event must be stored
        os.kill(os.getpid(), signal.SIGKILL)
    if "result_within" in opts:
        try:
            say(result=await asyncio.wait_for(handler, opts["result_within"]))
        except TimeoutError:
            say(timeout=opts["result_within"])
        return
    await asyncio.sleep(opts.get("linger", 0.5))


async def listen_kill(opts: dict[str, Any]) -> None:
    handler = workflow(opts).run(run_id=opts["run_id"])
    async for ev in handler.stream_events():
        if type(ev).__name__ in opts["targets"]:
            say(saw=type(ev).__name__)
            os.kill(os.getpid(), signal.SIGKILL)
    say(error="the stream ended without a target event")


MODES = {"run": run, "worker": worker, "ask": ask, "send": send, "listen-kill": listen_kill}


def main() -> None:
    opts = json.loads(sys.argv[1])
    if opts.get("host"):
        socket.gethostname = lambda: opts["host"]  # type: ignore[assignment]
    asyncio.run(MODES[opts["mode"]](opts))
    if opts.get("linger_after_loop"):
        say(loop_ended=True)
        time.sleep(opts["linger_after_loop"])  # alive, its event loop gone


if __name__ == "__main__":
    main()
