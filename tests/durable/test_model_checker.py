"""The model-based multi-process checker: seeded random schedules of processes that start,
follow, resume, answer and work on runs of one model workflow (tests/durable/model/model_flow.py),
exit cleanly or are SIGKILLed at random points; after each schedule the checker
(tests/durable/model/checker.py) holds what the processes saw and what the store keeps against
the durability promises.

CI runs PITON_MODEL_SCHEDULES (default 20) schedules per store and stops a store at its
first failing schedule, naming its seed; PITON_MODEL_SEED=<n> replays exactly that one.
``make soak`` (bench/soak.py) runs many more.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.checker import check, run_schedule
from model.fixtures import fresh_store, made_stores  # noqa: F401 - a fixture
from model.schedule import make_schedule
from model.targets import KINDS

pytestmark = pytest.mark.slow


def seeds() -> list[int]:
    if os.environ.get("PITON_MODEL_SEED"):
        return [int(os.environ["PITON_MODEL_SEED"])]
    return list(range(1, int(os.environ.get("PITON_MODEL_SCHEDULES") or 20) + 1))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", KINDS)
def test_random_schedules_keep_every_promise(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = fresh_store(kind, request, tmp_path)
    for seed in seeds():
        schedule = make_schedule(seed)
        workdir = tmp_path / f"seed-{seed}"
        observed = run_schedule(schedule, url, workdir)
        problems = check(schedule, observed)
        assert not problems, (
            f"{kind}: {schedule.describe()}\n  "
            + "\n  ".join(problems)
            + f"\nlogs: {workdir}\nreplay: PITON_MODEL_SEED={seed} .venv/bin/python -m pytest "
            f"tests/durable/test_model_checker.py -k {kind}"
        )
