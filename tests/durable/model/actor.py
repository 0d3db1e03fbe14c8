"""One process of a model-checker schedule: ``python actor.py '<plan json>'``.

The plan: ``url`` (the store), ``log`` (this process's JSON-lines file), ``actions``
(see ``schedule.py``), ``fate`` and ``at``, and ``deadline`` (seconds after which a
staying process gives up and exits). The process talks to the others only through the
store; the checker learns what it did only from its log, each line fsynced before the
process goes on:

- ``seen``: an event the process read from a run's stream (index, type, fields), logged
  before anything else is done with it;
- ``sending`` / ``sent``: around ``await handler.send_event(...)`` (or, ``via`` inbox,
  ``await w.send_event(run_id, ...)`` without attaching);
- ``queued``: ``await w.start(...)`` returned (the run is then followed with ``w.result``);
- ``result`` / ``error``: what ``await handler`` gave;
- ``exit`` / ``selfkill``: the process is about to end its event loop / SIGKILL itself
  (never while a send is in flight, so every send is either made or not started).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.files import append_json  # noqa: E402
from model.model_flow import Answer, Ask, ModelFlow  # noqa: E402
from piton import Worker, WorkflowHandler  # noqa: E402


class Actor:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.flow = ModelFlow(store=plan["url"])
        self.store = self.flow.store
        self.handlers: dict[str, WorkflowHandler] = {}
        self.asked: dict[str, asyncio.Event] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.tasks: list[asyncio.Task[None]] = []

    def log(self, kind: str, **fields: Any) -> None:
        append_json(
            self.plan["log"], {"kind": kind, "pid": os.getpid(), "t": time.time(), **fields}
        )

    # -- runs this process touches: one handler each, listened to and awaited ----------------

    def attach(self, run_id: str, start: dict[str, Any] | None = None) -> WorkflowHandler:
        handler = self.handlers.get(run_id)
        if handler is None:
            handler = self.flow.run(run_id=run_id, **(start or {}))
            self.handlers[run_id] = handler
            self.asked[run_id] = asyncio.Event()
            self.done[run_id] = asyncio.Event()
            self.spawn(self.listen(run_id, handler))
            self.spawn(self.await_result(run_id, handler))
        return handler

    async def listen(self, run_id: str, handler: WorkflowHandler) -> None:
        index = 0
        async for ev in handler.stream_events():
            data = ev.model_dump(mode="json")
            self.log("seen", run=run_id, index=index, type=type(ev).__name__, data=data)
            index += 1
            if isinstance(ev, Ask):
                self.asked[run_id].set()

    async def await_result(self, run_id: str, handler: WorkflowHandler) -> None:
        try:
            self.log("result", run=run_id, value=await handler)
        except Exception as exc:  # noqa: BLE001 - the checker judges it
            self.log("error", run=run_id, error=f"{type(exc).__name__}: {exc}")
        self.done[run_id].set()

    async def exists(self, run_id: str, timeout: float = 10.0) -> bool:
        assert self.store is not None
        await self.store.open()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.store.get(run_id) is not None:
                return True
            await asyncio.sleep(0.05)
        return False

    # -- actions ------------------------------------------------------------------------

    async def start(self, a: dict[str, Any]) -> None:
        self.attach(a["run"], {"n": a["n"], "k": a["k"], "tag": a["run"]})

    async def queue(self, a: dict[str, Any]) -> None:
        """``Workflow.start``: the run is queued for a worker; this process then follows it
        without running it (``w.result``)."""
        await self.flow.start(run_id=a["run"], n=a["n"], k=a["k"], tag=a["run"])
        self.log("queued", run=a["run"])
        self.done[a["run"]] = done = asyncio.Event()
        try:
            self.log("result", run=a["run"], value=await self.flow.result(a["run"]))
        except Exception as exc:  # noqa: BLE001 - the checker judges it
            self.log("error", run=a["run"], error=f"{type(exc).__name__}: {exc}")
        done.set()

    async def follow(self, a: dict[str, Any]) -> None:
        if await self.exists(a["run"]):
            self.attach(a["run"])

    async def send(self, a: dict[str, Any]) -> None:
        self.in_flight += 1
        self.idle.clear()
        try:
            if not await self.exists(a["run"]):
                return
            handler = self.attach(a["run"]) if a.get("via") != "inbox" else None
            if a["when"] == "late":  # after an Ask was seen (or a while, if none comes)
                asked = self.asked.get(a["run"])
                if asked is None:  # not listening to the run: just later
                    await asyncio.sleep(0.5)
                else:
                    try:
                        await asyncio.wait_for(asked.wait(), 2.0)
                    except TimeoutError:
                        pass
            self.log("sending", run=a["run"], send_id=a["send_id"], payload=a["payload"])
            if a.get("via") == "inbox":  # from outside the run: Workflow.send_event
                await self.flow.send_event(a["run"], Answer(payload=a["payload"]))
            else:
                assert handler is not None
                await handler.send_event(Answer(payload=a["payload"]))
            self.log("sent", run=a["run"], send_id=a["send_id"], payload=a["payload"])
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def worker(self, a: dict[str, Any]) -> None:
        assert self.store is not None
        async with Worker(self.store, workflows=[self.flow], poll_interval=0.2):
            await asyncio.sleep(3600)

    # -- the process ----------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    async def delayed(self, a: dict[str, Any]) -> None:
        await asyncio.sleep(a.get("at", 0.0))
        await {
            "start": self.start,
            "queue": self.queue,
            "attach": self.follow,
            "send": self.send,
            "worker": self.worker,
        }[a["do"]](a)

    async def main(self) -> None:
        for a in self.plan["actions"]:
            self.spawn(self.delayed(a))
        fate = self.plan["fate"]
        if fate == "stay":
            await self.stay()
            self.log("exit", reason="stay")
            # a process that does not end soon after this says where it hangs (in .err)
            faulthandler.dump_traceback_later(8.0, exit=False)
            asyncio.get_running_loop().call_later(7.5, _dump_tasks)
            return
        await asyncio.sleep(self.plan["at"])
        await self.idle.wait()  # never in the middle of a send
        if fate == "kill":
            self.log("selfkill")
            os.kill(os.getpid(), signal.SIGKILL)
        self.log("exit", reason="fate")

    async def stay(self) -> None:
        """Until every action ran and every run touched ended, or the deadline."""
        deadline = time.monotonic() + self.plan.get("deadline", 60.0)
        while time.monotonic() < deadline:
            actions_done = all(
                task.done()
                for task, a in zip(self.tasks, self.plan["actions"], strict=False)
                if a["do"] != "worker"  # a worker works until the process ends
            )
            if actions_done and all(e.is_set() for e in self.done.values()):
                return
            await asyncio.sleep(0.05)
        await self.idle.wait()
        self.log("deadline")


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=sys.stderr)


def main() -> None:
    plan = json.loads(sys.argv[1])
    os.environ["PITON_MODEL_EFFECTS"] = plan["effects"]
    asyncio.run(Actor(plan).main())
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()
