"""A context snapshot of an unfinished run, restored into a durable workflow, goes on as a
durable run: the work in flight is kept (steps that were running run again), on every
store, and the run is never stored without the state it goes on from."""

from __future__ import annotations

import pytest

from piton import Context, Event, StartEvent, StopEvent, Workflow, step
from piton.stores.base import Store, open_store


class Half(Event):
    n: int


class Convert(Workflow):
    """convert_all checkpoints after each document; fail_at fails it once, mid-way."""

    fail_at: int | None = None
    snapshots: list[dict[str, str]]

    @step
    async def convert_all(self, ev: StartEvent, ctx: Context) -> Half:
        done = await ctx.store.get("done", default=[])
        for doc in ev.docs:
            if doc in done:
                continue
            if doc == self.fail_at:
                self.fail_at = None
                raise RuntimeError(f"crashed converting {doc}")
            done.append(doc)
            await ctx.store.set("done", done)
            self.snapshots.append(ctx.to_dict())
        return Half(n=len(done))

    @step
    async def report(self, ev: Half, ctx: Context) -> StopEvent:
        runs = await ctx.store.get("report_runs", default=0)
        await ctx.store.set("report_runs", runs + 1)
        return StopEvent(result={"converted": ev.n, "done": await ctx.store.get("done")})


async def test_a_restored_unfinished_run_goes_on_durably(store_url: str | Store) -> None:
    first = Convert()
    first.snapshots, first.fail_at = [], 3
    with pytest.raises(RuntimeError, match="crashed converting 3"):
        await first.run(docs=[1, 2, 3, 4])
    saved = first.snapshots[-1]  # after document 2, convert_all still running

    w = Convert(store=store_url)
    w.snapshots = []
    restored = Context.from_dict(w, saved)
    handler = w.run(ctx=restored, run_id="restored-1")
    assert await handler == {"converted": 4, "done": [1, 2, 3, 4]}
    # the documents done before the snapshot were not converted again
    assert len(w.snapshots) == 2

    store = open_store(store_url)
    await store.open()
    try:
        record = await store.get("restored-1")
        assert record is not None and record.status == "completed"
        loaded = await store.load("restored-1")
        # the state it went on from is stored with the run: a snapshot at seq 0 or later
        assert loaded.snapshot is not None
        entries = await store.journal("restored-1")
        assert entries[0][0] == 1 and '"Begin"' in entries[0][1]
        # a finished run's id is an idempotency key: running it again gives its result
        again = Convert(store=store_url)
        again.snapshots = []
        assert await again.run(run_id="restored-1") == {"converted": 4, "done": [1, 2, 3, 4]}
        assert again.snapshots == []
    finally:
        await store.close()


async def test_the_restored_state_is_stored_with_the_run_creation(store_url: str | Store) -> None:
    """Creating a run with a snapshot is one write: the snapshot is there at seq 0."""
    store = open_store(store_url)
    await store.open()
    try:
        from piton.stores.base import RunRecord

        record = RunRecord(run_id="s0", workflow="w", status="running", owner="me", epoch=1)
        assert await store.create(record, ["e1", "e2"], ["s1"], snapshot="SNAP")
        loaded = await store.load("s0")
        assert (loaded.snapshot, loaded.snapshot_seq) == ("SNAP", 0)
        assert loaded.entries == [(1, "e1"), (2, "e2")]
        assert loaded.stream == ["s1"]
        again = RunRecord(run_id="s0", workflow="w", status="running")
        assert not await store.create(again, [], [], snapshot="OTHER")
        assert (await store.load("s0")).snapshot == "SNAP"
    finally:
        await store.close()


async def test_a_restored_run_id_that_exists_attaches_to_the_stored_run(
    store_url: str | Store,
) -> None:
    w = Convert(store=store_url)
    w.snapshots = []
    assert await w.run(run_id="taken", docs=[7]) == {"converted": 1, "done": [7]}
    first = Convert()
    first.snapshots, first.fail_at = [], 9
    with pytest.raises(RuntimeError):
        await first.run(docs=[8, 9])
    restored = Context.from_dict(w, first.snapshots[-1])
    # the store's run wins: its stored result, the restored context is not run
    assert await w.run(ctx=restored, run_id="taken") == {"converted": 1, "done": [7]}
