"""PostgresStore: durable runs in PostgreSQL, on psycopg 3's asyncio API.

``PostgresStore("postgresql://user@host/db")`` or ``postgresql://...?schema=name`` keeps
runs in the tables of one schema (default ``piton``), so several applications, or tests,
can share a database. Several processes on several machines can share one schema: that
is how workers scale out (DESIGN.md section 4).

Connections. A store opens, per event loop, one connection for writes and a small pool
(``pool_size``, default 4) for reads and ``prune``, all in autocommit mode, opened when
first needed and kept while idle. Not psycopg_pool: its pool runs background tasks and
threads bound to the loop that opened it, while ``run_sync`` runs each call on a fresh
loop; what piton needs (a semaphore and a list of idle connections, dropped with their
loop) is a few lines, and needs no extra dependency. Every wait is an ``await`` on a
non-blocking socket; nothing blocks the loop.

Group commit. All writes go to the writer, which runs whatever queued while it was busy
as one batch: the commits that change only the run's row (``CommitRequest.batchable``:
a running run appending entries, and the commits that park or finish a run) in ONE
statement, ``UPDATE runs ... FROM unnest(...) WHERE epoch = .. AND seq = .. RETURNING``
chained to multi-row inserts of their entries and stream events; the runs created
meanwhile in one more (``create`` gathers them into one job); every other write in one
transaction, a savepoint each, so a request that fails (``LeaseLost``) changes nothing
and does not disturb the others. A deadlock with another process reruns the batch.

Fencing. A commit's epoch and expected seq are checked in the statement (or, for other
commits, under the row lock of ``SELECT ... FOR UPDATE``) that appends its entries: a
process that lost its lease cannot write. ``claim`` reads the run's row with
``FOR UPDATE SKIP LOCKED``: a run whose row another transaction is changing right now is
being worked on, so the claim gives way at once (returns None) instead of queueing;
``prune`` skips such runs too. ``claim_runnable`` is one statement that locks the runs it
takes with ``FOR UPDATE SKIP LOCKED`` as it reads them, kind by kind, through indexes
that hold only runnable runs (migration 003): two workers never take one run, and parked
runs that wait cost nothing. ``runnable`` is a plain read: the claim decides.

Wake-ups. A delivered event, a run created queued and released leases ``NOTIFY`` the
schema's channel when their transaction commits; ``wait_for_work`` LISTENs to it.

Times are the client's ``time.time()``, as in every store: lease expiry compares clocks
across machines, so keep them in sync (NTP) and leases well above the skew.

The schema lives in numbered files under ``migrations/postgres/``, applied under an
advisory lock and recorded in the table ``piton_schema``; a schema from a newer piton is
refused. Errors from psycopg leave as ``StoreUnavailable`` (server down or restarting,
lock timeout, out of resources) or ``StoreError``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import weakref
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from piton.errors import StoreError, WorkflowConfigurationError
from piton.stores._batching import copy_error
from piton.stores._engines import Engines, ServerStore
from piton.stores._postgres_engine import (
    Connector,
    Engine,
    Op,
    WriteJob,
    migrate,
    migrations,
    translate,
)
from piton.stores._postgres_ops import Conn, Creation, PostgresOps
from piton.stores._redact import scrub, secrets_of
from piton.stores.base import (
    CommitRequest,
    Loaded,
    RunRecord,
    age_in_seconds,
    check_limit,
    check_page,
    check_timing,
    check_window,
    parse_cursor,
    redact_url,
    split_store_url,
    url_option,
)

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# piton's own URL options; the rest is libpq's
_OPTIONS = ("schema", "pool_size", "lock_timeout", "lease", "deadline")


class PostgresStore(ServerStore[Engine]):
    """Runs kept in a PostgreSQL schema. ``PostgresStore("postgresql://host/db")``.

    ``schema`` (or ``?schema=`` in the URL; default ``piton``) is created if missing.
    ``lease`` is how long (seconds) a claim lasts without renewal; ``deadline`` how long
    (seconds) a caller waits for a server that cannot be reached before it gets
    ``StoreUnavailable`` (workers retry for ever). ``pool_size`` is how
    many connections serve reads, besides the one that writes. ``lock_timeout`` is how long
    (seconds) a write waits for a row another transaction holds before failing with
    ``StoreUnavailable``. Other query parameters are passed to libpq (``sslmode``,
    ``connect_timeout``, ``application_name``, ...).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        lease: float | None = None,
        pool_size: int | None = None,
        lock_timeout: float | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        conninfo, options, libpq = _parse_url(url)
        self.schema = url_option("PostgresStore", url, "schema", schema, options, str, "piton")
        self.pool_size = url_option("PostgresStore", url, "pool_size", pool_size, options, int, 4)
        self.lock_timeout = url_option(
            "PostgresStore", url, "lock_timeout", lock_timeout, options, float, 10.0
        )
        if not _SCHEMA_NAME.match(self.schema):
            raise WorkflowConfigurationError(
                f"PostgresStore(schema={self.schema!r}): use letters, digits and underscores, "
                "starting with a letter or underscore, at most 63 characters."
            )
        if not self.pool_size >= 1:
            raise WorkflowConfigurationError(
                f"PostgresStore(pool_size={self.pool_size!r}): give at least 1 connection."
            )
        if not self.lock_timeout > 0:
            raise WorkflowConfigurationError(
                f"PostgresStore(lock_timeout={self.lock_timeout!r}): give seconds > 0."
            )
        check_timing(
            self,
            url_option("PostgresStore", url, "lease", lease, options, float, 15.0),
            url_option("PostgresStore", url, "deadline", deadline, options, float, 30.0),
        )
        self.url = redact_url(url)  # a password never reaches a message or a log
        named = "" if "schema" in options else f" (schema '{self.schema}')"
        self.where = where = f"PostgreSQL store '{self.url}'{named}"
        host = libpq.get("host") or libpq.get("hostaddr") or "localhost"
        dbname = libpq.get("dbname") or libpq.get("user") or ""
        self._identity = (
            f"postgresql://{host}:{libpq.get('port') or 5432}/{dbname}?schema={self.schema}"
        )
        defaults: dict[str, str | int] = {"connect_timeout": 10, "application_name": "piton"}
        conninfo = make_conninfo(
            conninfo, **{key: value for key, value in defaults.items() if key not in libpq}
        )
        self._connector = Connector(
            conninfo, self.schema, self.lock_timeout, where, secrets_of(url)
        )
        self._channel = _channel(self.schema)
        self._ops = PostgresOps(self.url, where, self.owner, self._channel)
        # creations waiting for the writer of each engine (loop); see create()
        self._creating: weakref.WeakKeyDictionary[Engine, _Creations] = weakref.WeakKeyDictionary()
        # a store nobody closed: close its connections when it is collected, or at exit
        self._finalizer = weakref.finalize(self, _abandon_all, self._engines)

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user@host:port/db?schema=name&pool_size=4&lock_timeout=10&lease=15&deadline=30``."""
        return cls(url)

    # -- lifecycle ----------------------------------------------------------------------------

    async def _start(self) -> None:
        """Connect, create or migrate the schema."""
        schema, where = self.schema, self.where
        await self._engine().pool.run(lambda conn: migrate(conn, schema, where))

    async def close(self) -> None:
        """Finish the queued writes and close every connection. ``open()`` starts again."""
        self._closed, self._ready = True, False
        loop = asyncio.get_running_loop()
        for engine_loop, engine in self._engines.items():
            self._engines.retire(engine_loop)
            if engine_loop is loop:
                await engine.aclose()
            elif engine_loop.is_closed() or not engine_loop.is_running():
                engine.abandon()
            else:  # a loop running in another thread: close its connections there
                engine_loop.call_soon_threadsafe(engine.abandon)

    def _engine(self) -> Engine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get(loop)
        if engine is None:
            for old in self._engines.ended():
                self._engines.retire(old).abandon()
            engine = Engine(self._connector, self.pool_size, self._ops.commit_batch, self._channel)
            self._engines.add(loop, engine)
        return engine

    async def _ready_engine(self) -> Engine:
        await self._opened()
        return self._engine()

    async def _read(self, op: Op) -> Any:
        return await (await self._ready_engine()).pool.run(op)

    async def _write(
        self,
        op: Op,
        *,
        run_id: str | None = None,
        request: CommitRequest | None = None,
        touches: tuple[str, ...] = (),
    ) -> Any:
        engine = await self._ready_engine()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        engine.writer.submit(WriteJob(op, future, run_id, request, touches))
        return await future

    # -- the Store protocol ---------------------------------------------------------------

    async def create(
        self,
        record: RunRecord,
        entries: list[str],
        stream: list[str],
        *,
        snapshot: str | None = None,
    ) -> bool:
        """Joins the creations waiting for the writer on this loop: the writer inserts them
        all in one statement (one job), in the transaction of its next batch."""
        engine = await self._ready_engine()
        batch = self._creating.get(engine)
        if batch is None or batch.started or batch.future.done():
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)  # every caller may have been cancelled
            batch = _Creations(future)
            engine.writer.submit(WriteJob(functools.partial(self._create_all, batch), future))
            self._creating[engine] = batch
        n = len(batch.runs)
        batch.runs.append((replace(record), list(entries), list(stream), snapshot))
        try:  # shielded: one caller cancelled does not cancel the others' creations
            outcomes = await asyncio.shield(batch.future)
        except StoreError as exc:  # each caller its own copy: tracebacks do not mix
            raise copy_error(exc) from exc.__cause__
        outcome: bool | StoreError = outcomes[n]
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    async def _create_all(self, batch: _Creations, conn: Conn) -> list[bool | StoreError]:
        """The writer's job: every run of ``batch`` in one statement. If that statement
        fails (one run holds what the database refuses), each run alone, so only that one
        fails."""
        batch.started = True  # later creations go to a new batch
        runs = batch.runs
        try:
            async with conn.transaction():  # a savepoint
                return list(await self._ops.create(conn, runs))
        except psycopg.Error as exc:
            if len(runs) == 1 or conn.closed or (exc.sqlstate or "").startswith("40"):
                raise  # the writer reports it, or runs the batch again (a deadlock)
        outcomes: list[bool | StoreError] = []
        for run in runs:
            try:
                async with conn.transaction():
                    outcomes += await self._ops.create(conn, [run])
            except psycopg.Error as exc:
                if conn.closed or (exc.sqlstate or "").startswith("40"):
                    raise
                outcomes.append(translate(exc, self.where, self._connector.secrets))
        return outcomes

    async def get(self, run_id: str) -> RunRecord | None:
        result: RunRecord | None = await self._read(lambda c: self._ops.get(c, run_id))
        return result

    async def get_many(self, run_ids: list[str]) -> dict[str, RunRecord]:
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return {}
        result: dict[str, RunRecord] = await self._read(lambda c: self._ops.get_many(c, ids))
        return result

    async def claim_runnable(
        self, workflows: list[str], now: float, owner: str, lease: float, limit: int
    ) -> list[RunRecord]:
        names = list(dict.fromkeys(workflows))
        if not names or limit <= 0:
            return []
        result: list[RunRecord] = await self._write(
            lambda c: self._ops.claim_runnable(c, names, now, owner, lease, limit)
        )
        return result

    async def claim(self, run_id: str, owner: str, lease: float) -> int | None:
        result: int | None = await self._write(
            lambda c: self._ops.claim(c, run_id, owner, lease), run_id=run_id
        )
        return result

    async def load(self, run_id: str) -> Loaded:
        result: Loaded = await self._read(lambda c: self._ops.load(c, run_id))
        return result

    async def commit(self, request: CommitRequest) -> None:
        # the writer reads ``request`` before this returns: callers must not change it meanwhile
        await self._write(
            lambda c: self._ops.commit(c, request), run_id=request.run_id, request=request
        )

    async def renew(self, run_ids: list[tuple[str, int]], owner: str, lease: float) -> list[str]:
        runs = list(run_ids)
        result: list[str] = await self._write(lambda c: self._ops.renew(c, runs, owner, lease))
        return result

    async def release(self, runs: list[tuple[str, int]], owner: str) -> None:
        pairs = list(runs)
        if pairs:
            touched = tuple(run_id for run_id, _ in pairs)
            await self._write(lambda c: self._ops.release(c, pairs, owner), touches=touched)

    async def deliver(
        self, run_id: str, event: str, step: str | None = None, *, limit: int | None = None
    ) -> None:
        check_limit(limit)
        await self._write(lambda c: self._ops.deliver(c, run_id, event, step, limit), run_id=run_id)

    async def stuck(self, workflows: list[str] | None = None, limit: int = 100) -> list[RunRecord]:
        names = None if workflows is None else list(workflows)
        result: list[RunRecord] = await self._read(lambda c: self._ops.stuck(c, names, limit))
        return result

    async def runnable(self, workflows: list[str], now: float, limit: int = 100) -> list[RunRecord]:
        names = list(workflows)
        result: list[RunRecord] = await self._read(
            lambda c: self._ops.runnable(c, names, now, limit)
        )
        return result

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
        since, until = check_window(created_after, created_before)
        start = None if after is None else parse_cursor(after)
        if limit <= 0:
            return []
        result: list[RunRecord] = await self._read(
            lambda c: self._ops.list_runs(c, status, workflow, limit, start, since, until)
        )
        return result

    async def journal(
        self, run_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        after, limit = check_page(after, limit)
        result: list[tuple[int, str]] = await self._read(
            lambda c: self._ops.journal(c, run_id, after, limit)
        )
        return result

    async def wait_for_work(self, timeout: float) -> None:
        """Return when an event is delivered to a run of this schema, a run is queued or
        leases are released (LISTEN/NOTIFY, from any process), or after ``timeout``
        seconds."""
        engine = await self._ready_engine()
        await engine.listener.wait(timeout)

    async def prune(self, older_than: float | timedelta) -> int:
        seconds = age_in_seconds(older_than)
        result: int = await self._read(lambda c: self._ops.prune(c, seconds))
        return result


class _Creations:
    """Runs to create that wait for the writer of one loop; one job inserts them all."""

    __slots__ = ("future", "runs", "started")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future  # the job's outcome: one bool (created) or error per run
        self.runs: list[Creation] = []
        self.started = False  # the writer began inserting: later runs go to a new batch


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # seen: no "exception was never retrieved" if nobody waits


def _channel(schema: str) -> str:
    """The NOTIFY channel of a schema (an identifier of at most 63 bytes)."""
    name = f"piton_{schema}"
    if len(name) <= 63:
        return name
    return "piton_" + hashlib.sha1(schema.encode()).hexdigest()


def _abandon_all(engines: Engines[Engine]) -> None:
    for loop, _ in engines.items():
        engines.retire(loop).abandon()


# --- the URL ----------------------------------------------------------------------------------


def _parse_url(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(libpq connection string, piton's options, the libpq parameters it sets)."""
    conninfo, options = split_store_url(
        url,
        ("postgres", "postgresql"),
        "a PostgreSQL URL: use postgresql://user@host:port/database?schema=name",
        _OPTIONS,
    )
    try:
        libpq = conninfo_to_dict(conninfo)
    except ProgrammingError as exc:
        text = " ".join(str(exc).split())
        shown = scrub(text, secrets_of(url))
        error = WorkflowConfigurationError(
            f"Store URL {redact_url(url)!r}: {shown}. piton's own options are "
            f"{', '.join(_OPTIONS)}; the others go to libpq."
        )
        # libpq may quote a piece of the password back: then its error is not chained
        raise error from (exc if shown == text else None)
    return conninfo, options, libpq


__all__ = ["PostgresStore", "migrations"]
