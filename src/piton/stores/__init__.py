"""Stores keep durable runs. ``open_store(url)`` picks a backend by URL scheme.

``SqliteStore`` (``sqlite:///path.db``) is the embedded default; ``MemoryStore``
(``memory://``) keeps runs in a dict for tests. Postgres and Redis backends come with
the ``piton[postgres]`` and ``piton[redis]`` extras.
"""

from typing import Any

from piton.stores.base import CommitRequest as CommitRequest
from piton.stores.base import Loaded as Loaded
from piton.stores.base import RunRecord as RunRecord
from piton.stores.base import Store as Store
from piton.stores.base import open_store as open_store
from piton.stores.memory import MemoryStore as MemoryStore
from piton.stores.sqlite import SqliteStore as SqliteStore


def __getattr__(name: str) -> Any:
    """``PostgresStore`` and ``RedisStore`` are imported on first use: psycopg and redis-py
    are optional dependencies."""
    if name == "PostgresStore":
        from piton.stores.postgres import PostgresStore

        return PostgresStore
    if name == "RedisStore":
        from piton.stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module 'piton.stores' has no attribute {name!r}")


__all__ = [
    "CommitRequest",
    "Loaded",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "RunRecord",
    "SqliteStore",
    "Store",
    "open_store",
]
