"""The SQL of each Store operation for SqliteStore; each runs on the writer thread,
inside a transaction the writer opened."""

from __future__ import annotations

import random
import socket
import sqlite3
import time
from collections.abc import Generator
from dataclasses import astuple, replace
from typing import Any

from piton._core.status import FINAL_STATUSES, PARKED, QUEUED, RUNNING
from piton.errors import RunNotFound
from piton.stores._rows import COLUMNS, TEXT, BadColumn, LoadReader, RowReader, check_column
from piton.stores._sql import COLUMN_LIST, FINAL, STUCK, page_filter
from piton.stores.base import (
    CommitRequest,
    Loaded,
    RunRecord,
    check_fence,
    claimable,
    is_runnable,
    may_claim,
    too_many_events,
)


def _read(name: str) -> str:
    """A column as it is read: SQLite keeps any value in any column, so text comes as bytes
    (decoded by ``_rows``, which names a value that is not UTF-8) and a number column that
    holds text or a blob gives bytes too, which ``_rows`` refuses."""
    column = f'"{name}"'
    if name in TEXT:
        return f"CAST({column} AS BLOB)"
    return f"CASE typeof({column}) WHEN 'text' THEN CAST({column} AS BLOB) ELSE {column} END"


_READ_LIST = ", ".join(_read(name) for name in COLUMNS)
_SELECT_RUN = f"SELECT {_READ_LIST} FROM runs"
# the columns a commit checks and compares, read as _read() does
_COMMIT_COLUMNS = ("epoch", "owner", "seq", "status", "wake_at", "fingerprint", "waiters")
_SELECT_COMMIT = f"SELECT {', '.join(map(_read, _COMMIT_COLUMNS))} FROM runs WHERE run_id = ?"
# stuck(): the terms of the runs_stuck index's WHERE, word for word, so SQLite can use it
_STUCK = STUCK
# The runs a worker should take, kind by kind, each read through its own index (migration
# 003: the terms of a partial index's WHERE appear here word for word, so SQLite uses it):
# running runs with no owner, an expired lease or another owner on this host (whether that
# one is alive is asked of /proc, in Python), parked runs with an inbox event, parked runs
# whose deadline passed, queued runs. Earlier kinds are work already under way.
_KINDS = (
    f"status = '{RUNNING}' AND (owner IS NULL OR owner = '' OR lease_until < :now"
    " OR (substr(owner, 1, :n) = :host AND owner != :me))",
    f"status = '{PARKED}' AND inbox > 0 ORDER BY created_at",
    f"status = '{PARKED}' AND wake_at IS NOT NULL AND wake_at <= :now ORDER BY wake_at",
    f"status = '{QUEUED}' ORDER BY created_at",
)
_CHUNK = 500  # run ids per get_many query
_INSERT_RUN = (
    f"INSERT INTO runs ({COLUMN_LIST}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (run_id) DO NOTHING"
)


