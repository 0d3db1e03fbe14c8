"""The thread that owns a SqliteStore's connection: job queue, group commit, migrations.

The event loop puts ``_Job``s on a queue and awaits their futures; this thread takes every
job waiting when it wakes, runs all the writes in ONE ``BEGIN IMMEDIATE`` transaction (a
savepoint per job, so a job that fails leaves the others intact), then the reads in one
read transaction, and resolves the futures with ``loop.call_soon_threadsafe``, once per
loop per batch. sqlite3 errors are translated into piton errors here.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from piton.errors import JournalCorrupted, StoreError, StoreUnavailable
from piton.stores._migrations import read_migrations

Op = Callable[[sqlite3.Connection], Any]
Outcome = tuple["_Job", Any, BaseException | None]


@cache
def migrations() -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """(version, file name, statements) for every file in ``migrations/sqlite``, in order."""
    return read_migrations("sqlite", "SQLite", _statements)


def _statements(script: str) -> tuple[str, ...]:
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    leftover = [ln for ln in buffer.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if leftover:
        raise StoreError(
            f"Unterminated SQL statement in a piton migration: {buffer.strip()[:80]!r}"
        )
    return tuple(statements)


# --- the thread that owns the connection ----------------------------------------------------


@dataclass(eq=False, slots=True)
class _Job:
    op: Op | None  # None: stop the thread
    write: bool
    future: asyncio.Future[Any] | None
    is_commit: bool = False


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the loop thread: hand each job's outcome to its awaiting caller."""
    for future, result, exc in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


