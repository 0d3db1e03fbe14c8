"""SqliteStore: the default durable store, on the standard library's ``sqlite3``.

The database runs in WAL mode with ``synchronous=FULL`` by default, so a commit that
returned survives a power cut. All database work happens on one thread per store
(``_sqlite_thread``), which owns the connection; the event loop only puts jobs on a queue
and awaits futures that the thread resolves with ``loop.call_soon_threadsafe``. Nothing
here blocks the loop.

Group commit: when the thread wakes it runs every write waiting in the queue in ONE
``BEGIN IMMEDIATE`` transaction, each under its own savepoint, so a commit failing its
lease or sequence check (``LeaseLost``) changes nothing and does not disturb the others.
Concurrent steps and runs of one process therefore share one fsync.

The schema lives in numbered files under ``migrations/sqlite/``; ``PRAGMA user_version``
records the last one applied, and a database from a newer piton is refused.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from piton.errors import StoreError, WorkflowConfigurationError
from piton.stores._sqlite_ops import SqliteOps
from piton.stores._sqlite_thread import Op, Writer, migrations
from piton.stores.base import (
    CommitRequest,
    Loaded,
    RunRecord,
    Store,
    age_in_seconds,
    check_limit,
    check_page,
    check_timing,
    check_window,
    parse_cursor,
    redact_url,
)

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteStore(Store):
    """Runs kept in one SQLite file. ``SqliteStore("runs.db")`` or ``sqlite:///runs.db``.

    ``synchronous`` is SQLite's durability setting: ``FULL`` (default) survives power
    loss, ``NORMAL`` survives a crash of the process but may lose the last commits on a
    power cut. ``busy_timeout`` is how long (seconds) a write waits for another process's
    lock before failing with ``StoreUnavailable``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        lease: float = 15.0,
        deadline: float = 30.0,
    ) -> None:
        super().__init__()
        check_timing(self, lease, deadline)
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise WorkflowConfigurationError(
                f"SqliteStore needs a file path, not {self.path!r}; for a store that lives in "
                "memory use memory://."
            )
        self.synchronous = str(synchronous).upper()
        if self.synchronous not in _SYNCHRONOUS:
            raise WorkflowConfigurationError(
                f"SqliteStore(synchronous={synchronous!r}): use one of {', '.join(_SYNCHRONOUS)}."
            )
        if not busy_timeout >= 0:
            raise WorkflowConfigurationError(
                f"SqliteStore(busy_timeout={busy_timeout!r}): give a number of seconds >= 0."
            )
        self.busy_timeout = float(busy_timeout)
        self.url = f"sqlite:///{self.path}"
        self._identity = "sqlite:" + os.path.realpath(self.path)
        self._ops = SqliteOps(self.path, self.url, self.owner)
        self._writer: Writer | None = None
        self._ready = False
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._stats = (0, 0, set[int]())  # kept from writers that were closed

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """``sqlite:///relative.db``, ``sqlite:////abs/path.db``; options as a query string:
        ``?synchronous=NORMAL&busy_timeout=2&lease=15&deadline=30``."""
        prefix = "sqlite://"
        rest, _, query = (
            url[len(prefix) :].partition("?") if url.startswith(prefix) else ("", "", "")
        )
        if not rest.startswith("/") or len(rest) < 2:
            raise WorkflowConfigurationError(
                f"Store URL {redact_url(url)!r} names no file: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db."
            )
        options: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "synchronous":
                options[key] = value
            elif key in ("busy_timeout", "lease", "deadline"):
                try:
                    options[key] = float(value)
                except ValueError:
                    options[key] = value  # rejected by __init__ with a clear message
            else:
                raise WorkflowConfigurationError(
                    f"Store URL {redact_url(url)!r}: unknown option {key!r}; use synchronous=, "
                    "busy_timeout=, lease= or deadline=."
                )
        store = cls(unquote(rest[1:]), **options)
        store.url = store._ops.url = url
        return store

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return self._identity

    async def open(self) -> None:
        """Start the database thread, create or migrate the schema. Idempotent."""
        if self._ready:
            return
        writer = self._writer
        if writer is None:
            writer = self._writer = Writer(self.path, self.synchronous, self.busy_timeout)
            writer.thread.start()
            self._closed = False
            self._finalizer = weakref.finalize(self, writer.stop_nowait)
        try:
            await self._call(lambda conn: None, write=False, writer=writer)
        except StoreError:
            if self._writer is writer:  # let a later open() try again
                self._forget(writer)
            raise
        self._ready = self._writer is writer

    async def close(self) -> None:
        """Finish the queued work, close the connection and stop the thread."""
        writer = self._writer
        if writer is None:
            self._closed = True
            return
        self._forget(writer)
        self._closed = True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        try:
            writer.submit(None, False, future)
        except StoreError:
            return  # it never opened
        await future
        # the thread resolved the future as its last act and is returning: joining it takes
        # microseconds, and makes close() leave no thread behind
        writer.thread.join(timeout=1.0)

    def _forget(self, writer: Writer) -> None:
        old = self._stats
        self._stats = (
            old[0] + writer.transactions,
            old[1] + writer.commits,
            old[2] | writer.thread_ids,
        )
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._writer, self._ready = None, False

    @property
    def transactions(self) -> int:
        """Write transactions committed so far (a group commit counts once)."""
        live = self._writer.transactions if self._writer else 0
        return self._stats[0] + live

    @property
    def commits(self) -> int:
        """``commit`` requests applied so far."""
        live = self._writer.commits if self._writer else 0
        return self._stats[1] + live

    @property
    def db_thread_ids(self) -> set[int]:
        """``threading.get_ident()`` of every thread that used the connection."""
        live = self._writer.thread_ids if self._writer else set()
        return self._stats[2] | live

    async def _call(
        self, op: Op, *, write: bool, writer: Writer | None = None, is_commit: bool = False
    ) -> Any:
        if writer is None:
            writer = self._writer
            if writer is None or not self._ready:
                if self._closed:
                    raise StoreError(
                        f"SQLite store {self.path!r} is closed; call `await store.open()` to use it again."
                    )
                await self.open()
                writer = self._writer
                assert writer is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        writer.submit(op, write, future, is_commit)
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
        record, entries, stream = replace(record), list(entries), list(stream)
        result: bool = await self._call(
            lambda c: self._ops.create(c, record, entries, stream, snapshot), write=True
        )
        return result

    async def get(self, run_id: str) -> RunRecord | None:
        result: RunRecord | None = await self._call(lambda c: self._ops.get(c, run_id), write=False)
        return result

    async def get_many(self, run_ids: list[str]) -> dict[str, RunRecord]:
        ids = list(run_ids)
        if not ids:
            return {}
        result: dict[str, RunRecord] = await self._call(
            lambda c: self._ops.get_many(c, ids), write=False
        )
        return result

    async def claim_runnable(
        self, workflows: list[str], now: float, owner: str, lease: float, limit: int
    ) -> list[RunRecord]:
        names = list(dict.fromkeys(workflows))
        if not names or limit <= 0:
            return []
        result: list[RunRecord] = await self._call(
            lambda c: self._ops.claim_runnable(c, names, now, owner, lease, limit), write=True
        )
        return result

    async def claim(self, run_id: str, owner: str, lease: float) -> int | None:
        result: int | None = await self._call(
            lambda c: self._ops.claim(c, run_id, owner, lease), write=True
        )
        return result

    async def load(self, run_id: str) -> Loaded:
        result: Loaded = await self._call(lambda c: self._ops.load(c, run_id), write=False)
        return result

    async def commit(self, request: CommitRequest) -> None:
        # the thread reads ``request`` before this returns: callers must not change it meanwhile
        await self._call(lambda c: self._ops.commit(c, request), write=True, is_commit=True)

    async def renew(self, run_ids: list[tuple[str, int]], owner: str, lease: float) -> list[str]:
        runs = list(run_ids)
        result: list[str] = await self._call(
            lambda c: self._ops.renew(c, runs, owner, lease), write=True
        )
        return result

    async def release(self, runs: list[tuple[str, int]], owner: str) -> None:
        pairs = list(runs)
        if pairs:
            await self._call(lambda c: self._ops.release(c, pairs, owner), write=True)

    async def deliver(
        self, run_id: str, event: str, step: str | None = None, *, limit: int | None = None
    ) -> None:
        check_limit(limit)
        await self._call(lambda c: self._ops.deliver(c, run_id, event, step, limit), write=True)

    async def runnable(self, workflows: list[str], now: float, limit: int = 100) -> list[RunRecord]:
        names = list(workflows)
        result: list[RunRecord] = await self._call(
            lambda c: self._ops.runnable(c, names, now, limit), write=False
        )
        return result

    async def stuck(self, workflows: list[str] | None = None, limit: int = 100) -> list[RunRecord]:
        names = None if workflows is None else list(workflows)
        result: list[RunRecord] = await self._call(
            lambda c: self._ops.stuck(c, names, limit), write=False
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
        result: list[RunRecord] = await self._call(
            lambda c: self._ops.list_runs(c, status, workflow, limit, start, since, until),
            write=False,
        )
        return result

    async def journal(
        self, run_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        after, limit = check_page(after, limit)
        result: list[tuple[int, str]] = await self._call(
            lambda c: self._ops.journal(c, run_id, after, limit), write=False
        )
        return result

    async def prune(self, older_than: float | timedelta) -> int:
        seconds = age_in_seconds(older_than)
        result: int = await self._call(lambda c: self._ops.prune(c, seconds), write=True)
        return result


__all__ = ["SqliteStore", "migrations"]
