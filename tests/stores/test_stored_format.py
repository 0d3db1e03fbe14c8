"""The on-disk format is pinned: committed sample runs (tests/stores/data/*.json) still read.

Each sample holds what a store kept for one run (its record, every journal entry as
stored text, a snapshot, its stream and inbox), what ``get_run`` showed of it, and how it
ends. The test loads each sample into a real store through the public Store API, reads it
back with ``await workflow.get_run(run_id)``, resumes unfinished ones with
``await workflow.run(run_id=...)``, and checks the outcome. The workflows of the samples
are defined here: the samples name their types as ``test_stored_format.<Class>``.

The samples were made once by ``tests/stores/data/make_samples.py``. If a test here fails after a
change, the change altered the stored format: that needs a version bump and a migration
(a reader for the old version), then new samples; see docs/storage-format.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from piton import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    JsonSerializer,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)
from piton._core import inputs
from piton._journal_codec import JOURNAL_VERSION, decode_input, encode_input, on_disk_names
from piton._run_codec import VERSION as SNAPSHOT_VERSION
from piton.retry import retry_policy, stop_after_attempt, wait_fixed
from piton.serde import TypeResolver
from piton.stores import CommitRequest, MemoryStore, RunRecord, SqliteStore, Store
from piton.views import RunView

DATA = Path(__file__).parent / "data"
SAMPLES = sorted(DATA.glob("*.json"))
BUMP = "a format change needs a version bump and a migration; see docs/storage-format.md"


# --- the samples' workflows (their class names are stored in the samples) ------------------


class SampleItem(Event):
    n: int


class SampleAnswer(Event):
    topic: str
    text: str


class SampleNote(Event):
    text: str


class SampleAsk(InputRequiredEvent):
    question: str


class SampleVote(HumanResponseEvent):
    n: int


class SampleLinear(Workflow):
    """A completed linear run: state writes, a stream write, two steps."""

    @step
    async def first(self, ev: StartEvent, ctx: Context) -> SampleItem:
        await ctx.store.set("seen", [ev.n])
        return SampleItem(n=ev.n + 1)

    @step
    async def second(self, ev: SampleItem, ctx: Context) -> StopEvent:
        ctx.write_event_to_stream(SampleNote(text=f"item {ev.n}"))
        await ctx.store.set("total", ev.n * 10)
        return StopEvent(result={"n": ev.n, "label": "done"})


class SampleRetry(Workflow):
    """The first attempt fails; the journal records the decision to retry (retry_in)."""

    @step(retry_policy=retry_policy(wait=wait_fixed(0.01), stop=stop_after_attempt(3)))
    async def flaky(self, ev: StartEvent, ctx: Context) -> StopEvent:
        info = ctx.retry_info()
        if info.retry_number == 0:
            raise ValueError("first attempt fails")
        return StopEvent(result={"retries": info.retry_number, "last": str(info.last_exception)})


class SampleWait(Workflow):
    """Parked on wait_for_event, keeping an event its step sent that nothing took yet."""

    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        ctx.send_event(SampleNote(text="kept"))  # no step takes it: the run keeps it
        answer = await ctx.wait_for_event(
            SampleAnswer,
            waiter_event=SampleAsk(question="name?"),
            waiter_id="name",
            requirements={"topic": "name"},
            timeout=None,
        )
        note = await ctx.wait_for_event(SampleNote, waiter_id="note", timeout=None)
        return StopEvent(result=f"{answer.text} / {note.text}")


class SampleSleep(Workflow):
    """Parked in ctx.sleep: a deadline in the store (long past when the test runs)."""

    @step
    async def nap(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await ctx.store.set("naps", 1)
        await ctx.sleep(2.0, sleep_id="nap")
        return StopEvent(result="rested")


class SampleCollect(Workflow):
    """collect_events over three events sent by one step."""

    @step
    async def fan_out(self, ev: StartEvent, ctx: Context) -> SampleItem | None:
        for n in (1, 2, 3):
            ctx.send_event(SampleItem(n=n))
        return None

    @step
    async def gather(self, ev: SampleItem, ctx: Context) -> StopEvent | None:
        done = ctx.collect_events(ev, [SampleItem] * 3)
        return None if done is None else StopEvent(result=sorted(e.n for e in done))


class SampleSnapshot(Workflow):
    """Parked on wait_for_event, then resumed by a vote sent to another step: the resume wrote a
    snapshot (holding the waiter, a kept event and the running step) and the journal goes
    on after it. The answer waits in the inbox."""

    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        ctx.send_event(SampleNote(text="early"))  # no step takes it: the run keeps it
        answer = await ctx.wait_for_event(
            SampleAnswer, waiter_id="answer", requirements={"topic": "final"}, timeout=None
        )
        note = await ctx.wait_for_event(SampleNote, waiter_id="note", timeout=None)
        items = await ctx.store.get("items", default=[])
        return StopEvent(result={"answer": answer.text, "note": note.text, "items": items})

    @step
    async def tally(self, ev: SampleVote, ctx: Context) -> None:
        items = await ctx.store.get("items", default=[])
        await ctx.store.set("items", [*items, ev.n])


class SampleFailed(Workflow):
    """A step raises with no retry policy: a failed run with a stored error."""

    @step
    async def explode(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await ctx.store.set("tried", True)
        raise ValueError(f"cannot handle {ev.n}")


WORKFLOWS: dict[str, type[Workflow]] = {
    cls.__name__: cls
    for cls in (
        SampleLinear,
        SampleRetry,
        SampleWait,
        SampleSleep,
        SampleCollect,
        SampleSnapshot,
        SampleFailed,
    )
}
EVENTS: dict[str, type[Event]] = {
    cls.__name__: cls for cls in (SampleItem, SampleAnswer, SampleNote, SampleAsk, SampleVote)
}


# --- loading a sample into a store, and describing what a run shows -----------------------


async def load_sample(store: Store, sample: dict[str, Any]) -> str:
    """Put the sample's run into ``store`` as it was stored, through the Store API only:
    the record and the journal up to the snapshot, the snapshot, then the tail with the
    run's final row; then its inbox. Returns the run id."""
    rec, journal = sample["record"], sample["journal"]
    run_id = rec["run_id"]
    snapshot = sample["snapshot"]
    cut = snapshot["seq"] if snapshot is not None else len(journal)
    record = RunRecord(
        run_id=run_id,
        workflow=rec["workflow"],
        status="running",
        fingerprint=rec["fingerprint"],
        owner=store.owner,
        epoch=1,
        lease_until=time.time() + 60,
        start=rec["start"],
    )
    assert await store.create(record, journal[:cut], [])
    if snapshot is not None:
        request = CommitRequest(run_id=run_id, epoch=1, seq=cut, snapshot=snapshot["text"])
        await store.commit(request)
    await store.commit(
        CommitRequest(
            run_id=run_id,
            epoch=1,
            seq=cut,
            entries=journal[cut:],
            stream=sample["stream"],
            status=rec["status"],
            result=rec["result"],
            error=rec["error"],
            wake_at=rec["wake_at"],
            waiters=rec["waiters"],
            release=True,
        )
    )
    for step_name, text in sample["inbox"]:
        await store.deliver(run_id, text, step_name)
    return run_id


