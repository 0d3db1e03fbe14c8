"""Writes the sample runs in this folder, which pin piton's stored format.

Only run it when you bump the format version (``JOURNAL_VERSION`` in
``piton/_journal_codec.py`` or ``VERSION`` in ``piton/_run_codec.py``), and add a
migration: a reader for the old version, tested against the old samples (move them to
``tests/stores/data/v<old version>/`` first). Regenerating the samples to make a failing
``tests/stores/test_stored_format.py`` pass hides a format change that would break every stored
run. See docs/storage-format.md.

    python tests/stores/data/make_samples.py

It drives the workflows defined in ``tests/stores/test_stored_format.py`` through a memory store
that records every journal entry it is given, and writes one ``<name>.json`` per run:

- ``format``: the journal and snapshot versions it was written with;
- ``module``, ``workflow``: where the run's types live (their stored names say it);
- ``record``: the run's row (status, fingerprint, start event, result, error, wake-up);
- ``journal``: every journal entry, seq 1, 2, ..., as the store got it;
- ``snapshot``: ``{"seq", "text"}`` when the run has one (it replaces the entries up to seq);
- ``stream``, ``inbox``: stored stream events, and ``[step, text]`` inbox events;
- ``view``: what ``await workflow.get_run(run_id)`` showed (``describe`` in the test);
- ``send``: events to deliver before resuming; ``outcome``: how the run then ends;
- ``context`` (wait.json): ``Context.to_dict()`` of the same run waiting in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from piton import JsonSerializer, Workflow
from piton._journal_codec import JOURNAL_VERSION
from piton._run_codec import VERSION as SNAPSHOT_VERSION
from piton.stores import CommitRequest, MemoryStore, RunRecord
from piton.views import RunView

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
samples: Any = importlib.import_module("test_stored_format")  # the workflows, the describe()


class RecordingStore(MemoryStore):
    """A memory store that keeps every journal entry (a snapshot drops them from load())."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[str]] = {}

    async def create(
        self,
        record: RunRecord,
        entries: list[str],
        stream: list[str],
        *,
        snapshot: str | None = None,
    ) -> bool:
        made = await super().create(record, entries, stream, snapshot=snapshot)
        if made:
            self.history[record.run_id] = list(entries)
        return made

    async def commit(self, request: CommitRequest) -> None:
        await super().commit(request)
        self.history[request.run_id].extend(request.entries)


async def until(
    workflow: Workflow, run_id: str, ok: Callable[[RunView], bool], timeout: float = 10
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):  # not created yet
                if ok(await workflow.get_run(run_id)):
                    return
            await asyncio.sleep(0.01)


def parked_on(waiter_id: str) -> Callable[[RunView], bool]:
    return lambda view: (
        view.status == "parked" and [w.waiter_id for w in view.waiting] == [waiter_id]
    )


async def dump(store: RecordingStore, workflow: Workflow, run_id: str) -> dict[str, Any]:
    """The run as the store holds it now, and what get_run shows of it."""
    record = await store.get(run_id)
    assert record is not None
    loaded = await store.load(run_id)
    journal = list(store.history[run_id])  # the run goes on after the dump
    assert len(journal) == record.seq
    assert [text for _, text in loaded.entries] == journal[loaded.snapshot_seq :]
    return {
        "format": {"journal": JOURNAL_VERSION, "snapshot": SNAPSHOT_VERSION},
        "module": samples.__name__,
        "workflow": type(workflow).__name__,
        "record": {
            "run_id": record.run_id,
            "workflow": record.workflow,
            "status": record.status,
            "fingerprint": record.fingerprint,
            "start": record.start,
            "result": record.result,
            "error": record.error,
            "wake_at": record.wake_at,
            "waiters": record.waiters,
        },
        "journal": journal,
        "snapshot": None
        if loaded.snapshot is None
        else {"seq": loaded.snapshot_seq, "text": loaded.snapshot},
        "stream": loaded.stream,
        "inbox": [[step, text] for _, text, step in loaded.inbox],
        "view": samples.describe(await workflow.get_run(run_id)),
    }


