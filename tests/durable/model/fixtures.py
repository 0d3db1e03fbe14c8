"""Pytest fixtures shared by tests/durable/test_promises.py and tests/durable/test_model_checker.py
(a test module imports ``made_stores`` to register it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .targets import drop, new_url


@pytest.fixture(scope="session")
def made_stores() -> Iterator[list[str]]:
    """Stores the tests made on shared servers, dropped at the end of the session (after
    piton.testing's no_stuck_runs has looked into each)."""
    urls: list[str] = []
    yield urls
    for url in urls:
        drop(url)


def fresh_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store of the test's own: a SQLite file, a Postgres schema or a Redis prefix
    (skipped, or failed under PITON_REQUIRE_SERVICES=1, when the server is absent)."""
    if kind == "memory":
        return "memory://"
    base = None
    if kind != "sqlite":
        base = request.getfixturevalue(f"{kind}_url")
    url = new_url(kind, tmp_path, base)
    request.getfixturevalue("made_stores").append(url)
    return url