def describe(view: RunView) -> dict[str, Any]:
    """What a run shows, as JSON data (the samples' ``view``)."""
    error = view.error
    return {
        "status": view.status,
        "seq": view.seq,
        "state": view.state,
        "waiting": [
            {
                "step": w.step,
                "waiter_id": w.waiter_id,
                "event_type": w.event_type,
                "requirements": w.requirements,
                "deadline": None if w.deadline is None else round(w.deadline.timestamp(), 3),
            }
            for w in view.waiting
        ],
        "kept": [[type(e).__name__, e.model_dump(mode="json")] for e in view.kept],
        "running_steps": view.running_steps,
        "result": view.result,
        "error": None if error is None else {"type": type(error).__name__, "message": str(error)},
    }


def read(path: Path) -> dict[str, Any]:
    sample: dict[str, Any] = json.loads(path.read_text())
    return sample


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    await made.open()
    try:
        yield made
    finally:
        await made.close()


# --- the tests ------------------------------------------------------------------------------


def test_the_samples_are_there() -> None:
    names = {path.stem for path in SAMPLES}
    assert {"linear", "retry", "wait", "sleep", "collect", "snapshot", "failed"} <= names


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_samples_have_the_current_format_version(path: Path) -> None:
    sample = read(path)
    current = {"journal": JOURNAL_VERSION, "snapshot": SNAPSHOT_VERSION}
    assert sample["format"] == current, (
        f"{path.name} was written in format {sample['format']}, this piton writes {current}: {BUMP}"
    )
    assert sample["module"] == __name__, (
        f"{path.name} stores its types as {sample['module']}.<Class>, but this module is "
        f"{__name__}; keep the samples' workflows here"
    )


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_journal_entries_read_and_write_back_unchanged(path: Path) -> None:
    """Reading an entry and writing it again gives the stored text: today's writer writes
    the pinned format, not only a format the reader still accepts."""
    ser = JsonSerializer()
    types = TypeResolver({f"{__name__}.{name}": cls for name, cls in EVENTS.items()})
    for seq, text in enumerate(read(path)["journal"], start=1):
        again = encode_input(decode_input(text, ser, types), ser)
        assert again == text, f"{path.name} entry {seq} is now written differently: {BUMP}"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