def finished(result: Any, status: str = "completed") -> dict[str, Any]:
    return {"status": status, "result": result}


async def completed(name: str, cls: type[Workflow], expected: Any, **start: Any) -> dict[str, Any]:
    store = RecordingStore()
    workflow = cls(store=store)
    assert await workflow.run(run_id=name, **start) == expected
    return {**await dump(store, workflow, name), "send": [], "outcome": finished(expected)}


async def failed() -> dict[str, Any]:
    store = RecordingStore()
    workflow = samples.SampleFailed(store=store)
    try:
        await workflow.run(run_id="failed", n=7)
    except ValueError as exc:
        error = {"type": "ValueError", "message": str(exc)}
    sample = await dump(store, workflow, "failed")
    return {**sample, "send": [], "outcome": {"status": "failed", "error": error}}


async def parked(
    name: str,
    cls: type[Workflow],
    waiter_id: str,
    *,
    before: Callable[[Workflow, Any], Awaitable[None]] | None = None,
    send: Sequence[Any] = (),
    inbox: Sequence[Any] = (),
    expected: Any,
) -> dict[str, Any]:
    """A run parked on ``waiter_id`` (after ``before(handler)``), dumped; then finished here
    with ``send`` and ``inbox`` to check that the recorded outcome is right."""
    store = RecordingStore()
    workflow = cls(store=store)
    handler = workflow.run(run_id=name)
    if before is not None:
        await before(workflow, handler)
    await until(workflow, name, parked_on(waiter_id))
    sample = await dump(store, workflow, name)
    ser = JsonSerializer()
    sample["inbox"] = [[None, ser.dumps(event)] for event in inbox]  # as send_event writes it
    sample["send"] = [{"type": type(e).__name__, "data": e.model_dump(mode="json")} for e in send]
    sample["outcome"] = finished(expected)
    for event in [*inbox, *send]:
        await handler.send_event(event)
    assert await asyncio.wait_for(handler, 10) == expected
    return sample


async def context_of_waiting_run() -> dict[str, str]:
    """``Context.to_dict()`` of SampleWait waiting in memory (no store)."""
    workflow = samples.SampleWait()
    handler = workflow.run()
    async with asyncio.timeout(10):
        async for event in handler.stream_events():
            if isinstance(event, samples.SampleAsk):  # published once the step waits
                break
    data: dict[str, str] = handler.ctx.to_dict()
    await handler.cancel_run()
    with contextlib.suppress(BaseException):
        await handler
    return data


async def main() -> None:
    s = samples
    answer = s.SampleAnswer
    out: dict[str, dict[str, Any]] = {
        "linear": await completed("linear", s.SampleLinear, {"n": 2, "label": "done"}, n=1),
        "retry": await completed(
            "retry", s.SampleRetry, {"retries": 1, "last": "first attempt fails"}
        ),
        "collect": await completed("collect", s.SampleCollect, [1, 2, 3]),
        "failed": await failed(),
        "wait": await parked(
            "wait",
            s.SampleWait,
            "name",
            send=[answer(topic="name", text="Ada")],
            expected="Ada / kept",
        ),
        "sleep": await parked("sleep", s.SampleSleep, "nap", expected="rested"),
    }

    async def send_a_vote(workflow: Workflow, handler: Any) -> None:
        await until(workflow, "snapshot", parked_on("answer"))
        await handler.send_event(s.SampleVote(n=1))  # resumes the run: a new snapshot
        await until(workflow, "snapshot", lambda view: view.state == {"items": [1]})

    out["snapshot"] = await parked(
        "snapshot",
        s.SampleSnapshot,
        "answer",
        before=send_a_vote,
        inbox=[answer(topic="final", text="beta")],
        expected={"answer": "beta", "note": "early", "items": [1]},
    )
    out["wait"]["context"] = await context_of_waiting_run()
    for name, sample in out.items():
        (HERE / f"{name}.json").write_text(json.dumps(sample, indent=1) + "\n")
        print(f"wrote {name}.json: {len(sample['journal'])} entries")


if __name__ == "__main__":
    asyncio.run(main())
