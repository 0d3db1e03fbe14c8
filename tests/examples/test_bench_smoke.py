"""bench/durable.py, bench/postgres.py, bench/workers.py and bench/parked_pg.py run end to
end (``--smoke``: tiny workloads, one repetition).

They measure nothing here; they must only run, report what they promise and clean up. CI
installs only '.[dev]', so the DBOS part runs only where dbos is installed; bench/postgres.py
and bench/parked_pg.py need a PostgreSQL server, bench/workers.py also a Redis server (the
``postgres_url`` and ``redis_url`` fixtures skip without them).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "durable.py"
HAS_DBOS = importlib.util.find_spec("dbos") is not None


def run_bench(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "figures.json"
    databases = tmp_path / "db"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--smoke",
            "--concurrency",
            "1,4",
            "--dir",
            str(databases),
            "--json",
            str(out),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"bench/durable.py exited with {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    assert list(databases.iterdir()) == []  # its temporary directory is gone
    return proc.stdout, json.loads(out.read_text())


def check_piton(stdout: str, figures: dict[str, Any]) -> None:
    for key in ("cpu", "cores", "python", "piton", "date", "load average", "databases in"):
        assert key in figures["machine"]
    assert "load average at the end" in stdout
    medians = {row["key"]: row["median"] for row in figures["table"]}
    assert medians["floor_us"] > 0
    assert medians["memory_us_step"] > 0
    assert figures["modes"] == ["fast", "strict"]
    done, total = figures["notes"]["piton_runs_completed"]
    assert done == total > 0
    acc = figures["accounting"]
    for mode in ("fast", "strict"):  # both durability modes are measured and judged
        for key in ("us_step", "us_txn", "c1_steps_s", "c4_steps_s"):
            assert medians[f"piton_{mode}_{key}"] > 0, (mode, key)
        assert acc[f"piton_{mode}_entries_per_run"] >= 10  # one journal entry per step at least
        assert acc[f"piton_{mode}_txn_per_run"] >= 1
        for goal in ("step_over_floor_at_most_2", "scale_at_least_5"):
            assert figures["goals"][f"piton_{mode}_{goal}"] in (True, False)
        assert figures["ratios"][f"piton_{mode}_c4_over_floor_rate"] > 0
    check_goals_table(stdout)


def check_goals_table(stdout: str) -> None:
    """The goals, side by side for the two modes, each with a verdict."""
    lines = stdout.splitlines()
    head = lines.index(
        'goals for each durability mode ("fast" is the default; no verdict: no goal):'
    )
    assert lines[head + 1].split() == ["ratio", "fast", "strict"]
    goal = next(line for line in lines[head:] if line.startswith("piton step / floor commit"))
    assert len([word for word in goal.split() if word in ("PASS", "FAIL")]) == 2


def test_durable_bench_runs_without_dbos(tmp_path: Path) -> None:
    stdout, figures = run_bench(tmp_path, "--no-dbos")
    check_piton(stdout, figures)
    assert figures["dbos"] == []
    assert "DBOS: not measured" in stdout


@pytest.mark.skipif(not HAS_DBOS, reason="dbos is not installed (pip install -e '.[bench]')")
def test_durable_bench_runs_with_dbos(tmp_path: Path) -> None:
    stdout, figures = run_bench(tmp_path)
    check_piton(stdout, figures)
    assert figures["dbos"] == ["dbos", "dbos-wal"]
    medians = {row["key"]: row["median"] for row in figures["table"]}
    for name in ("dbos", "dbos-wal"):
        assert medians[f"{name}_us_step"] > 0
        assert medians[f"{name}_c4_steps_s"] > 0
        for mode in ("fast", "strict"):
            assert figures["goals"][f"{name}_over_piton_{mode}_at_least_3"] in (True, False)
        # DBOS really checkpointed every step of every workflow the benchmark ran
        cp = figures["notes"][f"{name}_checkpoints"]
        assert cp["step_rows"] == 10 * cp["workflows_succeeded"] > 0
    assert figures["notes"]["dbos_audit"]["step_rows"] == 10
    assert "journal_mode=wal" in figures["notes"]["dbos-wal_journal"]
    assert figures["notes"]["dbos_api"] in ("sync", "async")


def test_postgres_bench_runs(tmp_path: Path, postgres_url: str) -> None:
    pytest.importorskip("psycopg")
    import psycopg

    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "postgres.py"),
            "--smoke",
            "--url",
            postgres_url,
            "--concurrency",
            "1,4",
            "--json",
            str(out),
            *([] if HAS_DBOS else ["--no-dbos"]),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"bench/postgres.py exited with {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    figures = json.loads(out.read_text())
    for key in ("cpu", "python", "piton", "load average", "pg synchronous_commit", "pg fsync"):
        assert key in figures["machine"]
    assert "load average at the end" in proc.stdout
    medians = {row["key"]: row["median"] for row in figures["table"]}
    assert medians["floor_us"] > 0
    done, total = figures["notes"]["piton_runs_completed"]
    # a run stopped by a spurious LeaseLost is left 'running' (see PgPiton.concurrent)
    assert done + len(figures["notes"]["piton_lease_lost"]) == total > 0
    for mode in ("fast", "strict"):
        for key in ("us_step", "us_txn", "c1_steps_s", "c4_steps_s"):
            assert medians[f"piton_{mode}_{key}"] > 0, (mode, key)
        assert figures["accounting"][f"piton_{mode}_entries_per_run"] >= 10
        assert figures["goals"][f"piton_{mode}_step_over_floor_at_most_2"] in (True, False)
        assert figures["ratios"][f"piton_{mode}_c4_over_floor_rate"] > 0
    check_goals_table(proc.stdout)
    if HAS_DBOS:
        assert medians["dbos_us_step"] > 0 and medians["dbos_c4_steps_s"] > 0
        cp = figures["notes"]["dbos_checkpoints"]
        assert cp["step_rows"] == 10 * cp["workflows_succeeded"] > 0
    # its scratch schemas are gone
    dropped = figures["notes"]["schemas_dropped"]
    assert len(dropped) == (3 if HAS_DBOS else 2)
    with psycopg.connect(postgres_url) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (dropped,)
        ).fetchall()
    assert left == []


def run_script(name: str, tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """Run bench/<name> with ``args`` and ``--json``; fail with its output if it fails."""
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"bench/{name} exited with {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout, json.loads(out.read_text())


def schemas_left(postgres_url: str, prefix: str) -> list[Any]:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        return conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (prefix + "%",)
        ).fetchall()


def test_workers_bench_runs(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    """bench/workers.py: worker processes on both stores, the floors, the in-process
    steps and (where installed) DBOS; it removes its schema and its Redis keys."""
    pytest.importorskip("psycopg")
    redis = pytest.importorskip("redis")
    stdout, figures = run_script(
        "workers.py", tmp_path, "--smoke", "--fleets", "1x2,2x2", "--runs", "1,5",
        "--postgres-url", postgres_url, "--redis-url", redis_url,
        *([] if HAS_DBOS else ["--no-dbos"]),
    )  # fmt: skip
    medians = figures["medians"]
    for store in ("postgres", "redis"):
        assert medians[f"{store}_floor_us"] > 0
        for mode in ("fast", "strict"):
            assert medians[f"{store}_{mode}_us_step"] > 0
        for shape in ("1x2", "2x2"):  # processes x concurrency
            for runs in (1, 5):
                key = f"{store}_{shape}_n{runs}"
                assert medians[f"{key}_steps_s"] > 0, key
                assert medians[f"{key}_cpu_workers"] >= 0, key
        # 5 runs > concurrency 2: the work spreads, so "2 workers / 1" has its goal
        assert figures["goals"][f"{store}_2x2_over_1x2_n5"] in (True, False)
        assert figures["ratios"][f"{store}_1x2_n5_over_n1"] > 0
    assert figures["goals"]["postgres_strict_over_floor"] in (True, False)
    if HAS_DBOS:
        assert medians["dbos_us_step"] > 0
        assert figures["goals"]["postgres_dbos_over_strict"] in (True, False)
    assert "load average at the end" in stdout
    # its scratch schema and its Redis keys are gone
    prefix = figures["machine"]["scratch"].split()[1]
    assert schemas_left(postgres_url, prefix) == []
    assert list(redis.Redis.from_url(redis_url).scan_iter(match=f"{prefix}:*")) == []


def test_parked_pg_bench_runs(tmp_path: Path, postgres_url: str) -> None:
    """bench/parked_pg.py: bulk-loaded parked runs, real runs parked and woken by a worker
    process, the query plans; it drops its schema."""
    pytest.importorskip("psycopg")
    stdout, figures = run_script("parked_pg.py", tmp_path, "--smoke", "--url", postgres_url)
    for state in ("empty", "loaded"):
        assert figures["medians"][state]["wake_ms_median"] > 0
    assert figures["read_back"] > 0
    assert figures["worker_exit"] == [0]
    titles = [title for title, _ in figures["plans"]]
    assert any(t.startswith("claim_runnable") for t in titles) and len(titles) == 6
    assert all("Index" in plan for _, plan in figures["plans"])
    assert figures["rss"]
    assert schemas_left(postgres_url, figures["dropped"][0]) == []
    assert "sequential scans in those plans" in stdout
