"""The connections of a PostgresStore on one event loop, its migrations, and the
translation of psycopg errors into piton errors.

``Engine`` holds, for one loop, the ``Writer`` (one connection; group commit) and the
``Pool`` (a few connections for reads and ``prune``). The writer runs while jobs wait: it
takes every job queued, applies the plain commits among them in one statement, runs the
rest in one transaction with a savepoint per job, settles the callers' futures, and
starts again with whatever queued meanwhile. It stops when the queue is empty.

Reconnecting: no connection outlives a server restart. Before an idle connection (the
writer's, or the pool's) is used, ``_alive`` checks without blocking that the server has
not closed it; a dead one is dropped and the next request opens a new connection
(``connect_timeout`` bounds a connect, 10 s unless the URL says otherwise). A connection
that cannot be opened fails with ``StoreUnreachable``: the request never ran, so anyone
may send it again. A connection that breaks while a request is under way fails it with a
plain ``StoreUnavailable``: it may or may not have been applied (the committer reads the
run back to know).
"""

from __future__ import annotations

import asyncio
import hashlib
import select
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeAlias

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from piton.errors import StoreError, StoreUnavailable
from piton.stores._batching import BatchWriter, copy_error, unreachable
from piton.stores._migrations import read_migrations
from piton.stores._postgres_ops import Conn
from piton.stores._redact import scrub
from piton.stores._wakeups import Waiters
from piton.stores.base import CommitRequest

Op: TypeAlias = Callable[[Conn], Awaitable[Any]]
FastCommit: TypeAlias = Callable[[Conn, list[CommitRequest]], Awaitable[set[str]]]
Outcome: TypeAlias = tuple["WriteJob", Any, BaseException | None]

_TRANSIENT = frozenset({"40001", "40P01"})  # serialization failure, deadlock: run it again
_ATTEMPTS = 3


# --- connecting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Connector:
    """Opens connections in autocommit mode, on the store's schema, with its lock timeout."""

    conninfo: str = field(repr=False)  # holds the password
    schema: str
    lock_timeout: float
    where: str
    secrets: tuple[str, ...] = field(default=(), repr=False)  # scrubbed from driver errors

    async def connect(self) -> Conn:
        """A new connection. Fails with ``StoreUnreachable`` when the server cannot be
        reached (or is starting or stopping): the request that wanted it was never sent."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            error = unreachable(translate(exc, self.where, self.secrets))
            raise error from error.__cause__
        try:
            await conn.execute(
                "SELECT set_config('search_path', %s, false), "
                "set_config('lock_timeout', %s, false)",
                [quote_ident(self.schema), f"{round(self.lock_timeout * 1000)}ms"],
            )
        except psycopg.Error as exc:
            discard(conn)
            error = unreachable(translate(exc, self.where, self.secrets))
            raise error from error.__cause__
        except BaseException:  # cancelled while setting up (a store closing): never leak it
            discard(conn)
            raise
        return conn


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def discard(conn: Conn) -> None:
    """Close a connection now, whatever state it is in; no await needed.

    Not while a task waits on its socket: the loop would keep that wait registered, the
    closed fd number is soon reused by a new connection, and that one then fails (epoll's
    FileNotFoundError, "connection socket closed"). Such a task is cancelled instead
    (``_unwind``), and closes the connection once psycopg has stopped waiting on it."""
    conn.pgconn.finish()


def _unwind(task: asyncio.Task[Any] | None) -> bool:
    """Cancel ``task`` if a live loop still runs it, so that it closes its own connection
    as it unwinds; False when nothing will run it any more (the caller closes it)."""
    if task is None or task.done():
        return False
    loop = task.get_loop()
    if loop.is_closed() or not loop.is_running():
        return False
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task.cancel()
    else:  # a finalizer, or a store closed from another thread
        loop.call_soon_threadsafe(task.cancel)
    return True


def _reusable(conn: Conn) -> bool:
    return not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE


def _alive(conn: Conn) -> bool:
    """Whether an idle connection may still be used. A server that shuts down (a restart)
    sends each connection a last message and closes it: an idle connection with something
    to read has been dropped, and a request sent on it would fail with its fate unknown.
    Checked without blocking; a connection that merely got a notice is dropped too, which
    costs only a reconnect."""
    if not _reusable(conn):
        return False
    try:
        fd = conn.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError, AttributeError, psycopg.Error):  # no poll(): Windows
        return not conn.closed


# --- reads ------------------------------------------------------------------------------------


class Pool:
    """Up to ``size`` connections for reads and ``prune``, opened when first needed and kept
    while idle."""

    def __init__(self, connector: Connector, size: int) -> None:
        self.connector = connector
        self.slots = asyncio.Semaphore(size)
        self.idle: list[Conn] = []
        self.closed = False

    async def run(self, op: Op) -> Any:
        async with self.slots:
            retried = False
            while True:
                self._check_open()
                conn = self._idle_connection()
                fresh = conn is None
                if conn is None:
                    conn = await self.connector.connect()
                try:
                    result = await op(conn)
                except psycopg.Error as exc:
                    self._put(conn)
                    if conn.closed and not fresh and not retried:
                        retried = True  # it died while idle (a server restart): once more
                        continue
                    error = translate(exc, self.connector.where, self.connector.secrets)
                    raise error from error.__cause__
                except BaseException:
                    self._put(conn)
                    raise
                self._put(conn)
                return result

    def _idle_connection(self) -> Conn | None:
        """An idle connection that is still alive, dropping those the server closed."""
        while self.idle:
            conn = self.idle.pop()
            if _alive(conn):
                return conn
            discard(conn)
        return None

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"{self.connector.where} is closed; call `await store.open()`.")

    def _put(self, conn: Conn) -> None:
        if self.closed or not _reusable(conn):
            discard(conn)
        else:
            self.idle.append(conn)

    def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            discard(conn)


# --- writes: group commit ---------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class WriteJob:
    op: Op
    future: asyncio.Future[Any]
    run_id: str | None = None  # the run it changes, to keep a run's jobs in order
    request: CommitRequest | None = None  # a commit: it may join the batch's one statement
    touches: tuple[str, ...] = ()  # the runs a job on several runs changes (release)


class _Retry(Exception):
    """A deadlock or serialization failure: the batch's transaction runs again."""

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error


