"""``piton runs`` and ``piton show`` a page at a time, run as real subprocesses against
SQLite and PostgreSQL: each prints the command of the next page, which shows the rest."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from piton.stores.base import CommitRequest, RunRecord, open_store

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's store: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    base = request.getfixturevalue("postgres_url")
    return f"{base}?schema={request.getfixturevalue('postgres_schema')}"


def piton(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="250", PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    env.pop("PITON_STORE", None)
    return subprocess.run(
        [sys.executable, "-m", "piton", *args], capture_output=True, text=True, env=env, timeout=60
    )


def seed(url: str, runs: list[tuple[str, str, str, float]]) -> None:
    """Create runs (id, workflow, status, created_at); created_at is set by the store from
    ``time.time()``, which returns the given time meanwhile."""

    async def main() -> None:
        store = open_store(url)
        async with store:
            for run_id, workflow, status, created_at in runs:
                real = time.time
                time.time = lambda: created_at  # type: ignore[assignment]  # noqa: B023
                try:
                    record = RunRecord(run_id=run_id, workflow=workflow, status=status)  # type: ignore[arg-type]
                    assert await store.create(record, ['{"k": "Begin"}'], [])
                finally:
                    time.time = real  # type: ignore[assignment]

    asyncio.run(main())


def next_page(out: str) -> list[str] | None:
    """The arguments of the "Next page: piton ..." line, without ``piton``."""
    found = re.findall(r"^Next page: piton (.*)$", out, re.MULTILINE)
    assert len(found) <= 1, out
    return shlex.split(found[0]) if found else None


def table_ids(out: str, known: set[str]) -> list[str]:
    ids = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if cells and cells[0] in known:
            ids.append(cells[0])
    return ids


def test_runs_pages_through_every_run_once(url: str) -> None:
    now = time.time()
    # 23 runs, ties in created_at by fours
    runs = [
        (f"run-{i:02}", "W" if i % 2 else "V", "completed", now - 100 + i // 4) for i in range(23)
    ]
    seed(url, runs)
    order = [r[0] for r in sorted(runs, key=lambda r: (r[3], r[0]), reverse=True)]
    seen: list[str] = []
    args: list[str] | None = ["runs", "--limit", "5"]
    pages = 0
    while args is not None:
        out = piton(*args, "--store", url)
        assert out.returncode == 0, out.stderr
        seen += table_ids(out.stdout, set(order))
        args = next_page(out.stdout)
        pages += 1
        assert args is None or args[:3] == ["runs", "--limit", "5"], args
    assert seen == order and pages == 5  # 5+5+5+5+3: no empty last page
    # the same with --json: each run carries its cursor
    seen, after = [], None
    while True:
        extra = [] if after is None else ["--after", after]
        out = piton("runs", "--store", url, "--workflow", "W", "--limit", "4", "--json", *extra)
        assert out.returncode == 0, out.stderr
        page = json.loads(out.stdout)
        if not page:
            break
        seen += [r["run_id"] for r in page]
        after = page[-1]["cursor"]
    assert seen == [i for i in order if int(i[-2:]) % 2]


def test_runs_default_page_is_50(url: str) -> None:
    now = time.time()
    seed(url, [(f"r{i:03}", "W", "completed", now - i) for i in range(60)])
    out = piton("runs", "--store", url)
    assert out.returncode == 0, out.stderr
    assert len(table_ids(out.stdout, {f"r{i:03}" for i in range(60)})) == 50
    args = next_page(out.stdout)
    assert args is not None and args[0] == "runs" and "--limit" not in args
    rest = piton(*args, "--store", url)
    assert table_ids(rest.stdout, {f"r{i:03}" for i in range(60)}) == [
        f"r{i:03}" for i in range(50, 60)
    ]
    assert next_page(rest.stdout) is None


def test_runs_since_and_before(url: str) -> None:
    now = time.time()
    seed(
        url,
        [
            ("new", "W", "completed", now - 60),
            ("hour-old", "W", "failed", now - 5400),
            ("day-old", "W", "completed", now - 2 * 86400),
        ],
    )

    def ids(*args: str) -> list[str]:
        out = piton("runs", "--store", url, "--json", *args)
        assert out.returncode == 0, out.stderr
        return [r["run_id"] for r in json.loads(out.stdout)]

    assert ids("--since", "1h") == ["new"]
    assert ids("--since", "1d") == ["new", "hour-old"]
    assert ids("--before", "1h") == ["hour-old", "day-old"]
    assert ids("--before", "1h", "--since", "1d") == ["hour-old"]
    assert ids("--before", "1h", "--status", "completed") == ["day-old"]
    assert ids("--before", "7d") == []
    # the filters are kept in the next page's command
    out = piton("runs", "--store", url, "--before", "1m", "--limit", "1", "--status", "completed")
    args = next_page(out.stdout)
    assert args is not None and args[:3] == ["runs", "--status", "completed"], args
    assert "--before" in args and "--limit" in args
    assert table_ids(piton(*args, "--store", url).stdout, {"new", "day-old"}) == ["day-old"]


def test_runs_refuses_a_bad_cursor_or_age(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    out = piton("runs", "--store", url, "--after", "not-a-cursor")
    assert out.returncode == 2 and "not a paging cursor" in out.stderr
    out = piton("runs", "--store", url, "--since", "yesterday")
    assert out.returncode == 2 and "not a duration" in out.stderr


def _entry(n: int) -> str:
    tree: dict[str, object] = {"k": "StepDone", "at": 1_700_000_000 + n, "exec_id": f"x{n}"}
    if n % 2:  # written by a piton that records the step and its duration
        tree |= {"step": f"step_{n}", "took": 1.5}
    return json.dumps(tree)


def test_show_pages_the_journal(url: str) -> None:
    async def make() -> None:
        store = open_store(url)
        async with store:
            record = RunRecord(run_id="long", workflow="W", status="running", owner="me", epoch=1)
            assert await store.create(record, [_entry(n) for n in range(1, 451)], [])

    asyncio.run(make())
    out = piton("show", "long", "--store", url, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [row["seq"] for row in data["timeline"]] == list(range(1, 201))
    assert data["next_after"] == 200 and data["snapshot_seq"] == 0 and data["seq"] == 450
    assert data["timeline"][0]["step"] == "step_1" and data["timeline"][0]["took"] == 1.5
    assert data["timeline"][1]["step"] is None and data["timeline"][1]["took"] is None
    seen, args = [], ["show", "long", "--limit", "120"]
    while True:
        page = piton(*args, "--store", url)
        assert page.returncode == 0, page.stderr
        seen += [int(m) for m in re.findall(r"^│ (\d+) ", page.stdout, re.MULTILINE)]
        following = next_page(page.stdout)
        if following is None:
            break
        assert following[:4] == ["show", "long", "--limit", "120"], following
        args = following
    assert seen == list(range(1, 451))
    text = piton("show", "long", "--store", url, "--after", "440").stdout
    assert "step_441" in text and "1.5s" in text and "entries 441..450 of 450" in text
    assert next_page(text) is None
    last = json.loads(piton("show", "long", "--store", url, "--after", "440", "--json").stdout)
    assert [row["seq"] for row in last["timeline"]] == list(range(441, 451))
    assert "next_after" not in last


def drop_journal_prefix(url: str, run_id: str, upto: int) -> None:
    """Delete the run's journal entries 1..upto, as a snapshot of an older piton did."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///") :]) as db:
            db.execute("DELETE FROM journal WHERE run_id = ? AND seq <= ?", (run_id, upto))
        return
    import psycopg

    base, _, query = url.partition("?")
    schema = dict(parse_qsl(query))["schema"]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("DELETE FROM journal WHERE run_id = %s AND seq <= %s", (run_id, upto))


def test_show_says_which_entries_are_not_kept(url: str) -> None:
    async def make() -> None:
        store = open_store(url)
        async with store:
            record = RunRecord(run_id="snap", workflow="W", status="running", owner="me", epoch=1)
            assert await store.create(record, [_entry(n) for n in range(1, 11)], [])
            await store.commit(CommitRequest("snap", 1, 10, [_entry(11)], snapshot="{}"))
            await store.commit(CommitRequest("snap", 1, 11, [_entry(12)], status="completed"))

    asyncio.run(make())
    drop_journal_prefix(url, "snap", 11)
    data = json.loads(piton("show", "snap", "--store", url, "--json").stdout)
    assert data["snapshot_seq"] == 11 and [row["seq"] for row in data["timeline"]] == [12]
    text = piton("show", "snap", "--store", url).stdout
    assert "entries 1..11 are " in text and "entries 12..12 of 12" in text
    assert "entries 1..11 are " not in piton("show", "snap", "--store", url, "--after", "11").stdout
    out = piton("show", "snap", "--store", url, "--after", "-1")
    assert out.returncode == 2
