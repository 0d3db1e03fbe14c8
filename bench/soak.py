"""Soak: many model-checker schedules per store (tests/durable/model/), for bench/RESULTS.md.

    python bench/soak.py                       # 1000 schedules on each of sqlite, postgres, redis
    python bench/soak.py --schedules 50 --stores sqlite --first-seed 1000
    PITON_SOAK_SCHEDULES=200 PITON_SOAK_STORES=redis make soak

Each schedule is seeded (seed = first-seed + i); a failure prints its seed and the broken
promise, and ``PITON_MODEL_SEED=<seed> python -m pytest tests/durable/test_model_checker.py -k <store>``
replays it. The summary is a Markdown table to paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "durable"))

from model.checker import check, run_schedule  # noqa: E402
from model.schedule import make_schedule  # noqa: E402
from model.targets import KINDS, drop, new_url  # noqa: E402


@dataclass
class Figures:
    store: str
    schedules: int = 0
    seconds: float = 0.0
    kills: int = 0
    sends: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)


def soak(kind: str, seeds: range, keep_logs: bool) -> Figures:
    figures = Figures(kind)
    workdir = Path(tempfile.mkdtemp(prefix=f"piton-soak-{kind}-"))
    url = new_url(kind, workdir)
    try:
        for seed in seeds:
            schedule = make_schedule(seed)
            started = time.monotonic()
            observed = run_schedule(schedule, url, workdir / f"seed-{seed}")
            problems = check(schedule, observed)
            figures.seconds += time.monotonic() - started
            figures.schedules += 1
            figures.kills += observed.kills
            figures.sends += observed.sends
            if problems:
                figures.failures.append((seed, problems[0]))
                print(f"  {kind} FAIL {problems[0][:300]}", flush=True)
            elif not keep_logs:
                shutil.rmtree(workdir / f"seed-{seed}", ignore_errors=True)
            if figures.schedules % 50 == 0:
                print(f"  {kind}: {figures.schedules} schedules", flush=True)
    finally:
        drop(url)
    return figures


def table(all_figures: list[Figures]) -> str:
    rows = [
        "| store | schedules | failures | s/schedule | kills | events sent | failing seeds |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for f in all_figures:
        per = f.seconds / f.schedules if f.schedules else 0.0
        seeds = ", ".join(str(seed) for seed, _ in f.failures[:20]) or "-"
        rows.append(
            f"| {f.store} | {f.schedules} | {len(f.failures)} | {per:.2f} | {f.kills} | "
            f"{f.sends} | {seeds} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--schedules", type=int, default=int(os.environ.get("PITON_SOAK_SCHEDULES") or 1000)
    )
    parser.add_argument("--stores", default=os.environ.get("PITON_SOAK_STORES") or ",".join(KINDS))
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true", help="keep passing schedules' logs")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.schedules)
    results = []
    for kind in args.stores.split(","):
        print(f"{kind}: {args.schedules} schedules from seed {args.first_seed}", flush=True)
        results.append(soak(kind.strip(), seeds, args.keep_logs))
    print()
    print(table(results))
    for f in results:
        for seed, problem in f.failures:
            print(f"- {f.store} seed {seed}: {problem[:400]}")


if __name__ == "__main__":
    main()
