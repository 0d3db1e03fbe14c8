"""The stuck-run check behind ``piton.testing``'s autouse fixture.

A stuck run is one nothing will ever move on: not final, held by no live process, with
no armed timer, no waiter and no event in its inbox (``Store.stuck()`` finds them). The
fixture records every store a test creates and, after the test, asks each for its stuck
runs; a test that means to leave one behind is marked ``allow_stuck_runs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from piton.stores.base import Store


@contextlib.contextmanager
def recording_stores() -> Iterator[weakref.WeakSet[Store]]:
    """Within the block, every Store that is created and then opened is remembered
    (weakly), with whether it was closed again (``_piton_closed``)."""
    seen: weakref.WeakSet[Store] = weakref.WeakSet()
    original: Callable[..., None] = Store.__init__

    def init(self: Store, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        opener, closer = self.open, self.close  # the backend's own, bound

        async def open_() -> None:
            await opener()
            seen.add(self)

        async def close_() -> None:
            self.__dict__["_piton_closed"] = True
            await closer()

        self.__dict__["open"], self.__dict__["close"] = open_, close_

    Store.__init__ = init  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Store.__init__ = original  # type: ignore[method-assign]


def _checkable(store: Store) -> bool:
    """A store the test left open; or one whose reopening touches nothing the test
    cleaned up (a memory store, an SQLite file that is still there)."""
    if not store.__dict__.get("_piton_closed"):
        return True
    # a backend never imported made no store: look in sys.modules, load nothing
    memory, sqlite = sys.modules.get("piton.stores.memory"), sys.modules.get("piton.stores.sqlite")
    if memory is not None and isinstance(store, memory.MemoryStore):
        return True
    path = getattr(store, "path", None)
    return (
        sqlite is not None
        and isinstance(store, sqlite.SqliteStore)
        and path is not None
        and os.path.exists(path)
    )


async def _stuck_in(store: Store, since: float) -> list[str]:
    try:
        await store.open()
    except Exception:  # noqa: BLE001 - no longer reachable: nothing to check there
        return []
    try:
        records = await store.stuck(limit=1000)
        return [f"{r.run_id} ({r.workflow})" for r in records if r.updated_at >= since]
    finally:
        with contextlib.suppress(Exception):
            await store.close()


def stuck_report(stores: list[Store], since: float = 0.0) -> str | None:
    """A message naming the runs of ``stores`` that are stuck and were last changed at or
    after ``since`` (a store shared between tests may hold older ones), or None."""
    found: list[str] = []
    for store in stores:
        if not _checkable(store):
            continue
        runs = asyncio.run(_stuck_in(store, since))
        if runs:
            found.append(f"{store.url}: {', '.join(runs)}")
    if not found:
        return None
    return (
        "stuck runs (not final, held by no process, no timer, no waiter, no inbox event): "
        + "; ".join(found)
        + ". Nothing will ever move them: find the promise that broke (DESIGN.md section 2), "
        "or mark the test @pytest.mark.allow_stuck_runs if it leaves them on purpose."
    )


__all__ = ["recording_stores", "stuck_report"]
