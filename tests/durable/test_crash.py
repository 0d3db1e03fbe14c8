"""Crash tests with real processes: SIGKILL a durable run at random moments and resume it.

The workflow lives in tests/durable/crash_workflow.py (fan-out to 4 workers, a retried step, a
collect step, a ``ctx.checkpoint()`` loop). Each trial is seeded, so a failure can be
reproduced with the seed it names.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("crash_workflow.py")
sys.path.insert(0, str(SCRIPT.parent))
import crash_workflow as cw  # noqa: E402

pytestmark = pytest.mark.slow


def _spawn(
    mode: str, db: Path | str, run_id: str, effects: Path, **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, str(db), run_id, str(effects)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err}"
    return out.strip().splitlines()[-1]


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def _lines(effects: Path) -> list[str]:
    return effects.read_text().splitlines() if effects.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, set[str]]:
    """An uninterrupted run: its result and its side-effect lines (each exactly once)."""
    base = tmp_path_factory.mktemp("reference")
    effects = base / "effects.txt"
    out = _finish(_spawn("run", base / "runs.db", "ref", effects))
    lines = _lines(effects)
    assert len(lines) == len(set(lines)), lines
    return json.loads(out), set(lines)


# PITON_CRASH_TRIALS=200 for a long soak; CI runs the first 8 seeds
TRIALS = int(os.environ.get("PITON_CRASH_TRIALS") or 8)


@pytest.mark.parametrize("seed", range(1, TRIALS + 1))
def test_random_kills_resume_to_the_same_result(
    seed: int, tmp_path: Path, reference: tuple[Any, set[str]]
) -> None:
    _random_kills(seed, str(tmp_path / "runs.db"), tmp_path / "effects.txt", reference)


@pytest.mark.parametrize("seed", [101, 102, 103])
def test_random_kills_on_postgres(
    seed: int, tmp_path: Path, postgres_url: str, reference: tuple[Any, set[str]]
) -> None:
    import psycopg
    from psycopg import sql

    schema = f"piton_crash_{seed}_{os.getpid()}"
    try:
        target = f"{postgres_url}?schema={schema}"
        _random_kills(seed, target, tmp_path / "effects.txt", reference)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize("seed", [201, 202, 203])
def test_random_kills_on_redis(
    seed: int, tmp_path: Path, redis_url: str, reference: tuple[Any, set[str]]
) -> None:
    import redis

    prefix = f"piton_crash_{seed}_{os.getpid()}"
    try:
        _random_kills(seed, f"{redis_url}?prefix={prefix}", tmp_path / "effects.txt", reference)
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _random_kills(seed: int, db: str, effects: Path, reference: tuple[Any, set[str]]) -> None:
    """Kill the run 2-3 times at random moments, then let it finish; compare with the reference."""
    expected_result, expected_lines = reference
    rng = random.Random(seed)
    run_id = f"trial-{seed}"
    kills = rng.randint(2, 3)
    for n in range(kills):
        proc = _spawn("run", db, run_id, effects)
        time.sleep(rng.uniform(0.2, 1.1))
        _kill(proc)
        if n == 0:  # the first kill lands mid-run (an uninterrupted run takes ~1.3 s)
            assert "finish:finish" not in _lines(effects), f"seed {seed}"
    result = json.loads(_finish(_spawn("run", db, run_id, effects)))
    assert result == expected_result, f"seed {seed}"

    lines = _lines(effects)
    counts = Counter(lines)
    assert set(counts) <= expected_lines | {"flaky:attempt-0", "flaky:attempt-1"}, f"seed {seed}"
    # every step body ran to completion at least once
    assert expected_lines - {"flaky:attempt-0"} <= set(counts), f"seed {seed}"
    # a body whose completion was committed never ran again: repeats come only from
    # executions in flight at a kill, at most num_workers of a step per kill
    for name, workers in cw.NUM_WORKERS.items():
        mine = {k: c for k, c in counts.items() if k.split(":")[0] in (name, f"{name}-iter")}
        extra = sum(c - 1 for c in mine.values())
        assert extra <= workers * kills, f"seed {seed}: step {name} repeated {mine}"
        assert all(c <= 1 + kills for c in mine.values()), f"seed {seed}: {mine}"

    # a finished run is never started again
    again = json.loads(_finish(_spawn("run", db, run_id, effects)))
    assert again == expected_result
    assert _lines(effects) == lines


def test_kill_while_parked_then_another_process_sends_the_event(tmp_path: Path) -> None:
    db, effects = tmp_path / "runs.db", tmp_path / "effects.txt"
    proc = _spawn("park", db, "parked-1", effects)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "parked"
    finally:
        _kill(proc)
    assert _lines(effects) == ["prepare:prepare"]

    result = json.loads(_finish(_spawn("send", db, "parked-1", effects)))
    assert result == "7:yes"
    assert _lines(effects) == ["prepare:prepare", "ask:ask"]


def _committed_bodies(db: Path, run_id: str) -> int:
    """Step bodies whose end is committed: StepDone, StepFailed, and checkpoints of a step."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT entry FROM journal WHERE run_id = ?", (run_id,)).fetchall()
    count = 0
    for (text,) in rows:
        entry = json.loads(text)
        if entry["k"] in ("StepDone", "StepFailed"):
            count += 1
        elif entry["k"] == "Checkpoint" and entry.get("exec_id"):
            count += 1
    return count


@pytest.mark.parametrize("after", [1, 2, 4, 7, 10, 13])
def test_crash_between_commit_and_memory_update(
    after: int, tmp_path: Path, reference: tuple[Any, set[str]]
) -> None:
    """The process dies right after its Nth commit is durable, before it acts on it."""
    expected_result, expected_lines = reference
    db, effects, run_id = tmp_path / "runs.db", tmp_path / "effects.txt", f"fault-{after}"
    proc = _spawn("run", db, run_id, effects, PITON_TEST_CRASH_AFTER_COMMIT=str(after))
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the fault hook did not fire"
    before = _lines(effects)
    in_flight = len(before) - _committed_bodies(db, run_id)
    assert in_flight >= 0

    result = json.loads(_finish(_spawn("run", db, run_id, effects)))
    assert result == expected_result
    lines = _lines(effects)
    assert set(lines) - {"flaky:attempt-1"} <= expected_lines | {"flaky:attempt-0"}
    # only bodies that had run but whose end was not yet committed may run again
    repeats = len(lines) - len(set(lines))
    assert repeats <= in_flight, (after, in_flight, Counter(lines))
    assert lines[: len(before)] == before


def test_two_processes_starting_one_run_id_run_it_once(
    tmp_path: Path, reference: tuple[Any, set[str]]
) -> None:
    """Both try to create the run; the loser follows it and returns the same result."""
    expected_result, expected_lines = reference
    db, effects = tmp_path / "runs.db", tmp_path / "effects.txt"
    procs = [_spawn("run", db, "shared", effects) for _ in range(2)]
    results = [json.loads(_finish(proc, timeout=60)) for proc in procs]
    assert results == [expected_result, expected_result]
    lines = _lines(effects)
    assert len(lines) == len(set(lines)), Counter(lines)  # every step body ran once
    assert set(lines) == expected_lines
