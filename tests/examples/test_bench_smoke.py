"""bench/durable.py and bench/postgres.py run end to end (``--smoke``: tiny workloads, one
repetition).

They measure nothing here; they must only run, report what they promise and clean up. CI
installs only '.[dev]', so the DBOS part runs only where dbos is installed; bench/postgres.py
needs a PostgreSQL server (the ``postgres_url`` fixture skips without one).
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
