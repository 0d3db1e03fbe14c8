"""Keyset paging on every store: ``list_runs(after=run_cursor(...))`` and ``journal(after=)``.

Runs are created with chosen ``created_at`` times (``time.time`` is replaced while they
are created), many of them equal, so the order among ties (run ids by their bytes) and
the cursor's handling of them are tested on each backend.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest

from piton.errors import InvalidCursor, PitonError, RunNotFound, WorkflowConfigurationError
from piton.stores.base import CommitRequest, RunRecord, Store, open_store, run_cursor

# (run id, workflow, status, created_at): ties in created_at, ids whose order by bytes
# differs from a naive one ("R" < "r", "r10" < "r9", "é" after ASCII, a space, a colon)
RUNS = [
    ("r1", "a", "completed", 100.0),
    ("r2", "b", "failed", 100.0),
    ("r10", "a", "failed", 100.0),
    ("r9", "a", "completed", 100.0),
    ("R", "b", "completed", 100.0),
    ("r-é", "a", "completed", 100.0),
    ("has space", "b", "completed", 100.5),
    ("x:y", "a", "failed", 101.0),
    ("x", "a", "completed", 101.0),
    ("x0", "b", "completed", 101.0),
    ("z", "a", "completed", 99.0),
    ("early", "b", "failed", 1.0),
    ("late", "a", "completed", 1e9 + 0.123456),
    ("late2", "a", "completed", 1e9 + 0.123457),
] + [(f"t{i:02}", "a" if i % 3 else "b", "completed", 200.0 + (i // 4)) for i in range(22)]


def expected(
    status: str | None = None,
    workflow: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[str]:
    rows = [
        r
        for r in RUNS
        if (status is None or r[2] == status)
        and (workflow is None or r[1] == workflow)
        and (since is None or r[3] >= since)
        and (until is None or r[3] < until)
    ]
    rows.sort(key=lambda r: (r[3], r[0].encode()), reverse=True)
    return [r[0] for r in rows]


@contextmanager
def clock_at(now: list[float]) -> Iterator[None]:
    """``time.time()`` returns ``now[0]`` meanwhile."""
    real = time.time
    time.time = lambda: now[0]  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time = real  # type: ignore[assignment]


@pytest.fixture
async def store(store_url: str | Store) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.open()
    try:
        now = [0.0]
        for run_id, workflow, status, created_at in RUNS:
            record = RunRecord(run_id=run_id, workflow=workflow, status=status)  # type: ignore[arg-type]
            now[0] = created_at
            with clock_at(now):
                assert await s.create(record, ["e1"], [])
        yield s
    finally:
        await s.close()


async def pages(store: Store, limit: int, **filters: object) -> list[list[str]]:
    found: list[list[str]] = []
    after = None
    while True:
        page = await store.list_runs(limit=limit, after=after, **filters)  # type: ignore[arg-type]
        assert len(page) <= limit
        if not page:
            return found
        found.append([r.run_id for r in page])
        after = run_cursor(page[-1])


async def test_created_at_is_kept_exactly(store: Store) -> None:
    times = {r.run_id: r.created_at for r in await store.list_runs(limit=1000)}
    assert times == {r[0]: r[3] for r in RUNS}


@pytest.mark.parametrize("limit", [1, 3, 4, 1000])
async def test_paging_visits_every_run_once_in_order(store: Store, limit: int) -> None:
    found = await pages(store, limit)
    flat = [run_id for page in found for run_id in page]
    assert flat == expected()
    assert all(len(page) == limit for page in found[:-1])


async def test_the_first_page_is_the_newest(store: Store) -> None:
    assert [r.run_id for r in await store.list_runs(limit=3)] == expected()[:3]
    assert await store.list_runs(limit=0) == []


@pytest.mark.parametrize(
    "filters",
    [
        {"status": "completed"},
        {"status": "failed"},
        {"workflow": "a"},
        {"workflow": "b"},
        {"workflow": "a", "status": "failed"},
        {"workflow": "b", "status": "completed"},
        {"status": "queued"},
        {"workflow": "nope"},
    ],
)
async def test_filters_combine_with_paging(store: Store, filters: dict[str, str]) -> None:
    flat = [run_id for page in await pages(store, 3, **filters) for run_id in page]
    assert flat == expected(**filters)


@pytest.mark.parametrize(
    ("since", "until"),
    [(100.0, None), (None, 100.5), (100.0, 101.0), (100.5, 100.5), (0.0, 1e10), (200.0, 203.0)],
)
async def test_created_after_and_before(store: Store, since: float, until: float) -> None:
    window = {"created_after": since, "created_before": until}
    flat = [run_id for page in await pages(store, 2, **window) for run_id in page]
    assert flat == expected(since=since, until=until)
    flat = [run_id for page in await pages(store, 2, workflow="a", **window) for run_id in page]
    assert flat == expected(workflow="a", since=since, until=until)


async def test_a_cursor_of_a_run_outside_the_filter(store: Store) -> None:
    """The cursor names a place in the order, not a run that must be in the listing: here
    a failed run's cursor continues a listing of completed runs (Redis: not in that index)."""
    records = {r.run_id: r for r in await store.list_runs(limit=1000)}
    for run_id in ("r10", "x:y", "r2"):
        cursor = run_cursor(records[run_id])
        page = await store.list_runs(status="completed", after=cursor, limit=1000)
        everything = expected()
        later = everything[everything.index(run_id) + 1 :]
        assert [r.run_id for r in page] == [i for i in later if i in expected("completed")]


async def test_a_cursor_of_a_missing_run_still_pages(store_url: str | Store) -> None:
    s = open_store(store_url)
    async with s:
        now = [50.0]
        for run_id in ("b", "a", "c"):
            with clock_at(now):
                await s.create(RunRecord(run_id=run_id, workflow="w", status="completed"), [], [])
        records = await s.list_runs(limit=10)
        assert [r.run_id for r in records] == ["c", "b", "a"]
        assert [r.run_id for r in await s.list_runs(after=run_cursor(records[1]))] == ["a"]
        # a cursor of a run that is not (any more) in the store: the same place in the order
        ghost = run_cursor(
            RunRecord(run_id="bb", workflow="w", status="completed", created_at=50.0)
        )
        assert [r.run_id for r in await s.list_runs(after=ghost)] == ["b", "a"]


def _encoded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor!",
        "%%%",
        _encoded(b"no colon"),
        _encoded(b"nan:r1"),
        _encoded(b"inf:r1"),
        _encoded(b"12.5:"),
        _encoded(b"abc:r1"),
        _encoded(b"\xff\xfe:r1"),
    ],
)
async def test_a_bad_cursor_is_refused(store: Store, cursor: str) -> None:
    with pytest.raises(InvalidCursor, match="not a paging cursor") as caught:
        await store.list_runs(after=cursor)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, PitonError)


async def test_a_bad_window_is_refused(store: Store) -> None:
    with pytest.raises(WorkflowConfigurationError, match="created_after"):
        await store.list_runs(created_after="yesterday")  # type: ignore[arg-type]


def test_cursors_round_trip_any_run_id() -> None:
    from piton.stores.base import parse_cursor

    for run_id in ("r", "a:b:c", "é ü/?&=", "x" * 300, "1.5:2"):
        for created_at in (0.0, 1e9 + 0.123456789, 1.7e9, 5e-324):
            record = RunRecord(run_id=run_id, workflow="w", status="queued", created_at=created_at)
            cursor = run_cursor(record)
            assert cursor.replace("-", "").replace("_", "").isalnum()
            assert parse_cursor(cursor) == (created_at, run_id)


# --- journal --------------------------------------------------------------------------------


async def test_journal_pages(store_url: str | Store) -> None:
    s = open_store(store_url)
    async with s:
        entries = [f'{{"n": {n}}}' for n in range(1, 2501)]
        record = RunRecord(run_id="long", workflow="w", status="running", owner="me", epoch=1)
        assert await s.create(record, entries, [])
        got: list[tuple[int, str]] = []
        after = 0
        while page := await s.journal("long", after=after, limit=700):
            assert len(page) <= 700
            got += page
            after = page[-1][0]
        assert got == list(enumerate(entries, start=1))
        assert await s.journal("long") == got[:1000]
        assert await s.journal("long", after=2499) == [(2500, entries[-1])]
        assert await s.journal("long", after=2500) == []
        assert await s.journal("long", after=10_000) == []
        assert await s.journal("long", after=10, limit=0) == []
        assert await s.journal("long", after=-5, limit=2) == got[:2]
        # a snapshot covers entries up to 2502: load starts after it, the history stays
        await s.commit(CommitRequest("long", 1, 2500, ["e2501", "e2502"], snapshot="S"))
        await s.commit(CommitRequest("long", 1, 2502, ["e2503", "e2504"], status="completed"))
        loaded = await s.load("long")
        assert (loaded.snapshot, loaded.snapshot_seq) == ("S", 2502)
        assert loaded.entries == [(2503, "e2503"), (2504, "e2504")]
        assert await s.journal("long", after=2500) == [
            (2501, "e2501"), (2502, "e2502"), (2503, "e2503"), (2504, "e2504")
        ]  # fmt: skip
        assert await s.journal("long", after=2503) == [(2504, "e2504")]
        assert await s.journal("long", after=100, limit=1) == [(101, entries[100])]
        assert await s.journal("long") == got[:1000]


async def test_journal_of_a_missing_run(store_url: str | Store) -> None:
    s = open_store(store_url)
    async with s:
        with pytest.raises(RunNotFound, match="nope"):
            await s.journal("nope")
        assert await s.create(RunRecord(run_id="empty", workflow="w", status="queued"), [], [])
        assert await s.journal("empty") == []


async def test_journal_refuses_what_is_not_a_number(store_url: str | Store) -> None:
    s = open_store(store_url)
    async with s:
        with pytest.raises(WorkflowConfigurationError, match="after"):
            await s.journal("x", after="3")  # type: ignore[arg-type]
