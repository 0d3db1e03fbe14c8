"""The SQL of each Store operation for PostgresStore.

Each method takes a connection whose ``search_path`` is the store's schema. The writer
runs the write methods inside a transaction (or a savepoint of one) it opened; the read
methods run on a pooled connection in autocommit mode. A write that fails its checks
raises before it has written anything.
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import replace
from typing import Any, TypeAlias

import psycopg

from piton._core.status import FINAL_STATUSES, PARKED, QUEUED, RUNNING
from piton.errors import RunNotFound
from piton.stores._rows import COLUMNS, INTEGERS, TEXT, TIMES, LoadReader, RowReader
from piton.stores._sql import COLUMN_LIST, FINAL, STUCK, page_filter
from piton.stores.base import (
    CommitRequest,
    Loaded,
    RunRecord,
    check_fence,
    is_runnable,
    may_claim,
    owner_is_dead,
    too_many_events,
)

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]
# one run to create: its record, first entries, stream events, and snapshot at seq 0
Creation: TypeAlias = tuple[RunRecord, list[str], list[str], str | None]

_SELECT_RUN = f"SELECT {COLUMN_LIST} FROM runs"
# run ids in list_runs' order: by their bytes, as the runs_page indexes (migration 004) keep them
_RUN_ID_BYTES = 'run_id COLLATE "C"'
_JOURNAL_PAGE = (
    "SELECT seq, textsend(entry) FROM journal WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s"
)
_CHUNK = 1000  # run ids per get_many query
# the per-request arrays of _COMMIT_BATCH, in the order commit_batch() lists them
_BATCH_COLUMNS = (
    "ids", "epochs", "seqs", "new_seqs", "plain", "statuses", "wake_ats", "waiters",
    "results", "errors", "final", "release", "fingerprints",
)  # fmt: skip

# New runs, each with its first entries and stream events, in one statement; a run whose
# id exists is left alone. A run created queued is told to the workers that LISTEN (the
# notification is sent when the transaction commits).
_TYPES = {name: "text" for name in TEXT} | {name: "bigint" for name in INTEGERS}
_TYPES |= {name: "double precision" for name in TIMES}
_CREATE = f"""
WITH created AS (
    INSERT INTO runs ({COLUMN_LIST})
    SELECT {COLUMN_LIST} FROM unnest(
        {", ".join(f"%({name})b::{_TYPES[name]}[]" for name in COLUMNS)}
    ) AS r({COLUMN_LIST})
    ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id, status
), entries AS (
    INSERT INTO journal (run_id, seq, entry)
    SELECT e.run_id, e.seq, e.entry
    FROM unnest(%(entry_ids)b::text[], %(entry_seqs)b::bigint[], %(entries)b::text[])
         AS e(run_id, seq, entry)
    JOIN created USING (run_id)
), events AS (
    INSERT INTO stream (run_id, seq, event)
    SELECT e.run_id, e.seq, e.event
    FROM unnest(%(event_ids)b::text[], %(event_seqs)b::bigint[], %(events)b::text[])
         AS e(run_id, seq, event)
    JOIN created USING (run_id)
), snapshot AS (
    INSERT INTO snapshots (run_id, seq, snapshot)
    SELECT s.run_id, 0, s.snapshot
    FROM unnest(%(snapshot_ids)b::text[], %(snapshots)b::text[]) AS s(run_id, snapshot)
    JOIN created USING (run_id)
), told AS (
    SELECT pg_notify(%(channel)s, run_id) FROM created
    WHERE status = '{QUEUED}' AND %(channel)s <> ''
)
SELECT run_id, (SELECT count(*) FROM told) FROM created
"""

# The commits of a batch that take no inbox event (CommitRequest.batchable: plain step
# commits, and those that park or finish a run or write a snapshot), in one statement:
# runs at the expected epoch and seq, with an owner, advance (a plain request also needs
# the run running; it leaves status, wake_at and waiters as they are); their entries and
# events are appended, and their snapshot (if any) replaces the run's snapshot. Returns
# the runs that advanced; a request whose run did not is retried alone by commit(), which
# says why. Setting a column to the value it holds keeps a plain commit a HOT update.
_COMMIT_BATCH = f"""
WITH req AS (
    SELECT * FROM unnest(
        %(ids)b::text[], %(epochs)b::bigint[], %(seqs)b::bigint[], %(new_seqs)b::bigint[],
        %(plain)b::boolean[], %(statuses)b::text[], %(wake_ats)b::double precision[],
        %(waiters)b::integer[], %(results)b::text[], %(errors)b::text[],
        %(final)b::boolean[], %(release)b::boolean[], %(fingerprints)b::text[]
    ) AS r(run_id, epoch, seq, new_seq, plain, status, wake_at, waiters, result, error,
           final, release, fingerprint)
), won AS (
    UPDATE runs SET
        seq = req.new_seq,
        updated_at = %(now)s,
        fingerprint = COALESCE(req.fingerprint, runs.fingerprint),
        status = CASE WHEN req.plain THEN runs.status ELSE req.status END,
        wake_at = CASE WHEN req.plain THEN runs.wake_at ELSE req.wake_at END,
        waiters = CASE WHEN req.plain THEN runs.waiters ELSE req.waiters END,
        result = COALESCE(req.result, runs.result),
        error = COALESCE(req.error, runs.error),
        finished_at = CASE WHEN req.final THEN %(now)s ELSE runs.finished_at END,
        owner = CASE WHEN req.release THEN NULL ELSE runs.owner END,
        lease_until = CASE WHEN req.release THEN NULL ELSE runs.lease_until END
    FROM req
    WHERE runs.run_id = req.run_id AND runs.epoch = req.epoch AND runs.seq = req.seq
      AND runs.owner IS NOT NULL AND (runs.status = '{RUNNING}' OR NOT req.plain)
    RETURNING runs.run_id
), entries AS (
    INSERT INTO journal (run_id, seq, entry)
    SELECT e.run_id, e.seq, e.entry
    FROM unnest(%(entry_ids)b::text[], %(entry_seqs)b::bigint[], %(entries)b::text[])
         AS e(run_id, seq, entry)
    JOIN won USING (run_id)
), events AS (
    INSERT INTO stream (run_id, seq, event)
    SELECT e.run_id,
           COALESCE((SELECT max(s.seq) FROM stream s WHERE s.run_id = e.run_id), 0) + e.n,
           e.event
    FROM unnest(%(event_ids)b::text[], %(event_ns)b::bigint[], %(events)b::text[])
         AS e(run_id, n, event)
    JOIN won USING (run_id)
), snapshot AS (
    INSERT INTO snapshots (run_id, seq, snapshot)
    SELECT s.run_id, s.seq, s.snapshot
    FROM unnest(%(snapshot_ids)b::text[], %(snapshot_seqs)b::bigint[], %(snapshots)b::text[])
         AS s(run_id, seq, snapshot)
    JOIN won USING (run_id)
    ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, snapshot = excluded.snapshot
)
SELECT run_id FROM won
"""

# Any other commit, once _check_commit has locked the run's row and checked the request.
# A snapshot sums up the run up to this commit; the journal keeps every entry (history).
_COMMIT = """
WITH entries AS (
    INSERT INTO journal (run_id, seq, entry)
    SELECT %(run_id)s, %(seq)s + e.n, e.entry
    FROM unnest(%(entries)b::text[]) WITH ORDINALITY AS e(entry, n)
), events AS (
    INSERT INTO stream (run_id, seq, event)
    SELECT %(run_id)s,
           (SELECT COALESCE(max(seq), 0) FROM stream WHERE run_id = %(run_id)s) + e.n,
           e.event
    FROM unnest(%(events)b::text[]) WITH ORDINALITY AS e(event, n)
), taken AS (
    DELETE FROM inbox WHERE run_id = %(run_id)s AND id = ANY(%(inbox_done)b::bigint[])
    RETURNING id
), snapshot AS (
    INSERT INTO snapshots (run_id, seq, snapshot)
    SELECT %(run_id)s, %(new_seq)s, %(snapshot)s::text WHERE %(snapshot)s::text IS NOT NULL
    ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, snapshot = excluded.snapshot
)
UPDATE runs SET
    seq = %(new_seq)s,
    updated_at = %(now)s,
    status = %(status)s,
    wake_at = %(wake_at)s,
    fingerprint = COALESCE(%(fingerprint)s, fingerprint),
    result = COALESCE(%(result)s, result),
    error = COALESCE(%(error)s, error),
    waiters = COALESCE(%(waiters)s::integer, waiters),
    inbox = (SELECT count(*) FROM inbox WHERE run_id = %(run_id)s) - (SELECT count(*) FROM taken),
    finished_at = CASE WHEN %(final)s THEN %(now)s ELSE finished_at END,
    owner = CASE WHEN %(release)s THEN NULL ELSE owner END,
    lease_until = CASE WHEN %(release)s THEN NULL ELSE lease_until END
