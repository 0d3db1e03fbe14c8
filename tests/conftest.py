"""Shared fixtures. Tests that need Postgres or Redis skip when the server is absent,
unless PITON_REQUIRE_SERVICES=1 (set by CI), which turns the skip into a failure.

``store_url`` runs a test once per backend (memory, sqlite, postgres, redis), each time in
a store of its own. What a test leaves on a shared server (a Postgres schema, Redis keys
under a prefix) is deleted after the test's fixtures are torn down, so the autouse
``no_stuck_runs`` check still sees it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from piton.stores import MemoryStore, Store
from piton.testing import no_stuck_runs  # noqa: F401 - autouse: no test leaves a stuck run

REQUIRE_SERVICES = os.environ.get("PITON_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and PITON_REQUIRE_SERVICES=1")
    pytest.skip(f"{message}; start it to run this test")


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def postgres_url() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql://postgres@127.0.0.1:5432/test"


_CLEANUPS = pytest.StashKey[list[Callable[[], None]]]()


def after_test(request: pytest.FixtureRequest, cleanup: Callable[[], None]) -> None:
    """Call ``cleanup`` once the test is over, after every fixture's teardown: after the
    autouse ``no_stuck_runs`` has looked into the test's stores, which needs them intact
    (a fixture's own teardown would run before it)."""
    request.node.stash.setdefault(_CLEANUPS, []).append(cleanup)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        cleanups: list[Callable[[], None]] = item.stash.get(_CLEANUPS, [])
        for cleanup in reversed(cleanups):
            cleanup()


def _fresh_name() -> str:
    return f"piton_test_{uuid.uuid4().hex[:12]}"


def drop_postgres_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it (what a test's PostgresStore made)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (what a test's RedisStore made)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix(redis_url: str, request: pytest.FixtureRequest) -> str:
    """A Redis key prefix nobody uses; every key under it is deleted after the test."""
    name = _fresh_name()
    after_test(request, lambda: drop_redis_keys(redis_url, name))
    return name


@pytest.fixture
def postgres_schema(postgres_url: str, request: pytest.FixtureRequest) -> str:
    """A Postgres schema name nobody uses; the schema is dropped after the test."""
    name = _fresh_name()
    after_test(request, lambda: drop_postgres_schema(postgres_url, name))
    return name


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | Store:
    """The test's own store, on each backend in turn: ``sqlite:///<tmp_path>/runs.db``,
    ``postgresql://...?schema=<fresh>``, ``redis://...?prefix=<fresh>``.

    For memory it is one ``MemoryStore`` object rather than ``memory://``, which opens a
    new, empty store each time: the test's workflows and ``open_store(store_url)`` must all
    see the same runs, as they do through a URL. ``Workflow(store=)`` and ``open_store()``
    take either. A memory store cannot be shared with another process: a test that spawns
    one skips memory.
    """
    kind = request.param
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return "sqlite:///" + str(tmp_path / "runs.db")
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        return f"{url}?schema={request.getfixturevalue('postgres_schema')}"
    url = request.getfixturevalue("redis_url")
    return f"{url}?prefix={request.getfixturevalue('redis_prefix')}"
