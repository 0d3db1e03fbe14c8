"""What the stores on a database server (PostgreSQL, Redis) share: an engine per event
loop, and a lifecycle that opens the store on first use.

A server store keeps its connections per event loop: a connection belongs to the loop
that opened it, and ``run_sync`` runs each call on a fresh loop. ``Engines`` maps each
loop to the store's engine there (its connections, its group-commit writer), and keeps
what the engines it retired (their loop ended, or the store closed) had counted, so a
store's ``transactions`` and ``commits`` cover every write it made. ``ServerStore`` is
the base class of those stores.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from typing import Any, Generic, Protocol, TypeVar

from piton.errors import StoreError
from piton.stores._batching import BatchWriter
from piton.stores.base import Store


class _Engine(Protocol):
    @property
    def writer(self) -> BatchWriter[Any]: ...


E = TypeVar("E", bound=_Engine)


class Engines(Generic[E]):
    """The engine of each event loop a store is used on. Holds no reference to the store,
    so a finalizer may hold it."""

    def __init__(self) -> None:
        self.by_loop: dict[asyncio.AbstractEventLoop, E] = {}
        self._transactions = 0  # counted by the engines retired so far
        self._commits = 0

    def get(self, loop: asyncio.AbstractEventLoop) -> E | None:
        return self.by_loop.get(loop)

    def add(self, loop: asyncio.AbstractEventLoop, engine: E) -> None:
        self.by_loop[loop] = engine

    def items(self) -> list[tuple[asyncio.AbstractEventLoop, E]]:
        return list(self.by_loop.items())

    def ended(self) -> list[asyncio.AbstractEventLoop]:
        """The loops that were closed: ``run_sync``'s loops end for good."""
        return [loop for loop in self.by_loop if loop.is_closed()]

    def retire(self, loop: asyncio.AbstractEventLoop) -> E:
        """Drop the engine of ``loop``, keeping its counts; the caller closes it."""
        engine = self.by_loop.pop(loop)
        self._transactions += engine.writer.transactions
        self._commits += engine.writer.commits
        return engine

    def forget(self, engine: E) -> None:
        """Retire ``engine``, whichever loop it serves (it closed itself)."""
        for loop, known in self.items():
            if known is engine:
                self.retire(loop)

    @property
    def transactions(self) -> int:
        """Write transactions (or round trips) so far: a group commit counts once."""
        live = sum(engine.writer.transactions for engine in self.by_loop.values())
        return self._transactions + live

    @property
    def commits(self) -> int:
        """``commit`` requests applied so far."""
        return self._commits + sum(engine.writer.commits for engine in self.by_loop.values())


class ServerStore(Store, Generic[E]):
    """A store on a database server: an engine per event loop (``self._engines``), opened
    on first use. A subclass sets ``where`` (names the store in messages) and
    ``_identity``, and implements ``_start``."""

    where: str
    _identity: str

    def __init__(self) -> None:
        super().__init__()
        self._engines: Engines[E] = Engines()
        self._ready = False  # open() succeeded, and close() was not called since
        self._closed = False

    @property
    def identity(self) -> str:
        """Host, port, database and schema (or key prefix): store objects with one
        identity hold the same runs."""
        return self._identity

    @property
    def transactions(self) -> int:
        """Write transactions (Redis: pipelines of scripts) so far: a group commit counts once."""
        return self._engines.transactions

    @property
    def commits(self) -> int:
        """``commit`` requests applied so far."""
        return self._engines.commits

    async def open(self) -> None:
        """Connect, and create, migrate or check the schema. Idempotent."""
        if self._ready:
            return
        self._closed = False
        await self._start()
        self._ready = True

    @abstractmethod
    async def _start(self) -> None:
        """Open's work: connect, and create, migrate or check the schema."""

    async def _opened(self) -> None:
        """Open the store on first use; a store that ``close()`` closed stays closed."""
        if not self._ready:
            if self._closed:
                raise StoreError(
                    f"{self.where} is closed; call `await store.open()` to use it again."
                )
            await self.open()


__all__ = ["Engines", "ServerStore"]