WHERE run_id = %(run_id)s
"""

_RENEW = """
UPDATE runs SET lease_until = %s
FROM unnest(%s::text[], %s::bigint[]) AS r(run_id, epoch)
WHERE runs.run_id = r.run_id AND runs.epoch = r.epoch AND runs.owner = %s
RETURNING runs.run_id
"""

# Leases handed back; the workers that LISTEN are told once, when the transaction commits,
# that runs are free.
_RELEASE = f"""
WITH released AS (
    UPDATE runs SET owner = NULL, lease_until = NULL, updated_at = %(now)s
    FROM unnest(%(ids)s::text[], %(epochs)s::bigint[]) AS r(run_id, epoch)
    WHERE runs.run_id = r.run_id AND runs.epoch = r.epoch AND runs.owner = %(owner)s
      AND runs.status NOT IN ({FINAL})
    RETURNING runs.run_id
)
SELECT pg_notify(%(channel)s, min(run_id)) FROM released
HAVING count(*) > 0 AND %(channel)s <> ''
"""

# The run row is updated first: it is locked before the inbox row exists, so a commit
# that holds the run's lock sees every delivered event or none being delivered. The limit
# is checked on that locked row (re-checked on its newest version if another transaction
# changed it meanwhile): the check and the insert are one atomic step.
_DELIVER = """
WITH target AS (
    UPDATE runs SET inbox = inbox + 1
    WHERE run_id = %(run_id)s AND (%(limit)s::integer IS NULL OR inbox < %(limit)s::integer)
    RETURNING run_id
)
INSERT INTO inbox (run_id, event, step, created_at)
SELECT run_id, %(event)s, %(step)s, %(now)s FROM target
RETURNING id
"""

# stuck(): base.is_stuck() in SQL, oldest first.
_STUCK = f"""
{_SELECT_RUN}
WHERE {STUCK}
"""

# Everything load() returns besides the run's row, as raw bytes: a row that is not
# valid UTF-8 (possible in a SQL_ASCII database) names itself instead of failing the query.
_LOAD = """
SELECT 0 AS part, seq AS n, textsend(snapshot) AS body, NULL::text AS step
FROM snapshots WHERE run_id = %(run_id)s
UNION ALL
SELECT 1, seq, textsend(entry), NULL FROM journal
WHERE run_id = %(run_id)s
  AND seq > COALESCE((SELECT seq FROM snapshots WHERE run_id = %(run_id)s), 0)
UNION ALL
SELECT 2, seq, textsend(event), NULL FROM stream WHERE run_id = %(run_id)s
UNION ALL
SELECT 3, id, textsend(event), step FROM inbox WHERE run_id = %(run_id)s
ORDER BY part, n
"""

# Same-host owners holding a lease unexpired at %(now)s: whether they are alive is asked of
# /proc. Read through runs_active: there are only as many running runs as workers run.
_LOCAL_OWNERS = f"""
SELECT DISTINCT owner FROM runs
WHERE workflow = ANY(%(workflows)s::text[]) AND status = '{RUNNING}'
  AND (starts_with(owner, %(host)s) OR owner = '') AND owner <> %(me)s
  AND (lease_until IS NULL OR lease_until >= %(now)s)
"""

# The runs a worker should take (base.is_runnable() in SQL, given the same-host owners
# found dead), kind by kind, each kind read through its own index, so that 100,000 parked
# runs waiting for an event cost nothing (migration 003): running runs with no owner, an
# expired lease or a dead owner (runs_active: only as many as workers run); parked runs
# with an inbox event (runs_mail); parked runs whose deadline passed (runs_wake); queued
# runs, oldest first (runs_queued). Each kind of each workflow is read in index order up
# to the limit. ``{may}`` is replaced by the claim's terms (base.may_claim()), ``{lock}``
# by its row locks.
_KINDS = (
    f"""SELECT run_id FROM runs
    WHERE workflow = ANY(%(workflows)s::text[]) AND status = '{RUNNING}'
      AND (owner IS NULL OR lease_until < %(now)s OR owner = ANY(%(dead)s::text[])){{may}}
    LIMIT %(limit)s{{lock}}""",
    f"""SELECT c.run_id FROM unnest(%(workflows)s::text[]) AS w(name), LATERAL (
        SELECT run_id FROM runs WHERE workflow = w.name AND status = '{PARKED}' AND inbox > 0{{may}}
        ORDER BY created_at LIMIT %(limit)s{{lock}}) AS c""",
    f"""SELECT c.run_id FROM unnest(%(workflows)s::text[]) AS w(name), LATERAL (
        SELECT run_id FROM runs
        WHERE workflow = w.name AND status = '{PARKED}' AND wake_at <= %(now)s
          AND inbox = 0{{may}}
        ORDER BY wake_at LIMIT %(limit)s{{lock}}) AS c""",
    f"""SELECT c.run_id FROM unnest(%(workflows)s::text[]) AS w(name), LATERAL (
        SELECT run_id FROM runs WHERE workflow = w.name AND status = '{QUEUED}'{{may}}
        ORDER BY created_at LIMIT %(limit)s{{lock}}) AS c""",
)

_RUNNABLE = f"""
{_SELECT_RUN}
WHERE run_id IN ({" UNION ALL ".join(f"({kind})".format(may="", lock="") for kind in _KINDS)})
ORDER BY created_at
LIMIT %(limit)s
"""

# claim_runnable(): the first ``limit`` runs of the kinds above that the claimer may take
# (base.may_claim()), each row locked as it is read, a row locked by another claimer
# skipped. The kinds are read lazily, in order, until ``limit`` runs are found: a later
# kind is not read at all when the earlier ones have enough. One statement: two claimers
# never take one run, and a run taken gets the next epoch.
_MAY_CLAIM = """
      AND (owner IS NULL OR owner = %(owner)s OR lease_until < %(wall)s
           OR owner = ANY(%(dead)s::text[]))"""
_CLAIM_RUNNABLE = (
    "WITH "
    + ", ".join(
        f"k{n} AS ({kind})".format(may=_MAY_CLAIM, lock=" FOR UPDATE SKIP LOCKED")
        for n, kind in enumerate(_KINDS)
    )
    + f""", picked AS (
    {" UNION ALL ".join(f"SELECT run_id FROM k{n}" for n in range(len(_KINDS)))}
    LIMIT %(limit)s
)
UPDATE runs SET owner = %(owner)s, epoch = runs.epoch + 1, lease_until = %(until)s,
    status = '{RUNNING}', updated_at = %(wall)s
FROM picked WHERE runs.run_id = picked.run_id
RETURNING {", ".join(f"runs.{name}" for name in COLUMN_LIST.split(", "))}
"""
)

# Finished runs past the cutoff, every row of them, in one statement. A run another
# transaction is changing right now is left for the next prune.
_PRUNE = f"""
WITH doomed AS (
    SELECT run_id FROM runs
    WHERE finished_at IS NOT NULL AND finished_at < %s AND status IN ({FINAL})
    FOR UPDATE SKIP LOCKED
), journal_rows AS (
    DELETE FROM journal WHERE run_id IN (SELECT run_id FROM doomed)
), snapshot_rows AS (
    DELETE FROM snapshots WHERE run_id IN (SELECT run_id FROM doomed)
), stream_rows AS (
    DELETE FROM stream WHERE run_id IN (SELECT run_id FROM doomed)
), inbox_rows AS (
    DELETE FROM inbox WHERE run_id IN (SELECT run_id FROM doomed)
), run_rows AS (
    DELETE FROM runs WHERE run_id IN (SELECT run_id FROM doomed) RETURNING 1
)
SELECT count(*) FROM run_rows
"""


class PostgresOps:
    """The Store operations as SQL; ``where`` names the store in error messages."""

    def __init__(self, url: str, where: str, owner: str, channel: str = "") -> None:
        self.url, self.where, self.owner = url, where, owner
        self.channel = channel  # NOTIFY channel of the schema: work for a waiting worker
        self.host_prefix = socket.gethostname() + "/"
        self.rows = RowReader(where)
        self.parts = LoadReader(where)

    def _missing(self, run_id: str) -> RunNotFound:
        return RunNotFound(f"No run '{run_id}' in {self.url}.")

    # -- writes: the writer runs them in its transaction ----------------------------------

    async def create(
        self, conn: Conn, runs: list[Creation]
    ) -> list[bool]:
        """Create the runs in one statement; for each, whether it was created (False: a run
        with its id exists, or it came earlier in ``runs``)."""
        now = time.time()
        params: dict[str, Any] = {name: [] for name in COLUMNS}
        for key in (
            *("entry_ids", "entry_seqs", "entries", "event_ids", "event_seqs", "events"),
            *("snapshot_ids", "snapshots"),
        ):
            params[key] = []
        first: dict[str, int] = {}
        for n, (record, entries, stream, snapshot) in enumerate(runs):
            if first.setdefault(record.run_id, n) != n:
                continue
            record = replace(record, seq=len(entries), inbox=0, created_at=now, updated_at=now)
            for name in COLUMNS:
                params[name].append(getattr(record, name))
            for seq, entry in enumerate(entries, start=1):
                params["entry_ids"].append(record.run_id)
                params["entry_seqs"].append(seq)
                params["entries"].append(entry)
            for seq, event in enumerate(stream, start=1):
                params["event_ids"].append(record.run_id)
                params["event_seqs"].append(seq)
                params["events"].append(event)
            if snapshot is not None:
                params["snapshot_ids"].append(record.run_id)
                params["snapshots"].append(snapshot)
        params["channel"] = self.channel
        cursor = await conn.execute(_CREATE, params)
        created = {row[0] for row in await cursor.fetchall()}
        return [
            record.run_id in created and first[record.run_id] == n
            for n, (record, *_) in enumerate(runs)
        ]

    async def claim(self, conn: Conn, run_id: str, owner: str, lease: float) -> int | None:
        # SKIP LOCKED: a row locked right now is being committed or claimed by a process
        # at work on the run; the claim gives way at once instead of queueing behind it
        cursor = await conn.execute(
            f"{_SELECT_RUN} WHERE run_id = %s FOR UPDATE SKIP LOCKED", [run_id]
        )
        row = await cursor.fetchone()
        if row is None:
            exists = await (
                await conn.execute("SELECT 1 FROM runs WHERE run_id = %s", [run_id])
            ).fetchone()
            if exists is None:
                raise self._missing(run_id)
            return None
        record = self.rows.record(row, run_id)
        now = time.time()
        if not may_claim(record, owner, now):
            return None
        epoch = record.epoch + 1
        await conn.execute(
            f"UPDATE runs SET owner = %s, epoch = %s, lease_until = %s, status = '{RUNNING}', "
            "updated_at = %s WHERE run_id = %s",
            [owner, epoch, now + lease, now, run_id],
        )
        return epoch

    async def commit_batch(self, conn: Conn, requests: list[CommitRequest]) -> set[str]:
        """Apply batchable requests (``CommitRequest.batchable``, one per run) in one
        statement; return the ids of the runs that advanced."""
        appended = ("entry_ids", "entry_seqs", "entries", "event_ids", "event_ns", "events")
        snapshots = ("snapshot_ids", "snapshot_seqs", "snapshots")
        params: dict[str, Any] = {key: [] for key in (*_BATCH_COLUMNS, *appended, *snapshots)}
        params["now"] = time.time()
        for r in requests:
            final, new_seq = r.status in FINAL_STATUSES, r.seq + len(r.entries)
            row: tuple[object, ...] = (
                r.run_id, r.epoch, r.seq, new_seq, r.plain, r.status, r.wake_at, r.waiters,
                r.result, r.error, final, r.release or final, r.fingerprint,
            )  # fmt: skip
            for key, value in zip(_BATCH_COLUMNS, row, strict=True):
                params[key].append(value)
            if r.snapshot is not None:  # it sums up the history; the entries stay
                params["snapshot_ids"].append(r.run_id)
                params["snapshot_seqs"].append(new_seq)
                params["snapshots"].append(r.snapshot)
            for seq, entry in enumerate(r.entries, start=r.seq + 1):
                params["entry_ids"].append(r.run_id)
                params["entry_seqs"].append(seq)
                params["entries"].append(entry)
            for n, event in enumerate(r.stream, start=1):
                params["event_ids"].append(r.run_id)
                params["event_ns"].append(n)
                params["events"].append(event)
        cursor = await conn.execute(_COMMIT_BATCH, params)
        return {row[0] for row in await cursor.fetchall()}

    async def commit(self, conn: Conn, r: CommitRequest) -> None:
        await self._check_commit(conn, r)
        new_seq = r.seq + len(r.entries)
        await conn.execute(
            _COMMIT,
            {
                "run_id": r.run_id,
                "seq": r.seq,
                "new_seq": new_seq,
                "entries": r.entries,
                "events": r.stream,
                "inbox_done": r.inbox_done,
                "snapshot": r.snapshot,
                "now": time.time(),
                "status": r.status,
                "wake_at": r.wake_at,
                "fingerprint": r.fingerprint,
                "waiters": None if r.plain else r.waiters,
                "result": r.result,
                "error": r.error,
                "final": r.status in FINAL_STATUSES,
                "release": r.release or r.status in FINAL_STATUSES,
            },
        )

    async def _check_commit(self, conn: Conn, r: CommitRequest) -> None:
        """Lock the run's row and check the request's epoch and seq against it."""
        cursor = await conn.execute(
            "SELECT epoch, owner, seq FROM runs WHERE run_id = %s FOR UPDATE", [r.run_id]
        )
        row = await cursor.fetchone()
        if row is None:
            raise self._missing(r.run_id)
        check_fence(r, *row)

    async def renew(
        self, conn: Conn, runs: list[tuple[str, int]], owner: str, lease: float
    ) -> list[str]:
        cursor = await conn.execute(
            _RENEW,
            [time.time() + lease, [run_id for run_id, _ in runs], [e for _, e in runs], owner],
        )
        renewed = {row[0] for row in await cursor.fetchall()}
        return [run_id for run_id, _ in runs if run_id not in renewed]

    async def release(self, conn: Conn, runs: list[tuple[str, int]], owner: str) -> None:
        ids, epochs = [run_id for run_id, _ in runs], [epoch for _, epoch in runs]
        args = {"now": time.time(), "ids": ids, "epochs": epochs, "owner": owner}
        await conn.execute(_RELEASE, {**args, "channel": self.channel})

    async def deliver(
        self, conn: Conn, run_id: str, event: str, step: str | None, limit: int | None
    ) -> None:
        args = {"run_id": run_id, "event": event, "step": step, "now": time.time(), "limit": limit}
        cursor = await conn.execute(_DELIVER, args)
        if await cursor.fetchone() is None:
            exists = await (
                await conn.execute("SELECT 1 FROM runs WHERE run_id = %s", [run_id])
            ).fetchone()
            if exists is None or limit is None:
                raise self._missing(run_id)
            raise too_many_events(run_id, limit)
        if self.channel:  # sent when the transaction commits, to every LISTENing worker
            await conn.execute("SELECT pg_notify(%s, %s)", [self.channel, run_id])

    # -- reads: a pooled connection in autocommit mode --------------------------------------

    async def get(self, conn: Conn, run_id: str) -> RunRecord | None:
        cursor = await conn.execute(f"{_SELECT_RUN} WHERE run_id = %s", [run_id])
        row = await cursor.fetchone()
        return None if row is None else self.rows.record(row, run_id)

    async def get_many(self, conn: Conn, run_ids: list[str]) -> dict[str, RunRecord]:
        found: dict[str, RunRecord] = {}
        for start in range(0, len(run_ids), _CHUNK):
            chunk = run_ids[start : start + _CHUNK]
            cursor = await conn.execute(f"{_SELECT_RUN} WHERE run_id = ANY(%s::text[])", [chunk])
            found.update((r.run_id, r) for r in self.rows.records(await cursor.fetchall()))
        return found

    async def load(self, conn: Conn, run_id: str) -> Loaded:
        # one snapshot of the database for the row and the rest: a commit that compacts the
        # journal meanwhile cannot make the journal look cut short
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            record = await self.get(conn, run_id)
            if record is None:
                raise self._missing(run_id)
            cursor = conn.cursor(binary=True)
            await cursor.execute(_LOAD, {"run_id": run_id})
            rows = await cursor.fetchall()
        finally:
            if conn.info.transaction_status in (
                psycopg.pq.TransactionStatus.INTRANS,
                psycopg.pq.TransactionStatus.INERROR,
            ):
                await conn.execute("ROLLBACK")
        return self._loaded(record, rows)

    def _loaded(self, record: RunRecord, rows: list[tuple[Any, ...]]) -> Loaded:
        """``_LOAD``'s rows (part, n, body, step), checked part by part, in that order."""
        run_id, parts = record.run_id, self.parts
        snapshots, journal, events, messages = (
            [row[1:] for row in rows if row[0] == part] for part in range(4)
        )
        snapshot: str | None = None
        snap_seq = 0
        for n, body, _ in snapshots:
            snap_seq, snapshot = n, parts.text(body, run_id, f"the snapshot at seq {n}")
        entries = parts.journal(record, snap_seq, ((n, body) for n, body, _ in journal))
        stream = [parts.text(body, run_id, f"stream event {n}") for n, body, _ in events]
        inbox = [
            (n, parts.text(body, run_id, f"inbox event {n}"), step) for n, body, step in messages
        ]
        return Loaded(record, snapshot, snap_seq, entries, stream, inbox)

    async def _dead_owners(
        self, conn: Conn, workflows: list[str], now: float, me: str
    ) -> list[str]:
        """The owners on this host, besides ``me``, of running runs of ``workflows`` whose
        lease is unexpired at ``now``, that are dead processes."""
        args = {"workflows": workflows, "now": now, "host": self.host_prefix, "me": me}
        cursor = await conn.execute(_LOCAL_OWNERS, args)
        return [owner for (owner,) in await cursor.fetchall() if owner_is_dead(owner)]

    async def runnable(
        self, conn: Conn, workflows: list[str], now: float, limit: int
    ) -> list[RunRecord]:
        if not workflows or limit <= 0:
            return []
        dead = await self._dead_owners(conn, workflows, now, self.owner)
        args = {"workflows": workflows, "now": now, "dead": dead, "limit": limit}
        cursor = await conn.execute(_RUNNABLE, args)
        rows = await cursor.fetchall()
        return list(self.rows.records(rows, lambda record: is_runnable(record, now)))

    async def claim_runnable(
        self, conn: Conn, workflows: list[str], now: float, owner: str, lease: float, limit: int
    ) -> list[RunRecord]:
        wall = time.time()
        # owners whose lease is unexpired by run time or by wall time: either may need them
        dead = await self._dead_owners(conn, workflows, min(now, wall), owner)
        args = {
            "workflows": random.sample(workflows, len(workflows)),  # none always goes first
            "now": now,
            "wall": wall,
            "until": wall + lease,
            "owner": owner,
            "dead": dead,
            "limit": limit,
        }
        cursor = await conn.execute(_CLAIM_RUNNABLE, args)
        return list(self.rows.records(await cursor.fetchall()))

    async def stuck(self, conn: Conn, workflows: list[str] | None, limit: int) -> list[RunRecord]:
        if limit <= 0 or workflows == []:
            return []
        sql, args = _STUCK, []
        if workflows is not None:
            sql += "  AND workflow = ANY(%s::text[])\n"
            args.append(workflows)
        cursor = await conn.execute(sql + "ORDER BY created_at LIMIT %s", [*args, limit])
        return list(self.rows.records(await cursor.fetchall()))

    async def list_runs(
        self,
        conn: Conn,
        status: str | None,
        workflow: str | None,
        limit: int,
        after: tuple[float, str] | None,
        created_after: float | None,
        created_before: float | None,
    ) -> list[RunRecord]:
        """A page of runs, newest first, read through a migration 004 index."""
        clause, args = page_filter(
            status, workflow, after, created_after, created_before, "%s", _RUN_ID_BYTES
        )
        cursor = await conn.execute(f"{_SELECT_RUN}{clause} LIMIT %s", [*args, max(limit, 0)])
        return list(self.rows.records(await cursor.fetchall()))

    async def journal(
        self, conn: Conn, run_id: str, after: int, limit: int
    ) -> list[tuple[int, str]]:
        """Journal entries after seq ``after``, read by the journal's primary key."""
        cursor = conn.cursor(binary=True)
        await cursor.execute(_JOURNAL_PAGE, [run_id, after, limit])
        rows = await cursor.fetchall()
        if not rows:
            found = await conn.execute("SELECT 1 FROM runs WHERE run_id = %s", [run_id])
            if await found.fetchone() is None:
                raise self._missing(run_id)
        parts = self.parts
        return [
            (int(seq), parts.text(body, run_id, f"journal entry seq {seq}")) for seq, body in rows
        ]

    async def prune(self, conn: Conn, older_than: float) -> int:
        cursor = await conn.execute(_PRUNE, [time.time() - older_than])
        row = await cursor.fetchone()
        return int(row[0]) if row else 0