class SqliteOps:
    """Each method runs inside a transaction the writer opened, on the writer thread."""

    def __init__(self, path: str, url: str, owner: str) -> None:
        self.path, self.url, self.owner = path, url, owner
        self.host_prefix = socket.gethostname() + "/"
        self.rows = RowReader(f"SQLite store {path!r}")
        self.parts = LoadReader(repr(path))

    def _row(self, conn: sqlite3.Connection, run_id: str) -> RunRecord:
        record = self.get(conn, run_id)
        if record is None:
            raise RunNotFound(f"No run '{run_id}' in {self.url}.")
        return record

    def get(self, conn: sqlite3.Connection, run_id: str) -> RunRecord | None:
        row = conn.execute(f"{_SELECT_RUN} WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else self.rows.record(row, run_id)

    def get_many(self, conn: sqlite3.Connection, run_ids: list[str]) -> dict[str, RunRecord]:
        found: dict[str, RunRecord] = {}
        unique = list(dict.fromkeys(run_ids))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            sql = f"{_SELECT_RUN} WHERE run_id IN ({', '.join('?' * len(chunk))})"
            found.update((r.run_id, r) for r in self.rows.records(conn.execute(sql, chunk)))
        return found

    def create(
        self,
        conn: sqlite3.Connection,
        record: RunRecord,
        entries: list[str],
        stream: list[str],
        snapshot: str | None = None,
    ) -> bool:
        now = time.time()
        record = replace(record, seq=len(entries), inbox=0, created_at=now, updated_at=now)
        if conn.execute(_INSERT_RUN, astuple(record)).rowcount == 0:
            return False
        run_id = record.run_id
        conn.executemany(
            "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
            [(run_id, n, entry) for n, entry in enumerate(entries, start=1)],
        )
        conn.executemany(
            "INSERT INTO stream (run_id, seq, event) VALUES (?, ?, ?)",
            [(run_id, n, event) for n, event in enumerate(stream, start=1)],
        )
        if snapshot is not None:
            conn.execute(
                "INSERT INTO snapshots (run_id, seq, snapshot) VALUES (?, 0, ?)", (run_id, snapshot)
            )
        return True

    def claim(self, conn: sqlite3.Connection, run_id: str, owner: str, lease: float) -> int | None:
        record = self._row(conn, run_id)
        now = time.time()
        if not may_claim(record, owner, now):
            return None
        epoch = record.epoch + 1
        conn.execute(
            f"UPDATE runs SET owner = ?, epoch = ?, lease_until = ?, status = '{RUNNING}', "
            "updated_at = ? WHERE run_id = ?",
            (owner, epoch, now + lease, now, run_id),
        )
        return epoch

    def commit(self, conn: sqlite3.Connection, r: CommitRequest) -> None:
        run_id, new_seq = r.run_id, r.seq + len(r.entries)
        if r.plain:  # a step of a running run: fence, check and advance in one UPDATE
            advanced = conn.execute(
                "UPDATE runs SET seq = ?, updated_at = ? WHERE run_id = ? AND epoch = ? AND "
                f"seq = ? AND owner IS NOT NULL AND status = '{RUNNING}'",
                (new_seq, time.time(), run_id, r.epoch, r.seq),
            ).rowcount
            if advanced:
                self._append(conn, r)
                return
        current = self._check_commit(conn, r)  # a request that fails the checks writes nothing
        self._append(conn, r)
        changes: dict[str, object] = {"seq": new_seq, "updated_at": time.time()}
        if r.inbox_done:
            conn.executemany(
                "DELETE FROM inbox WHERE id = ? AND run_id = ?", [(i, run_id) for i in r.inbox_done]
            )
            changes["inbox"] = conn.execute(
                "SELECT COUNT(*) FROM inbox WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
        if r.snapshot is not None:
            conn.execute(
                "INSERT INTO snapshots (run_id, seq, snapshot) VALUES (?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, snapshot = excluded.snapshot",
                (run_id, new_seq, r.snapshot),
            )
        self._update_run(conn, r, current, changes)

    def _append(self, conn: sqlite3.Connection, r: CommitRequest) -> None:
        """The request's journal entries and stream events."""
        run_id = r.run_id
        if r.entries:
            conn.executemany(
                "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
                [(run_id, n, entry) for n, entry in enumerate(r.entries, start=r.seq + 1)],
            )
        if r.stream:
            last = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM stream WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            conn.executemany(
                "INSERT INTO stream (run_id, seq, event) VALUES (?, ?, ?)",
                [(run_id, n, event) for n, event in enumerate(r.stream, start=last + 1)],
            )

    def _check_commit(self, conn: sqlite3.Connection, r: CommitRequest) -> tuple[Any, ...]:
        row = conn.execute(_SELECT_COMMIT, (r.run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"No run '{r.run_id}' in {self.url}.")
        try:
            values = [check_column(name, v) for name, v in zip(_COMMIT_COLUMNS, row, strict=True)]
        except BadColumn as bad:
            raise self.rows.damaged(r.run_id, bad, "committed to") from None
        check_fence(r, *values[:3])
        return tuple(values[3:])

    def _update_run(
        self,
        conn: sqlite3.Connection,
        r: CommitRequest,
        current: tuple[Any, ...],
        changes: dict[str, object],
    ) -> None:
        """Write only the columns that change: fewer dirty pages, a cheaper commit."""
        status, wake_at, fingerprint, waiters = current
        if r.waiters != waiters and not r.plain:
            changes["waiters"] = r.waiters
        if r.status != status:
            changes["status"] = r.status
        if r.wake_at != wake_at:
            changes["wake_at"] = r.wake_at
        if r.fingerprint is not None and r.fingerprint != fingerprint:
            changes["fingerprint"] = r.fingerprint
        if r.result is not None:
            changes["result"] = r.result
        if r.error is not None:
            changes["error"] = r.error
        if r.status in FINAL_STATUSES:
            changes["finished_at"] = changes["updated_at"]
        if r.release or r.status in FINAL_STATUSES:
            changes["owner"] = changes["lease_until"] = None
        columns = ", ".join(f"{name} = ?" for name in changes)
        conn.execute(f"UPDATE runs SET {columns} WHERE run_id = ?", (*changes.values(), r.run_id))

    def renew(
        self, conn: sqlite3.Connection, runs: list[tuple[str, int]], owner: str, lease: float
    ) -> list[str]:
        until = time.time() + lease
        lost = []
        for run_id, epoch in runs:
            cursor = conn.execute(
                "UPDATE runs SET lease_until = ? WHERE run_id = ? AND epoch = ? AND owner = ?",
                (until, run_id, epoch, owner),
            )
            if cursor.rowcount == 0:
                lost.append(run_id)
        return lost

    def release(self, conn: sqlite3.Connection, runs: list[tuple[str, int]], owner: str) -> None:
        now = time.time()
        conn.executemany(
            "UPDATE runs SET owner = NULL, lease_until = NULL, updated_at = ? "
            f"WHERE run_id = ? AND epoch = ? AND owner = ? AND status NOT IN ({FINAL})",
            [(now, run_id, epoch, owner) for run_id, epoch in runs],
        )

    def deliver(
        self, conn: sqlite3.Connection, run_id: str, event: str, step: str | None, limit: int | None
    ) -> None:
        # the limit is checked by the statement that counts the event in: one write, atomic
        cursor = conn.execute(
            "UPDATE runs SET inbox = inbox + 1 WHERE run_id = ? AND (? IS NULL OR inbox < ?)",
            (run_id, limit, limit),
        )
        if cursor.rowcount == 0:
            row = conn.execute(f"SELECT {_read('inbox')} FROM runs WHERE run_id = ?", (run_id,))
            found = row.fetchone()
            if found is None:
                raise RunNotFound(f"No run '{run_id}' in {self.url}.")
            try:
                check_column("inbox", found[0])
            except BadColumn as bad:
                raise self.rows.damaged(run_id, bad, "given an event in") from None
            assert limit is not None
            raise too_many_events(run_id, limit)
        conn.execute(
            "INSERT INTO inbox (run_id, event, step, created_at) VALUES (?, ?, ?, ?)",
            (run_id, event, step, time.time()),
        )

    def load(self, conn: sqlite3.Connection, run_id: str) -> Loaded:
        record = self._row(conn, run_id)
        parts = self.parts
        snapshot: str | None = None
        snap_seq = 0
        row = conn.execute(
            "SELECT seq, CAST(snapshot AS BLOB) FROM snapshots WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is not None:
            snap_seq = row[0]
            snapshot = parts.text(row[1], run_id, f"the snapshot at seq {snap_seq}")
        journal = conn.execute(
            "SELECT seq, CAST(entry AS BLOB) FROM journal WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, snap_seq),
        )
        entries = parts.journal(record, snap_seq, journal)
        stream = [
            parts.text(blob, run_id, f"stream event {seq}")
            for seq, blob in conn.execute(
                "SELECT seq, CAST(event AS BLOB) FROM stream WHERE run_id = ? ORDER BY seq",
                (run_id,),
            )
        ]
        inbox = [
            (id_, parts.text(blob, run_id, f"inbox event {id_}"), step)
            for id_, blob, step in conn.execute(
                "SELECT id, CAST(event AS BLOB), step FROM inbox WHERE run_id = ? ORDER BY id",
                (run_id,),
            )
        ]
        return Loaded(record, snapshot, snap_seq, entries, stream, inbox)

    def _candidates(
        self, conn: sqlite3.Connection, workflows: list[str], now: float, me: str
    ) -> Generator[RunRecord, None, None]:
        """Runs that may be runnable, kind by kind (``_KINDS``), each workflow in turn; a
        superset of ``is_runnable``. Rows that cannot be read are left out and logged."""
        prefix = self.host_prefix
        args = {"now": now, "n": len(prefix), "host": prefix, "me": me}
        for kind in _KINDS:
            for workflow in workflows:
                sql = f"{_SELECT_RUN} WHERE workflow = :workflow AND {kind}"
                yield from self.rows.records(conn.execute(sql, {**args, "workflow": workflow}))

    def runnable(
        self, conn: sqlite3.Connection, workflows: list[str], now: float, limit: int
    ) -> list[RunRecord]:
        if not workflows or limit <= 0:
            return []
        found = [
            r for r in self._candidates(conn, workflows, now, self.owner) if is_runnable(r, now)
        ]
        found.sort(key=lambda record: record.created_at)
        return found[:limit]

    def claim_runnable(
        self,
        conn: sqlite3.Connection,
        workflows: list[str],
        now: float,
        owner: str,
        lease: float,
        limit: int,
    ) -> list[RunRecord]:
        """In the writer's IMMEDIATE transaction: no other connection claims meanwhile."""
        if not workflows or limit <= 0:
            return []
        wall = time.time()
        names = random.sample(workflows, len(workflows))  # no workflow always goes first
        chosen: dict[str, RunRecord] = {}
        candidates = self._candidates(conn, names, now, owner)
        for record in candidates:
            if record.run_id not in chosen and claimable(record, owner, now, wall):
                chosen[record.run_id] = record
                if len(chosen) >= limit:
                    break
        candidates.close()  # the reads end before the writes begin
        claimed = [
            replace(
                r,
                owner=owner,
                epoch=r.epoch + 1,
                lease_until=wall + lease,
                status=RUNNING,
                updated_at=wall,
            )
            for r in chosen.values()
        ]
        conn.executemany(
            f"UPDATE runs SET owner = ?, epoch = ?, lease_until = ?, status = '{RUNNING}', "
            "updated_at = ? WHERE run_id = ?",
            [(owner, r.epoch, r.lease_until, wall, r.run_id) for r in claimed],
        )
        return claimed

    def stuck(
        self, conn: sqlite3.Connection, workflows: list[str] | None, limit: int
    ) -> list[RunRecord]:
        if limit <= 0 or workflows == []:
            return []
        sql = f"SELECT {_READ_LIST} FROM runs INDEXED BY runs_stuck WHERE {_STUCK}"
        args: list[object] = []
        if workflows is not None:
            sql += f" AND workflow IN ({', '.join('?' * len(workflows))})"
            args += workflows
        rows = conn.execute(f"{sql} ORDER BY created_at LIMIT ?", (*args, limit))
        return list(self.rows.records(rows))

    def list_runs(
        self,
        conn: sqlite3.Connection,
        status: str | None,
        workflow: str | None,
        limit: int,
        after: tuple[float, str] | None,
        created_after: float | None,
        created_before: float | None,
    ) -> list[RunRecord]:
        """A page of runs, newest first, read through a migration 004 index."""
        clause, args = page_filter(status, workflow, after, created_after, created_before, "?")
        sql = f"{_SELECT_RUN}{clause} LIMIT ?"
        return list(self.rows.records(conn.execute(sql, (*args, limit))))

    def journal(
        self, conn: sqlite3.Connection, run_id: str, after: int, limit: int
    ) -> list[tuple[int, str]]:
        """Journal entries after seq ``after``, read by the journal's primary key."""
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise RunNotFound(f"No run '{run_id}' in {self.url}.")
        rows = conn.execute(
            "SELECT seq, CAST(entry AS BLOB) FROM journal WHERE run_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (run_id, after, limit),
        )
        parts = self.parts
        return [(seq, parts.text(blob, run_id, f"journal entry seq {seq}")) for seq, blob in rows]

    def prune(self, conn: sqlite3.Connection, older_than: float) -> int:
        doomed = (
            "SELECT run_id FROM runs INDEXED BY runs_by_finished "
            "WHERE finished_at IS NOT NULL AND finished_at < ? "
            f"AND status IN ({FINAL})"
        )
        cutoff = (time.time() - older_than,)
        for table in ("journal", "snapshots", "stream", "inbox"):
            conn.execute(f"DELETE FROM {table} WHERE run_id IN ({doomed})", cutoff)
        count: int = conn.execute(f"DELETE FROM runs WHERE run_id IN ({doomed})", cutoff).rowcount
        return count
