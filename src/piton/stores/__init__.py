"""Stores keep durable runs. ``open_store(url)`` picks a backend by URL scheme.

``SqliteStore`` (``sqlite:///path.db``) is the embedded default; ``MemoryStore``
(``memory://``) keeps runs in a dict for tests. Postgres and Redis backends come with
the ``piton[postgres]`` and ``piton[redis]`` extras. Each backend is imported on first
use (``piton.stores.base.BACKENDS``): psycopg and redis-py are optional, and a program
that keeps its runs in one store loads no other.
"""

from typing import TYPE_CHECKING, Any

from piton.stores.base import BACKENDS, backend
from piton.stores.base import CommitRequest as CommitRequest
from piton.stores.base import Loaded as Loaded
from piton.stores.base import RunRecord as RunRecord
from piton.stores.base import Store as Store
from piton.stores.base import open_store as open_store

if TYPE_CHECKING:
    from piton.stores.memory import MemoryStore as MemoryStore
    from piton.stores.postgres import PostgresStore as PostgresStore
    from piton.stores.redis import RedisStore as RedisStore
    from piton.stores.sqlite import SqliteStore as SqliteStore

# class name -> "module:Class"
_BACKEND_CLASSES = {spec.partition(":")[2]: spec for spec in BACKENDS.values()}


def __getattr__(name: str) -> Any:
    """The backend classes, imported on first use."""
    spec = _BACKEND_CLASSES.get(name)
    if spec is None:
        raise AttributeError(f"module 'piton.stores' has no attribute {name!r}")
    return backend(spec, name)


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
