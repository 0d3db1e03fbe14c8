"""Shared fixtures. Tests that need Postgres or Redis skip when the server is absent,
unless PITON_REQUIRE_SERVICES=1 (set by CI), which turns the skip into a failure."""

from __future__ import annotations

import os
import socket

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