class Writer(BatchWriter[WriteJob]):
    """Runs a store's writes on one connection, batching the jobs that queue up meanwhile."""

    def __init__(self, connector: Connector, fast_commit: FastCommit) -> None:
        super().__init__(connector.where)
        self.connector = connector
        self.fast_commit = fast_commit
        self.conn: Conn | None = None

    async def aclose(self) -> None:
        """Finish the queued jobs, then close the connection."""
        self.closed = True
        if self.task is not None:
            await asyncio.wait([self.task])
        self.abandon()

    def abandon(self) -> None:
        self.closed = True
        if not _unwind(self.task):  # a batch under way: its task closes the connection
            self.abandon_connection()

    def _reset(self) -> None:
        self.abandon_connection()

    def abandon_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            discard(conn)

    async def _connection(self) -> Conn:
        """The writer's connection; a new one if the server dropped it (a restart)."""
        if self.conn is not None and not _alive(self.conn):
            self.abandon_connection()
        if self.conn is None:
            self.conn = await self.connector.connect()
        return self.conn

    async def _run(self, jobs: list[WriteJob]) -> list[Outcome]:
        try:
            conn = await self._connection()
        except StoreError as exc:
            return [(job, None, copy_error(exc)) for job in jobs]
        fast, slow = _split(jobs)
        outcomes: list[Outcome] = []
        try:
            if fast and not slow:  # the common case: one statement, its own transaction
                won = await self._fast_alone(conn, fast)
                outcomes += [(job, None, None) for job in fast if _key(job) in won]
                slow = [job for job in fast if _key(job) not in won]  # each alone says why
                fast = []
            if slow:
                outcomes += await self._transaction(conn, fast, slow, jobs)
        except psycopg.Error as exc:  # the connection failed: the batch's fate is unknown
            error = translate(exc, self.where, self.connector.secrets)
            settled = {id(job) for job, _, _ in outcomes}
            outcomes += [(job, None, copy_error(error)) for job in jobs if id(job) not in settled]
        if self.conn is not None and not _reusable(self.conn):
            self.abandon_connection()
        return outcomes

    async def _fast_alone(self, conn: Conn, fast: list[WriteJob]) -> set[str]:
        try:
            won = await self.fast_commit(conn, [_request(job) for job in fast])
        except psycopg.Error:
            if conn.closed:
                raise
            return set()  # the statement failed as a whole: the requests go one by one
        if won:
            self.transactions += 1
            self.commits += len(won)
        return won

    async def _transaction(
        self, conn: Conn, fast: list[WriteJob], slow: list[WriteJob], order: list[WriteJob]
    ) -> list[Outcome]:
        error: psycopg.Error | None = None
        for _ in range(_ATTEMPTS):
            try:
                if len(slow) == 1 and not fast:
                    return await self._alone(conn, slow[0])
                return await self._together(conn, fast, slow, order)
            except _Retry as retry:
                error = retry.error
        assert error is not None
        failure = translate(error, self.where, self.connector.secrets)
        return [(job, None, copy_error(failure)) for job in fast + slow]

    async def _alone(self, conn: Conn, job: WriteJob) -> list[Outcome]:
        try:
            async with conn.transaction():
                result = await job.op(conn)
        except psycopg.Error as exc:
            _check(exc, conn)
            return [(job, None, translate(exc, self.where, self.connector.secrets))]
        except Exception as exc:  # LeaseLost, RunNotFound, ...: nothing was written
            return [(job, None, exc)]
        self.transactions += 1
        self.commits += job.request is not None
        return [(job, result, None)]

    async def _together(
        self, conn: Conn, fast: list[WriteJob], slow: list[WriteJob], order: list[WriteJob]
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        async with conn.transaction():
            if fast:
                won: set[str] = set()
                try:
                    async with conn.transaction():  # a savepoint
                        won = await self.fast_commit(conn, [_request(job) for job in fast])
                except psycopg.Error as exc:
                    _check(exc, conn)
                outcomes += [(job, None, None) for job in fast if _key(job) in won]
                position = {id(job): n for n, job in enumerate(order)}
                slow = sorted(
                    slow + [job for job in fast if _key(job) not in won],
                    key=lambda job: position[id(job)],
                )
            for job in slow:
                try:
                    async with conn.transaction():  # a savepoint: a failure undoes this job only
                        result = await job.op(conn)
                except psycopg.Error as exc:
                    _check(exc, conn)
                    error = translate(exc, self.where, self.connector.secrets)
                    outcomes.append((job, None, error))
                except Exception as exc:
                    outcomes.append((job, None, exc))
                else:
                    outcomes.append((job, result, None))
        self.transactions += 1
        self.commits += sum(1 for job, _, exc in outcomes if job.request and exc is None)
        return outcomes


def _split(jobs: list[WriteJob]) -> tuple[list[WriteJob], list[WriteJob]]:
    """Batchable commits (``CommitRequest.batchable``: plain ones, and those that park or
    finish a run) that are the first job of the batch on their run; the rest, in order."""
    fast, slow, seen = [], [], set()
    for job in jobs:
        if job.request is not None and job.run_id not in seen and job.request.batchable:
            fast.append(job)
        else:
            slow.append(job)
        if job.run_id is not None:
            seen.add(job.run_id)
        seen.update(job.touches)
    return fast, slow


def _request(job: WriteJob) -> CommitRequest:
    assert job.request is not None
    return job.request


def _key(job: WriteJob) -> str:
    return _request(job).run_id


def _check(exc: psycopg.Error, conn: Conn) -> None:
    """Inside a batch: a lost connection fails the batch, a deadlock runs it again."""
    if conn.closed:
        raise exc
    if exc.sqlstate in _TRANSIENT:
        raise _Retry(exc) from exc


class Listener:
    """One connection that LISTENs on the schema's channel and wakes whoever waits.

    Opened by the first ``wait``; if it breaks, waiters fall back to their timeout and the
    next ``wait`` opens it again.
    """

    def __init__(self, connector: Connector, channel: str) -> None:
        self.connector = connector
        self.channel = channel
        self.waiters = Waiters()
        self.task: asyncio.Task[None] | None = None
        self.conn: Conn | None = None

    async def wait(self, timeout: float) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._listen())
        await self.waiters.wait(timeout)

    async def _listen(self) -> None:
        try:
            self.conn = conn = await self.connector.connect()
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self.waiters.wake()  # what was delivered before we listened: look once
            async for _ in conn.notifies():
                self.waiters.wake()
        except (psycopg.Error, StoreError):
            pass  # the server went away: waiters time out and poll, the next wait reconnects
        finally:
            if self.conn is not None:
                discard(self.conn)
                self.conn = None

    def close(self) -> None:
        if not _unwind(self.task) and self.conn is not None:  # else `_listen` closes it
            discard(self.conn)
            self.conn = None