async def test_sample_replays_and_ends_as_recorded(path: Path, store: Store) -> None:
    sample = read(path)
    workflow = WORKFLOWS[sample["workflow"]](store=store)
    run_id = await load_sample(store, sample)

    view = await workflow.get_run(run_id)
    assert describe(view) == sample["view"], f"{path.name} no longer reads the same: {BUMP}"

    for item in sample["send"]:  # what the parked run waits for, sent before it resumes
        event = EVENTS[item["type"]](**item["data"])
        await store.deliver(run_id, JsonSerializer().dumps(event), None)
    outcome = sample["outcome"]
    if "error" in outcome:
        with pytest.raises(Exception) as info:  # noqa: PT011 - the type is checked below
            await asyncio.wait_for(workflow.run(run_id=run_id), 20)
        assert type(info.value).__name__ == outcome["error"]["type"]
        assert str(info.value) == outcome["error"]["message"]
    else:
        result = await asyncio.wait_for(workflow.run(run_id=run_id), 20)
        assert result == outcome["result"], f"{path.name} ends differently: {BUMP}"
    final = await workflow.get_run(run_id)
    assert final.status == outcome["status"]


async def test_a_context_sample_restores_and_finishes() -> None:
    """``Context.to_dict()`` output (the snapshot codec's flat form) of a waiting run."""
    sample = read(DATA / "wait.json")
    workflow = SampleWait()
    ctx = Context.from_dict(workflow, sample["context"])
    assert ctx.to_dict() == sample["context"], f"to_dict() now writes another format: {BUMP}"
    assert [e.text for e in ctx.kept_events()] == ["kept"]
    handler = workflow.run(ctx=ctx)
    await handler.send_event(SampleAnswer(topic="name", text="Bo"))
    assert await asyncio.wait_for(handler, 20) == "Bo / kept"


def test_snapshot_sample_has_a_snapshot_and_a_tail() -> None:
    sample = read(DATA / "snapshot.json")
    assert sample["snapshot"] is not None
    assert 0 < sample["snapshot"]["seq"] < len(sample["journal"])
    snapshot = json.loads(sample["snapshot"]["text"])
    assert snapshot["waiters"] and snapshot["kept"] and snapshot["running"]
    assert sample["inbox"], "the snapshot sample also pins an inbox event"


def test_retry_sample_records_the_retry_decision() -> None:
    entries = [json.loads(text) for text in read(DATA / "retry.json")["journal"]]
    failed = [e for e in entries if e["k"] == "StepFailed"]
    assert len(failed) == 1 and failed[0]["retry_in"] == pytest.approx(0.01)


# The on-disk names of journal entries, written out: entry kind -> its keys, in the order
# they are written. Changing one is a format change.
ON_DISK = {
    "Begin": ["at", "start_event", "owner", "epoch", "trace"],
    "StepDone": ["at", "exec_id", "result", "sends", "step", "took"],
    "StepFailed": ["at", "exec_id", "error", "retry_in", "step", "took"],
    "StepWaits": [
        "at",
        "exec_id",
        "waiter_id",
        "event_type",
        "requirements",
        "waiter_event",
        "timeout",
        "sends",
        "step",
        "took",
    ],
    "Checkpoint": ["at", "exec_id", "sends"],
    "Send": ["at", "event", "target"],
    "SetState": ["at", "path", "value"],
    "ReplaceState": ["at", "value"],
    "Collect": ["at", "exec_id", "event", "expected", "buffer_id"],
    "StreamWrite": ["at", "event", "exec_id", "index"],
    "TimerFired": ["at", "timer_id"],
    "Cancel": ["at"],
    "Park": ["at", "trace"],
}


def test_every_input_field_has_an_on_disk_name() -> None:
    """Adding or renaming a field of a reducer input must add its on-disk name to the
    journal codec's table (piton._journal_codec._ENTRIES)."""
    table = on_disk_names()
    assert set(table) == {cls.__name__ for cls in inputs.INPUTS}
    for cls in inputs.INPUTS:
        python_fields = [f.name for f in dataclasses.fields(cls)]
        named = list(table[cls.__name__][1])
        assert named == python_fields, (
            f"{cls.__name__} has the fields {python_fields}, the journal codec names "
            f"{named}: give each field its on-disk key in piton._journal_codec._ENTRIES"
        )


def test_on_disk_names_are_pinned() -> None:
    table = {kind: list(keys.values()) for kind, keys in on_disk_names().values()}
    assert table == ON_DISK, BUMP