class Writer:
    """Owns the sqlite3 connection and runs every job on its own thread.

    Holds no reference to the store, so a forgotten store can be collected and its
    finalizer can stop this thread.
    """

    def __init__(self, path: str, synchronous: str, busy_timeout: float) -> None:
        self.path, self.synchronous, self.busy_timeout = path, synchronous, busy_timeout
        self.queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.lock = threading.Lock()  # guards `closed` and `failure` against queue.put
        self.closed = False
        self.failure: StoreError | None = None
        self.conn: sqlite3.Connection | None = None
        self.transactions = 0  # write transactions committed
        self.commits = 0  # CommitRequests applied
        self.thread_ids: set[int] = set()  # threads that touched the connection
        self.thread = threading.Thread(target=self._main, name=f"piton-sqlite {path}", daemon=True)

    # -- called from the loop thread (or a finalizer) ------------------------------------------

    def submit(
        self,
        op: Op | None,
        write: bool,
        future: asyncio.Future[Any] | None,
        is_commit: bool = False,
    ) -> None:
        with self.lock:
            if self.failure is not None:
                raise _copy(self.failure)
            if self.closed:
                raise StoreError(
                    f"SQLite store {self.path!r} is closed; call `await store.open()` to use it again."
                )
            if op is None:
                self.closed = True
            self.queue.put(_Job(op, write, future, is_commit))

    def stop_nowait(self) -> None:
        try:
            self.submit(None, False, None)
        except StoreError:
            pass

    # -- the thread --------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._connect()
        except BaseException as exc:
            with self.lock:
                self.failure = exc if isinstance(exc, StoreError) else self._translate(exc)
                pending = self._drain()
            self._deliver([(job, None, _copy(self.failure)) for job in pending])
            return
        stop: _Job | None = None
        while stop is None:
            batch = [self.queue.get(), *self._drain()]
            stop = next((job for job in batch if job.op is None), None)
            jobs = [
                j for j in batch if j.op is not None and not (j.future and j.future.cancelled())
            ]
            outcomes: list[Outcome] = []
            self.thread_ids.add(threading.get_ident())
            try:
                outcomes += self._run_writes([j for j in jobs if j.write])
                outcomes += self._run_reads([j for j in jobs if not j.write])
            except Exception as exc:  # a bug: fail the rest of the batch, keep serving
                self._rollback()
                done = {id(job) for job, _, _ in outcomes}
                outcomes += [(j, None, exc) for j in jobs if id(j) not in done]
            self._deliver(outcomes)
        assert self.conn is not None
        self.conn.close()
        self._deliver([(stop, None, None)])

    def _drain(self) -> list[_Job]:
        jobs = []
        while True:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                return jobs

    def _deliver(self, outcomes: list[Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, result, exc in outcomes:
            if job.future is not None:
                by_loop.setdefault(job.future.get_loop(), []).append((job.future, result, exc))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _connect(self) -> None:
        self.thread_ids.add(threading.get_ident())
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        if not os.path.exists(self.path):
            self._create(directory)
        elif os.path.getsize(self.path) == 0:
            raise JournalCorrupted(
                f"SQLite store {self.path!r} is an empty file (0 bytes): it is not a piton "
                "database, or it was truncated and its runs are lost. piton does not take it "
                "for a new store. Restore it from a backup, or delete it to start a new, "
                "empty store."
            )
        conn = self._open(self.path)
        try:
            self._set_up(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def _open(self, path: str) -> sqlite3.Connection:
        return sqlite3.connect(
            path, timeout=self.busy_timeout, isolation_level=None, cached_statements=256
        )

    def _create(self, directory: str) -> None:
        """A new database: built under a temporary name, then linked into place.

        So a database file is never seen empty, even by a process that opens it while
        another creates it, or after a crash midway: an empty file at ``path`` is always
        damage. Where hard links are not supported, the file is created in place.
        """
        temporary = os.path.join(
            directory, f".{os.path.basename(self.path)}.{os.getpid()}.{threading.get_ident()}.new"
        )
        try:
            conn = self._open(temporary)
            try:
                self._set_up(conn)
            finally:
                conn.close()  # the last connection: its WAL is checkpointed into the file
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                pass  # another process created it meanwhile: use theirs
            except OSError:
                if not os.path.exists(self.path):
                    os.replace(temporary, self.path)
        finally:
            for leftover in (temporary, temporary + "-wal", temporary + "-shm"):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """WAL mode and migrations, retried while another connection sets up the same file.

        Two connections opening a new file at once can deadlock on switching it to WAL;
        SQLite then reports SQLITE_BUSY at once instead of calling the busy handler.
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreUnavailable(
                        f"SQLite store {self.path!r} cannot use WAL mode (got {mode!r}); "
                        "put the database on a local file system."
                    )
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                self._migrate(conn)
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc).lower() or "busy" in str(exc).lower()
                if not busy or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        known = migrations()
        newest = len(known)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > newest:
            raise _newer_schema(self.path, version, newest)
        if version == newest:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have migrated while we waited for the lock
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > newest:
                raise _newer_schema(self.path, version, newest)
            for number, _name, statements in known[version:]:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _run_writes(self, jobs: list[_Job]) -> list[Outcome]:
        if not jobs:
            return []
        conn = self.conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(job, None, self._translate(exc)) for job in jobs]
        outcomes: list[Outcome] = []
        if len(jobs) == 1:  # alone in its transaction: no savepoint needed
            return self._run_single_write(conn, jobs[0])
        for job in jobs:
            assert job.op is not None
            try:
                conn.execute("SAVEPOINT job")
                try:
                    result = job.op(conn)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    raise
                conn.execute("RELEASE job")
            except sqlite3.Error as exc:
                if not conn.in_transaction:  # SQLite rolled the whole transaction back
                    return [(job, None, self._translate(exc)) for job in jobs]
                outcomes.append((job, None, self._translate(exc)))
            except Exception as exc:
                outcomes.append((job, None, exc))
            else:
                outcomes.append((job, result, None))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            return [(job, None, self._translate(exc)) for job in jobs]
        self.transactions += 1
        self.commits += sum(1 for job, _, exc in outcomes if job.is_commit and exc is None)
        return outcomes

    def _run_single_write(self, conn: sqlite3.Connection, job: _Job) -> list[Outcome]:
        assert job.op is not None
        try:
            result = job.op(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                return [(job, None, self._translate(exc))]
            if isinstance(exc, Exception):
                return [(job, None, exc)]
            raise
        self.transactions += 1
        self.commits += job.is_commit
        return [(job, result, None)]

    def _run_reads(self, jobs: list[_Job]) -> list[Outcome]:
        if not jobs:
            return []
        conn = self.conn
        assert conn is not None
        outcomes: list[Outcome] = []
        try:
            conn.execute("BEGIN")  # deferred: every read of this wake-up sees one snapshot
        except sqlite3.Error as exc:
            return [(job, None, self._translate(exc)) for job in jobs]
        for job in jobs:
            assert job.op is not None
            try:
                outcomes.append((job, job.op(conn), None))
            except sqlite3.Error as exc:
                outcomes.append((job, None, self._translate(exc)))
            except Exception as exc:
                outcomes.append((job, None, exc))
        self._rollback()  # nothing to keep: this was a read transaction
        return outcomes

    def _rollback(self) -> None:
        if self.conn is not None and self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _translate(self, exc: BaseException) -> StoreError:
        where = f"SQLite store {self.path!r}"
        text = str(exc)
        low = text.lower()
        error: StoreError
        if "locked" in low or "busy" in low:
            error = StoreUnavailable(
                f"{where} is locked by another connection ({text}) for longer than "
                f"busy_timeout={self.busy_timeout}s. Nothing committed is lost; retry, raise "
                "busy_timeout, or stop the process holding the write lock."
            )
        elif "full" in low:
            error = StoreUnavailable(
                f"{where}: the disk is full ({text}). Nothing committed is lost; free space on "
                "that volume and retry."
            )
        elif "could not decode" in low:
            error = JournalCorrupted(
                f"{where} holds a row that cannot be decoded ({text}). Restore the file from a "
                "backup or delete the damaged run."
            )
        elif "malformed" in low or "not a database" in low:
            error = StoreError(
                f"{where} is damaged or is not a SQLite database ({text}). Restore it from a "
                "backup, or point piton at another file."
            )
        elif "no such" in low or "syntax error" in low or "has no column" in low:
            error = StoreError(
                f"{where} does not have the tables piton expects ({text}). Was it changed by "
                "hand, or by another program? Point piton at its own database file."
            )
        elif isinstance(exc, sqlite3.OperationalError | OSError):
            error = StoreUnavailable(
                f"{where} cannot be read or written ({text}). Nothing committed is lost; check "
                "the disk, the path and its permissions, then retry."
            )
        else:
            error = StoreError(f"{where} failed: {type(exc).__name__}: {text}.")
        error.__cause__ = exc
        return error


def _newer_schema(path: str, version: int, newest: int) -> StoreError:
    return StoreError(
        f"SQLite store {path!r} was written by a newer piton (schema version {version}; this "
        f"piton knows up to {newest}). Upgrade piton (pip install -U piton) to open it."
    )


def _copy(error: StoreError) -> StoreError:
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy
