"""Shared fixtures. Tests that need Postgres or Redis skip when the server is absent,
unless PITON_REQUIRE_SERVICES=1 (set by CI), which turns the skip into a failure."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

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
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix nobody uses; every key under it is deleted afterwards."""
    name = f"piton_test_{uuid.uuid4().hex[:12]}"
    yield name
    drop_redis_keys(redis_url, name)