class Engine:
    """What a store uses on one event loop: the writer, the read pool, the listener."""

    def __init__(
        self, connector: Connector, pool_size: int, fast_commit: FastCommit, channel: str
    ) -> None:
        self.writer = Writer(connector, fast_commit)
        self.pool = Pool(connector, pool_size)
        self.listener = Listener(connector, channel)

    async def aclose(self) -> None:
        self.listener.close()
        self.pool.close()
        await self.writer.aclose()

    def abandon(self) -> None:
        """Close every connection now: the loop is gone, or so is the store."""
        self.listener.close()
        self.pool.close()
        self.writer.abandon()


# --- migrations -------------------------------------------------------------------------------


@cache
def migrations() -> tuple[tuple[int, str, str], ...]:
    """(version, file name, script) for every file in ``migrations/postgres``, in order."""
    return read_migrations("postgres", "PostgreSQL", str)


async def migrate(conn: Conn, schema: str, where: str) -> None:
    """Bring the schema to the newest version; refuse one written by a newer piton.

    The work happens in one transaction holding an advisory lock named after the schema,
    so processes opening one database at once migrate it once, one after the other.
    """
    known = migrations()
    newest = len(known)
    version = await _version(conn, schema)
    if version == newest:
        return
    if version > newest:
        raise _newer_schema(where, schema, version, newest)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(schema)])
        version = await _version(conn, schema)  # another process may have migrated meanwhile
        if version > newest:
            raise _newer_schema(where, schema, version, newest)
        if version == 0 and not await _exists(conn, "pg_namespace", "nspname = %s", schema):
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for number, name, script in known[version:]:
            await conn.execute(script.encode("utf-8"))  # no parameters: several statements
            await conn.execute(
                sql.SQL("INSERT INTO {}.piton_schema (version, name) VALUES (%s, %s)").format(
                    sql.Identifier(schema)
                ),
                [number, name],
            )


async def _exists(conn: Conn, catalog: str, condition: str, *args: str) -> bool:
    cursor = await conn.execute(f"SELECT 1 FROM pg_catalog.{catalog} WHERE {condition}", args)
    return await cursor.fetchone() is not None


