"""A run's journal is its history: snapshots speed up loading, they do not delete entries.

So ``piton show`` and the dashboard page through every step a run took, and ``fork_run``
branches a run from any whole commit, on every store.
"""

from __future__ import annotations

import asyncio

import pytest

from piton import Context, Event, StartEvent, StopEvent, Workflow, step
from piton.fork import ForkRefused, fork_points, fork_run
from piton.stores.base import Store, open_store


class Tick(Event):
    n: int


class Answer(Event):
    text: str


class Note(Event):
    text: str


class Counter(Workflow):
    """Counts to ``ev.upto`` one step at a time, streaming a Note every third tick."""

    @step
    async def begin(self, ev: StartEvent, ctx: Context) -> Tick:
        await ctx.store.set("ask", bool(ev.get("ask", False)))
        return Tick(n=0)

    @step
    async def tick(self, ev: Tick, ctx: Context) -> Tick | StopEvent:
        if ev.n == 5 and await ctx.store.get("ask", default=False):
            await ctx.wait_for_event(Answer)  # parks; its resume writes a snapshot
        if ev.n % 3 == 0:
            ctx.write_event_to_stream(Note(text=f"at {ev.n}"))
        if ev.n >= 11:
            return StopEvent(result=ev.n)
        return Tick(n=ev.n + 1)


class Asker(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        ctx.write_event_to_stream(Note(text="asking"))
        answer = await ctx.wait_for_event(Answer)
        ctx.write_event_to_stream(Note(text=f"got {answer.text}"))
        return StopEvent(result=answer.text)


async def opened(store_url: str | Store) -> Store:
    store = open_store(store_url)
    await store.open()
    return store


async def all_entries(store: Store, run_id: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    while True:
        page = await store.journal(run_id, after=out[-1][0] if out else 0, limit=7)
        if not page:
            return out
        out.extend(page)


async def answered(w: Workflow, run_id: str, text: str, **start: object) -> object:
    """Run ``run_id`` until it parks on its wait, answer it, and return its result."""
    handler = w.run(run_id=run_id, **start)
    store = w.store
    assert store is not None
    for _ in range(1000):
        record = await store.get(run_id)
        if record is not None and record.status == "parked":
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the run never parked")
    await w.send_event(run_id, Answer(text=text))
    return await handler


async def test_snapshots_keep_every_journal_entry(store_url: str | Store) -> None:
    w = Counter(store=store_url, snapshot_every=4)
    assert await answered(w, "c1", "go", ask=True) == 11
    store = await opened(store_url)
    try:
        record = await store.get("c1")
        assert record is not None
        entries = await all_entries(store, "c1")
        assert [seq for seq, _ in entries] == list(range(1, record.seq + 1))
        loaded = await store.load("c1")
        assert loaded.snapshot is not None and loaded.snapshot_seq > 0
        # loading still reads the snapshot and the tail after it, not the whole history
        assert [seq for seq, _ in loaded.entries] == list(
            range(loaded.snapshot_seq + 1, record.seq + 1)
        )
        assert dict(loaded.entries).items() <= dict(entries).items()
    finally:
        await store.close()


async def test_fork_branches_a_run_from_its_wait(store_url: str | Store) -> None:
    w = Asker(store=store_url)
    assert await answered(w, "a1", "yes") == "yes"  # woken from parked: a snapshot
    store = await opened(store_url)
    try:
        entries = await all_entries(store, "a1")
        loaded = await store.load("a1")
        assert loaded.snapshot_seq > 0  # compacted, yet the history is all there
        kinds = [(seq, text) for seq, text in entries if '"StepWaits"' in text]
        assert kinds, entries
        at = kinds[0][0]
        assert at in fork_points(entries)
        new_id = await fork_run(w, "a1", at, "a2")
        assert new_id == "a2"
        fork = await store.get("a2")
        assert fork is not None and fork.status == "running" and fork.owner is None
        assert fork.seq == at
        assert [seq for seq, _ in await all_entries(store, "a2")] == list(range(1, at + 1))
        # the fork holds the stream its history wrote: the Note before the wait
        assert len((await store.load("a2")).stream) == 1
        await w.send_event("a2", Answer(text="no"))
        assert await w.run(run_id="a2") == "no"
        assert [e.text for e in await stream_notes(w, "a2")] == ["asking", "got no"]
        source = await store.get("a1")
        assert source is not None and source.status == "completed"
        assert await all_entries(store, "a1") == entries  # the source is only read
    finally:
        await store.close()


async def stream_notes(w: Workflow, run_id: str) -> list[Note]:
    handler = w.run(run_id=run_id)
    notes = [ev async for ev in handler.stream_events() if isinstance(ev, Note)]
    await handler
    return notes


async def test_fork_refuses_what_it_cannot_do(store_url: str | Store) -> None:
    w = Counter(store=store_url, snapshot_every=4)
    assert await w.run(run_id="c2") == 11
    store = await opened(store_url)
    try:
        entries = await all_entries(store, "c2")
        last = entries[-1][0]
        with pytest.raises(ForkRefused, match="already finished"):
            await fork_run(w, "c2", last, "c3")
        with pytest.raises(ForkRefused, match=f"entries 1..{last}"):
            await fork_run(w, "c2", last + 1, "c3")
        inner = [seq for seq, _ in entries if seq not in fork_points(entries)]
        if inner:
            with pytest.raises(ForkRefused, match="middle of a commit"):
                await fork_run(w, "c2", inner[0], "c3")
        assert await store.get("c3") is None
        # a fork from the middle of the count goes on to the same end
        middle = fork_points(entries)[len(fork_points(entries)) // 2]
        await fork_run(w, "c2", middle, "c4")
        assert await w.run(run_id="c4") == 11
    finally:
        await store.close()


def test_fork_points_are_the_entries_a_commit_ends_with() -> None:
    entries = [
        (1, '{"k": "Begin", "at": 1}'),
        (2, '{"k": "SetState", "at": 2}'),
        (3, '{"k": "StepDone", "at": 3}'),
        (4, "not json"),
        (5, '{"k": "StreamWrite", "at": 4}'),
        (6, '{"k": "StepWaits", "at": 5}'),
    ]
    assert fork_points(entries) == [1, 3, 6]
