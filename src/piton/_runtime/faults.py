"""Fault-injection points for crash tests, set through ``piton.testing``.

The runtime calls ``after_commit()`` right after each commit is durable and before the
run in memory learns of it: the window between the database and the process's view.
Nothing here reads the environment; a test program arms a hook explicitly.
"""

from __future__ import annotations

from collections.abc import Callable

_after_commit: list[Callable[[], None]] = []


def after_commit() -> None:
    for hook in _after_commit:
        hook()


def add_after_commit(hook: Callable[[], None]) -> None:
    _after_commit.append(hook)


def clear() -> None:
    _after_commit.clear()


__all__ = ["add_after_commit", "after_commit", "clear"]