async def _version(conn: Conn, schema: str) -> int:
    if not await _exists(
        conn, "pg_tables", "schemaname = %s AND tablename = 'piton_schema'", schema
    ):
        return 0
    cursor = await conn.execute(
        sql.SQL("SELECT COALESCE(max(version), 0) FROM {}.piton_schema").format(
            sql.Identifier(schema)
        )
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


def _lock_key(schema: str) -> int:
    digest = hashlib.blake2b(f"piton migrate {schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _newer_schema(where: str, schema: str, version: int, newest: int) -> StoreError:
    return StoreError(
        f"{where}: schema '{schema}' was written by a newer piton (schema version {version}; "
        f"this piton knows up to {newest}). Upgrade piton (pip install -U 'piton[postgres]') "
        "to open it."
    )


# --- errors -----------------------------------------------------------------------------------


def translate(exc: BaseException, where: str, secrets: tuple[str, ...] = ()) -> StoreError:
    """A psycopg error as the piton error a caller can act on, chained to it (``__cause__``)
    unless its message held a password: then the message is scrubbed and not chained."""
    if isinstance(exc, StoreError):
        return exc
    raw = " ".join(str(exc).split())
    text = scrub(raw, secrets)
    low = text.lower()
    state = getattr(exc, "sqlstate", None) or ""
    error: StoreError
    if state == "55P03":
        error = StoreUnavailable(
            f"{where}: a row lock was not granted within lock_timeout ({text}). Another "
            "transaction holds it; nothing committed is lost. Retry, end that transaction, or "
            "raise lock_timeout (PostgresStore(lock_timeout=...) or ?lock_timeout=seconds)."
        )
    elif state in ("57P01", "57P02", "57P03"):
        error = StoreUnavailable(
            f"{where}: the server is shutting down or restarting ({text}). Nothing committed "
            "is lost; retry once it is back."
        )
    elif state == "57014":
        error = StoreUnavailable(
            f"{where}: the statement was cancelled (statement_timeout, or by an administrator) "
            f"({text}). Nothing committed is lost; retry."
        )
    elif state in _TRANSIENT:
        error = StoreUnavailable(
            f"{where}: the write kept conflicting with concurrent transactions ({text}). "
            "Nothing committed is lost; retry."
        )
    elif state.startswith("53"):
        error = StoreUnavailable(
            f"{where}: the server is out of resources ({text}). Nothing committed is lost; "
            "free disk space or memory, or raise max_connections (or lower pool_size), then "
            "retry."
        )
    elif state == "42P07":
        error = StoreError(
            f"{where}: the schema already holds tables piton did not create ({text}). Give "
            "piton a schema of its own: ?schema=name in the URL or PostgresStore(schema=...)."
        )
    elif state in ("42P01", "42703", "42883"):
        error = StoreError(
            f"{where} does not have the tables piton expects ({text}). Was the schema changed "
            "by hand? Give piton a schema of its own (?schema=name)."
        )
    elif state == "42501":
        error = StoreError(
            f"{where}: permission denied ({text}). Grant the role USAGE and CREATE on the "
            "schema (or CREATE on the database for a new schema), or connect as another role."
        )
    elif state.startswith("28") or "password authentication failed" in low:
        error = StoreError(
            f"{where}: the server refused the login ({text}). Check the user and password in "
            "the URL, PGPASSWORD or ~/.pgpass, and pg_hba.conf."
        )
    elif state == "3D000" or ("database" in low and "does not exist" in low):
        error = StoreError(
            f"{where}: the database does not exist ({text}). Create it (createdb NAME) or fix "
            "the database name in the URL."
        )
    elif isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError) or (
        state.startswith("08")
    ):
        error = StoreUnavailable(
            f"{where} cannot be reached ({text}). Nothing committed is lost; check that the "
            "server is running and the URL's host and port, then retry."
        )
    else:
        error = StoreError(f"{where} failed: {type(exc).__name__}: {text}")
    error.__cause__ = exc if text == raw else None
    error.__suppress_context__ = True
    return error
