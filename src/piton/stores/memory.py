"""MemoryStore: the Store protocol in a dict. For tests and for ``memory://``.

Runs vanish with the process; everything else behaves as a durable store does.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import time
from dataclasses import replace
from datetime import timedelta

from piton._core.status import RUNNING
from piton.errors import RunNotFound
from piton.stores.base import (
    CommitRequest,
    Loaded,
    RunRecord,
    Store,
    age_in_seconds,
    check_fence,
    check_limit,
    check_page,
    check_window,
    claimable,
    in_page,
    is_runnable,
    is_stuck,
    may_claim,
    page_key,
    parse_cursor,
    too_many_events,
)


class MemoryStore(Store):
    url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self._runs: dict[str, RunRecord] = {}
        self._journal: dict[str, list[tuple[int, str]]] = {}
        self._snapshots: dict[str, tuple[int, str]] = {}
        self._stream: dict[str, list[str]] = {}
        self._inbox: dict[str, list[tuple[int, str, str | None]]] = {}
        self._inbox_id = 0

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """``memory://``: a new, empty store (the rest of the URL is not read)."""
        return cls()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _run(self, run_id: str) -> RunRecord:
        record = self._runs.get(run_id)
        if record is None:
            raise RunNotFound(f"No run '{run_id}' in {self.url}.")
        return record

    async def create(
        self,
        record: RunRecord,
        entries: list[str],
        stream: list[str],
        *,
        snapshot: str | None = None,
    ) -> bool:
        if record.run_id in self._runs:
            return False
        now = time.time()
        record = replace(record, seq=len(entries), created_at=now, updated_at=now)
        self._runs[record.run_id] = record
        self._journal[record.run_id] = list(enumerate(entries, start=1))
        self._stream[record.run_id] = list(stream)
        self._inbox[record.run_id] = []
        if snapshot is not None:
            self._snapshots[record.run_id] = (0, snapshot)
        return True

    async def get(self, run_id: str) -> RunRecord | None:
        record = self._runs.get(run_id)
        return None if record is None else copy.copy(record)

    async def get_many(self, run_ids: list[str]) -> dict[str, RunRecord]:
        return {i: copy.copy(self._runs[i]) for i in run_ids if i in self._runs}

    async def claim_runnable(
        self, workflows: list[str], now: float, owner: str, lease: float, limit: int
    ) -> list[RunRecord]:
        wanted, wall = set(workflows), time.time()
        found = [
            r
            for r in self._runs.values()
            if r.workflow in wanted and claimable(r, owner, now, wall)
        ]
        found.sort(key=lambda r: r.created_at)  # oldest first
        claimed = []
        for record in found[: max(limit, 0)]:
            record.owner, record.epoch = owner, record.epoch + 1
            record.lease_until, record.status, record.updated_at = wall + lease, RUNNING, wall
            claimed.append(copy.copy(record))
        return claimed

    async def claim(self, run_id: str, owner: str, lease: float) -> int | None:
        record = self._run(run_id)
        now = time.time()
        if not may_claim(record, owner, now):
            return None
        record.owner, record.epoch = owner, record.epoch + 1
        record.lease_until, record.status, record.updated_at = now + lease, RUNNING, now
        return record.epoch

    async def load(self, run_id: str) -> Loaded:
        record = self._run(run_id)
        snap_seq, snapshot = self._snapshots.get(run_id, (0, None))
        return Loaded(
            record=copy.copy(record),
            snapshot=snapshot,
            snapshot_seq=snap_seq,
            entries=self._journal[run_id][
                bisect.bisect_right(self._journal[run_id], snap_seq, key=lambda e: e[0]) :
            ],
            stream=list(self._stream[run_id]),
            inbox=list(self._inbox[run_id]),
        )

    async def commit(self, request: CommitRequest) -> None:
        record = self._run(request.run_id)
        check_fence(request, record.epoch, record.owner, record.seq)
        journal = self._journal[request.run_id]
        for n, entry in enumerate(request.entries, start=request.seq + 1):
            journal.append((n, entry))
        record.seq = request.seq + len(request.entries)
        self._stream[request.run_id].extend(request.stream)
        if request.inbox_done:
            done = set(request.inbox_done)
            self._inbox[request.run_id] = [
                m for m in self._inbox[request.run_id] if m[0] not in done
            ]
        record.inbox = len(self._inbox[request.run_id])
        if request.snapshot is not None:
            self._snapshots[request.run_id] = (record.seq, request.snapshot)
        if request.fingerprint is not None:
            record.fingerprint = request.fingerprint
        if not request.plain:
            record.waiters = request.waiters
        now = time.time()
        record.status, record.wake_at, record.updated_at = request.status, request.wake_at, now
        if request.result is not None:
            record.result = request.result
        if request.error is not None:
            record.error = request.error
        if record.finished:
            record.finished_at = now
        if request.release or record.finished:
            record.owner, record.lease_until = None, None

    async def renew(self, run_ids: list[tuple[str, int]], owner: str, lease: float) -> list[str]:
        lost = []
        now = time.time()
        for run_id, epoch in run_ids:
            record = self._runs.get(run_id)
            if record is None or record.epoch != epoch or record.owner != owner:
                lost.append(run_id)
            else:
                record.lease_until = now + lease
        return lost

    async def release(self, runs: list[tuple[str, int]], owner: str) -> None:
        now = time.time()
        for run_id, epoch in runs:
            record = self._runs.get(run_id)
            if record is None or record.finished:
                continue
            if record.epoch == epoch and record.owner == owner:
                record.owner, record.lease_until, record.updated_at = None, None, now

    async def deliver(
        self, run_id: str, event: str, step: str | None = None, *, limit: int | None = None
    ) -> None:
        check_limit(limit)
        record = self._run(run_id)
        if limit is not None and len(self._inbox[run_id]) >= limit:
            raise too_many_events(run_id, limit)
        self._inbox_id += 1
        self._inbox[run_id].append((self._inbox_id, event, step))
        record.inbox = len(self._inbox[run_id])

    async def runnable(self, workflows: list[str], now: float, limit: int = 100) -> list[RunRecord]:
        found = []
        for record in self._runs.values():
            if record.workflow not in workflows:
                continue
            if not is_runnable(record, now):
                continue
            found.append(copy.copy(record))
            if len(found) >= limit:
                break
        return found

    async def stuck(self, workflows: list[str] | None = None, limit: int = 100) -> list[RunRecord]:
        wanted = None if workflows is None else set(workflows)
        found = [
            copy.copy(r)
            for r in self._runs.values()
            if is_stuck(r) and (wanted is None or r.workflow in wanted)
        ]
        found.sort(key=lambda r: r.created_at)
        return found[: max(limit, 0)]

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 100,
        after: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> list[RunRecord]:
        created_after, created_before = check_window(created_after, created_before)
        start = None
        if after is not None:
            created_at, run_id = parse_cursor(after)
            start = (created_at, run_id.encode("utf-8", "surrogatepass"))
        if limit <= 0:
            return []
        found = (
            r
            for r in self._runs.values()
            if in_page(r, status, workflow, start, created_after, created_before)
        )
        return [copy.copy(r) for r in heapq.nlargest(limit, found, key=page_key)]

    async def journal(
        self, run_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        after, limit = check_page(after, limit)
        self._run(run_id)
        entries = self._journal[run_id]
        start = bisect.bisect_right(entries, after, key=lambda entry: entry[0])
        return entries[start : start + limit]

    async def prune(self, older_than: float | timedelta) -> int:
        cutoff = time.time() - age_in_seconds(older_than)
        doomed = [
            r.run_id
            for r in self._runs.values()
            if r.finished and r.finished_at is not None and r.finished_at < cutoff
        ]
        for run_id in doomed:
            for table in (self._runs, self._journal, self._snapshots, self._stream, self._inbox):
                table.pop(run_id, None)
        return len(doomed)


__all__ = ["MemoryStore"]
