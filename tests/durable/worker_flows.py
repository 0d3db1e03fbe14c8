"""Workflows that ``piton worker`` subprocesses run in tests/durable/test_workers.py.

Every step appends ``key step pid`` to the file named by ``$PITON_SIDE_LOG`` (one
``write`` on an ``O_APPEND`` descriptor, so lines from several processes never mix),
just before it returns: a line appears twice for one step only when the process that
wrote the first one died before the step's commit.
"""

from __future__ import annotations

import asyncio
import os

from piton import Event, StartEvent, StopEvent, Workflow, step

DELAY = float(os.environ.get("PITON_STEP_DELAY", "0.02"))


def side_effect(key: str, name: str) -> None:
    path = os.environ.get("PITON_SIDE_LOG")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {name} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


class Job(StartEvent):
    key: str
    n: int


class Doubled(Event):
    key: str
    n: int


class Added(Event):
    key: str
    n: int


class Chain(Workflow):
    """n -> 2n -> 2n+1 -> (2n+1)*3, three steps, each a little slow."""

    @step
    async def double(self, ev: Job) -> Doubled:
        await asyncio.sleep(DELAY)
        side_effect(ev.key, "double")
        return Doubled(key=ev.key, n=ev.n * 2)

    @step
    async def add(self, ev: Doubled) -> Added:
        await asyncio.sleep(DELAY)
        side_effect(ev.key, "add")
        return Added(key=ev.key, n=ev.n + 1)

    @step
    async def triple(self, ev: Added) -> StopEvent:
        await asyncio.sleep(DELAY)
        side_effect(ev.key, "triple")
        return StopEvent(result=ev.n * 3)


def expected(n: int) -> int:
    return (2 * n + 1) * 3


class Other(Workflow):
    """A workflow the test's workers do not know."""

    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="other")
