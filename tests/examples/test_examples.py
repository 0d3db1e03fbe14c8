"""Every program in examples/ runs, in its own process, and does what it says.

The Redis example runs against the real server: it is killed mid-loop (by its own
SIGKILL switch, or by the test), restarted from its Redis snapshot, and must convert
every document exactly once, except at most the one in flight at each kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(
    name: str, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{name} {' '.join(args)} exited with {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def test_demo() -> None:
    out = run_example("demo.py").stdout
    assert "converted: [1, 2, 3]" in out


def test_seed_instance_state_reuses_the_client_across_runs() -> None:
    out = run_example("seed_instance_state.py").stdout.splitlines()
    assert out[:3] == ["run 1: 1 rows", "run 2: 2 rows", "run 3: 3 rows"]
    assert out[3].startswith("client reused: 1 connection opened for 3 runs")


def test_seed_context_snapshot_carries_state_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "ctx.json"
    outs = [run_example("seed_context_snapshot.py", str(path)).stdout for _ in range(3)]
    assert outs[0].startswith('first run: {"runs": 1, "history": ["run 1"]}')
    assert outs[1].startswith('restored run: {"runs": 2, "history": ["run 1", "run 2"]}')
    assert outs[2].startswith('restored run: {"runs": 3, "history": ["run 1", "run 2", "run 3"]}')
    saved = json.loads(path.read_text())["id"]
    assert all(isinstance(v, str) for v in saved.values())  # the flat dict[str, str]


def test_seed_context_snapshot_needs_its_argument() -> None:
    proc = run_example("seed_context_snapshot.py", check=False)
    assert proc.returncode != 0 and "usage:" in proc.stderr


# --- the Redis checkpoint example -------------------------------------------------------


@pytest.fixture
def redis_key(redis_url: str) -> Iterator[tuple[str, str]]:
    from redis import Redis

    key = f"piton-test:seed-redis:{uuid.uuid4().hex}"
    client = Redis.from_url(redis_url)
    try:
        yield redis_url, key
    finally:
        client.delete(key)
        client.close()


def redis_env(url: str, key: str, log: Path, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": url,
        "PITON_EXAMPLE_KEY": key,
        "PITON_EXAMPLE_LOG": str(log),
        "PITON_EXAMPLE_DOCS": "12",
        "PITON_EXAMPLE_DELAY": "0.01",
        **extra,
    }


def conversions(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def final_result(stdout: str) -> list[int]:
    lines = [line for line in stdout.splitlines() if line.startswith("result: ")]
    assert lines, f"no result line in:\n{stdout}"
    return json.loads(lines[-1].removeprefix("result: "))


def snapshot_of(url: str, key: str) -> dict[str, str]:
    from redis import Redis

    client = Redis.from_url(url, decode_responses=True)
    try:
        return client.hgetall(key)
    finally:
        client.close()


@pytest.mark.services
@pytest.mark.parametrize("variant", ["resource", "instance"])
def test_seed_redis_checkpoint_survives_self_kill(
    redis_key: tuple[str, str], tmp_path: Path, variant: str
) -> None:
    url, key = redis_key
    log = tmp_path / "conversions.log"
    env = redis_env(url, key, log, PITON_EXAMPLE_VARIANT=variant)
    ids = list(range(1, 13))

    # Each crashing process is SIGKILLed right after a conversion, before its snapshot.
    first = run_example("seed_redis_checkpoint.py", "--crash-after", "4", env=env, check=False)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert conversions(log) == [1, 2, 3, 4]
    snapshot = snapshot_of(url, key)
    assert json.loads(snapshot["state"])["converted_ids"] == [1, 2, 3]

    second = run_example("seed_redis_checkpoint.py", "--crash-after", "3", env=env, check=False)
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert "resuming from" in second.stdout and "3 documents already converted" in second.stdout
    assert conversions(log) == [1, 2, 3, 4, 4, 5, 6]

    last = run_example("seed_redis_checkpoint.py", env=env)
    assert "5 documents already converted" in last.stdout
    assert final_result(last.stdout) == ids

    counts = Counter(conversions(log))
    assert sorted(counts) == ids
    # Only the document in flight at each kill was converted twice.
    assert {doc for doc, n in counts.items() if n > 1} == {4, 6}
    assert max(counts.values()) == 2


@pytest.mark.services
def test_seed_redis_checkpoint_survives_sigkill_from_outside(
    redis_key: tuple[str, str], tmp_path: Path
) -> None:
    url, key = redis_key
    log = tmp_path / "conversions.log"
    env = {**os.environ, **redis_env(url, key, log, PITON_EXAMPLE_DELAY="0.05")}
    ids = list(range(1, 13))
    kills = 0
    for wanted in (3, 7):  # kill once at least `wanted` conversions are logged
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "seed_redis_checkpoint.py")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while len(conversions(log)) < wanted and proc.poll() is None:
                assert time.monotonic() < deadline, "the example made no progress"
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), stderr
    assert kills >= 1

    last = run_example("seed_redis_checkpoint.py", env=env)
    assert final_result(last.stdout) == ids
    counts = Counter(conversions(log))
    assert sorted(counts) == ids
    assert max(counts.values()) <= 2
    assert sum(n - 1 for n in counts.values()) <= kills  # at most one redo per kill
