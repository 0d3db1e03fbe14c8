"""What bench/durable.py (SQLite) and bench/postgres.py (PostgreSQL) share besides their
workload (``_chain.py``): the options, the timed blocks, the summary and the report's parts.

- the sizes of the timings (``sizes``: full, ``--quick``, ``--smoke``);
- the options: ``add_durable_args`` (the harness's, with ``--smoke`` and ``--concurrency``,
  plus ``--no-dbos`` and ``--dbos-api``) and ``check_dbos``;
- the blocks of a repetition: ``warm_piton`` (outside the timings), ``time_sequential``,
  ``time_concurrent``, ``time_dbos``, and ``floor_rates`` (throughput over the floor's
  commits per second);
- the summary (``summarize``: table, ratios, goals, accounting) and the report's parts
  (``print_accounting``, ``print_dbos``, ``print_throughput``, ``print_goals``, ``save``).

Each script adds its floor, its store and what it knows of its database.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from _chain import MODES, STEPS, Chains, DbosSystem, dbos_available
from _harness import (
    Results,
    add_common_args,
    at_least,
    at_most,
    block_order,
    load_average,
    num,
    print_machine,
    print_ratios,
    times,
    write_json,
)

GOAL_FLOOR = 2.0  # piton durable step / floor commit: at most
GOAL_DBOS = 3.0  # DBOS step / piton durable step: at least
GOAL_SCALE = 5.0  # throughput of the most concurrent runs / of one run: at least


# -- the options and the start --------------------------------------------------------------------


def add_durable_args(p: argparse.ArgumentParser) -> None:
    """The options of both durable benchmarks; ``_harness.check_common_args`` checks them."""
    add_common_args(p, smoke=True, concurrency=True)
    p.add_argument("--no-dbos", action="store_true", help="leave DBOS out")
    p.add_argument(
        "--dbos-api",
        choices=["auto", "sync", "async"],
        default="auto",
        help="DBOS API to time (default auto: the faster one in the warm-up)",
    )


def check_dbos(args: argparse.Namespace) -> str | None:
    """Why DBOS cannot be imported (then ``args.no_dbos`` is set), or None."""
    skipped = None if args.no_dbos else dbos_available()
    if skipped is not None:
        args.no_dbos = True
    return skipped


def print_header(info: dict[str, str], skipped: str | None) -> None:
    print_machine(info)
    if skipped is not None:
        print(f"DBOS is not importable ({skipped}); it is left out")
    print()


# -- the sizes ----------------------------------------------------------------------------------


@dataclass
class Sizes:
    """How much each timing does (bench/postgres.py has no in-memory runs)."""

    floor_commits: int
    durable_runs: int  # per mode, one after the other
    memory_runs: int
    dbos_runs: int
    piton_conc_runs: int  # runs per concurrency level (at least one round)
    dbos_conc_runs: int


def sizes(args: argparse.Namespace) -> Sizes:
    if args.smoke:  # does the benchmark run at all? (tests/examples/test_bench_smoke.py)
        return Sizes(20, 2, 10, 2, 4, 2)
    if args.quick:
        return Sizes(100, 12, 60, 5, 20, 5)
    return Sizes(500, 60, 300, 20, 200, 20)


# -- the blocks of a repetition -----------------------------------------------------------------

# Around a concurrent timing: (the figures' key, the repetition's figures) -> a context
# manager, which may add figures of its own (bench/postgres.py counts busy cores).
Meter = Callable[[str, dict[str, float]], AbstractContextManager[object]]


def no_meter(key: str, figures: dict[str, float]) -> AbstractContextManager[object]:
    return nullcontext()


async def warm_piton(piton: Chains, res: Results) -> str:
    """Runs of both modes outside the timings; they give the journal bytes per commit
    request, per write transaction and per entry, and the floor's row: as large as what
    the default mode writes per commit request. Returns the row."""
    for mode in MODES:
        _, writes = await piton.concurrent(mode, 1, 3, f"warm-{mode}")
        await piton.concurrent(mode, 10, 1, f"warm-{mode}")
        k = f"piton_{mode}_journal_bytes"
        res.notes[f"{k}_per_commit"] = writes.entry_bytes / max(writes.commits, 1)
        res.notes[f"{k}_per_txn"] = writes.entry_bytes / max(writes.transactions, 1)
        res.notes[f"{k}_per_entry"] = writes.entry_bytes / max(writes.entries, 1)
    per_commit = res.notes["piton_fast_journal_bytes_per_commit"]
    entry = "x" * max(int(round(per_commit, -1)), 50)
    res.notes["floor_row_bytes"] = len(entry)
    return entry


async def time_sequential(
    piton: Chains, mode: str, runs: int, rep: int, figures: dict[str, float]
) -> None:
    """``runs`` durable runs in ``mode``, one after the other: per step, per write
    transaction, and what each run wrote."""
    key = f"piton_{mode}"
    seconds, w = await piton.concurrent(mode, 1, runs, f"{mode}-seq{rep}")
    figures[f"{key}_us_step"] = seconds / (runs * STEPS) * 1e6
    figures[f"{key}_us_txn"] = seconds / w.transactions * 1e6
    figures[f"{key}_txn_per_run"] = w.transactions / runs
    figures[f"{key}_commits_per_run"] = w.commits / runs
    figures[f"{key}_entries_per_run"] = w.entries / runs


async def time_concurrent(
    piton: Chains,
    levels: list[int],
    runs: int,
    rep: int,
    figures: dict[str, float],
    meter: Meter = no_meter,
) -> None:
    """About ``runs`` durable runs at each concurrency level (at least one round), the modes
    alternating: steps per second and per write transaction."""
    for width in block_order(rep, levels):
        rounds = max(runs // width, 1)
        for mode in block_order(rep, MODES):
            key = f"piton_{mode}_c{width}"
            with meter(key, figures):
                seconds, w = await piton.concurrent(mode, width, rounds, f"{mode}-c{width}r{rep}")
            steps = rounds * width * STEPS
            figures[f"{key}_steps_s"] = steps / seconds
            figures[f"{key}_steps_txn"] = steps / w.transactions


async def time_dbos(
    d: DbosSystem,
    runs: int,
    concurrent_runs: int,
    levels: list[int],
    rep: int,
    figures: dict[str, float],
    meter: Meter = no_meter,
) -> None:
    """DBOS launched, ``runs`` workflows one after the other, about ``concurrent_runs`` at
    each concurrency level, DBOS destroyed."""
    await d.launch()
    try:
        seconds = await d.concurrent(1, runs, f"{d.name}-seq{rep}")
        figures[f"{d.name}_us_step"] = seconds / (runs * STEPS) * 1e6
        for width in block_order(rep, levels):
            rounds = max(concurrent_runs // width, 1)
            key = f"{d.name}_c{width}"
            with meter(key, figures):
                seconds = await d.concurrent(width, rounds, f"{d.name}-c{width}r{rep}")
            figures[f"{key}_steps_s"] = rounds * width * STEPS / seconds
    finally:
        await d.destroy()


def systems(dbos_names: Iterable[str]) -> list[str]:
    return [*(f"piton_{mode}" for mode in MODES), *dbos_names]


def floor_rates(figures: dict[str, float], names: list[str], levels: list[int]) -> None:
    """Throughput in units of the floor's commits per second (1e6 / floor_us): above 1,
    commits are shared, a step costs less than one fsync of its own."""
    for system in names:
        for width in levels:
            rate = figures[f"{system}_c{width}_steps_s"]
            figures[f"{system}_c{width}_over_floor_rate"] = rate * figures["floor_us"] / 1e6


def progress(rep: int, parts: list[str], figures: dict[str, float], dbos: list[str]) -> None:
    """A repetition's line: the floor (``parts``), each mode's, in memory's and DBOS's
    (``dbos``: its databases' names) cost per step."""
    parts = [*parts, *(f"piton {m} {figures[f'piton_{m}_us_step']:.0f} us/step" for m in MODES)]
    if "memory_us_step" in figures:
        parts.append(f"memory {figures['memory_us_step']:.1f} us/step")
    parts += [f"{name} {figures[f'{name}_us_step']:.0f} us/step" for name in dbos]
    print(f"  rep {rep + 1}: " + ", ".join(parts), flush=True)


# -- the summary --------------------------------------------------------------------------------


def piton_rows(number: str) -> list[tuple[str, str, str]]:
    """The table's rows of the sequential durable runs: per step, per write transaction."""
    rows = []
    for mode in MODES:
        rows.append(
            (f"{number} piton durable {mode}, per step", "us/step", f"piton_{mode}_us_step")
        )
        rows.append(
            (f"    piton durable {mode}, per write transaction", "us/txn", f"piton_{mode}_us_txn")
        )
    return rows


def concurrency_rows(
    number: str, names: dict[str, str], levels: list[int]
) -> list[tuple[str, str, str]]:
    """The table's rows of the concurrent runs: steps per second, for each system named."""
    return [
        (f"{number} {name}, {width} concurrent run(s)", "steps/s", f"{system}_c{width}_steps_s")
        for system, name in names.items()
        for width in levels
    ]


def summarize(
    res: Results, levels: list[int], dbos_names: list[str], rows: list[tuple[str, str, str]]
) -> dict[str, Any]:
    """The table of ``rows``; the ratios, the goals (for each mode) and the accounting."""
    low, high = levels[0], levels[-1]
    ratios: dict[str, float | None] = {
        "piton_strict_over_fast": res.ratio("piton_strict_us_step", "piton_fast_us_step"),
    }
    goals: dict[str, bool | None] = {}
    accounting: dict[str, float | None] = {}
    for mode in MODES:
        k = f"piton_{mode}"
        ratios[f"{k}_step_over_floor"] = res.ratio(f"{k}_us_step", "floor_us")
        ratios[f"{k}_txn_over_floor"] = res.ratio(f"{k}_us_txn", "floor_us")
        goals[f"{k}_step_over_floor_at_most_2"] = at_most(
            ratios[f"{k}_step_over_floor"], GOAL_FLOOR
        )
        for name in dbos_names:
            ratios[f"{name}_over_{k}"] = res.ratio(f"{name}_us_step", f"{k}_us_step")
            goals[f"{name}_over_{k}_at_least_3"] = at_least(ratios[f"{name}_over_{k}"], GOAL_DBOS)
        for what in ("entries_per_run", "commits_per_run", "txn_per_run"):
            accounting[f"{k}_{what}"] = res.median(f"{k}_{what}")
        for width in levels:
            accounting[f"{k}_c{width}_steps_per_txn"] = res.median(f"{k}_c{width}_steps_txn")
    for system in systems(dbos_names):
        ratios[f"{system}_scale"] = res.ratio(
            f"{system}_c{high}_steps_s", f"{system}_c{low}_steps_s"
        )
        for width in levels[1:]:
            ratios[f"{system}_c{width}_over_c{low}"] = res.ratio(
                f"{system}_c{width}_steps_s", f"{system}_c{low}_steps_s"
            )
        # steps/s over the floor's commits/s, the median of the per-repetition values
        for width in levels:
            ratios[f"{system}_c{width}_over_floor_rate"] = res.median(
                f"{system}_c{width}_over_floor_rate"
            )
    for mode in MODES:
        k = f"piton_{mode}"
        goals[f"{k}_scale_at_least_5"] = at_least(ratios[f"{k}_scale"], GOAL_SCALE)
    floor_us = res.median("floor_us")
    return {
        "table": res.table(rows),
        "ratios": ratios,
        "goals": goals,
        "accounting": accounting,
        "floor_commits_per_s": 1e6 / floor_us if floor_us else None,
        "modes": list(MODES),
        "dbos": dbos_names,
    }


# -- the report ---------------------------------------------------------------------------------


def print_accounting(summary: dict[str, Any], notes: dict[str, Any], levels: list[int]) -> None:
    """What each mode wrote per run and per write transaction, the floor's row, and whether
    every piton run completed."""
    acc = summary["accounting"]
    print()
    for mode in MODES:
        k = f"piton_{mode}"
        print(
            f"piton {mode}, per run of {STEPS} steps: {num(acc[f'{k}_entries_per_run'])} "
            f"journal entries in {num(acc[f'{k}_commits_per_run'])} commit requests and "
            f"{num(acc[f'{k}_txn_per_run'])} write transactions (the run's creation included)"
        )
        print(
            f"piton {mode}, steps per write transaction: "
            + ", ".join(f"{w} run(s) {num(acc[f'{k}_c{w}_steps_per_txn'])}" for w in levels)
        )
    print(
        f"floor row: {notes['floor_row_bytes']} bytes (piton fast wrote "
        f"{notes['piton_fast_journal_bytes_per_commit']:.0f} journal bytes per commit request, "
        f"{notes['piton_fast_journal_bytes_per_txn']:.0f} per write transaction, "
        f"{notes['piton_fast_journal_bytes_per_entry']:.0f} per entry; strict "
        f"{notes['piton_strict_journal_bytes_per_commit']:.0f} per commit request, "
        f"{notes['piton_strict_journal_bytes_per_txn']:.0f} per write transaction)"
    )


def print_dbos(notes: dict[str, Any], args: argparse.Namespace) -> None:
    """The DBOS API timed and why, and what one audited DBOS workflow ran and left."""
    if "dbos_api" not in notes:
        print(f"DBOS: not measured ({notes.get('dbos_skipped', '--no-dbos')})")
        return
    cal = notes["dbos_api_calibration_us_per_step"]
    how = "given by --dbos-api" if args.dbos_api != "auto" else "the faster in the warm-up"
    print(
        f"DBOS API: {notes['dbos_api']} ({how}: sync {cal['sync']:.0f} us/step, "
        f"async {cal['async']:.0f} us/step)"
    )
    sql = notes["dbos_statements_per_run"]
    print(
        f"DBOS, one audited run of {STEPS} steps: "
        + ", ".join(f"{v} {k}" for k, v in sql.items())
        + f"; {notes['dbos_audit']['step_rows']} step rows in operation_outputs"
    )


def system_names(labels: dict[str, str]) -> dict[str, str]:
    """The systems' keys and names in the report: piton's modes, then DBOS's ``labels``."""
    return {**{f"piton_{mode}": f"piton {mode}" for mode in MODES}, **labels}


def print_throughput(summary: dict[str, Any], labels: dict[str, str], levels: list[int]) -> None:
    """Each system's throughput as a multiple of its own at the lowest concurrency, and of
    the floor's commits per second."""
    ratios, low = summary["ratios"], levels[0]
    names = system_names({name: labels[name] for name in summary["dbos"]})
    print(f"throughput over {low} run(s):")
    for system, name in names.items():
        gains = [f"{w} runs {times(ratios.get(f'{system}_c{w}_over_c{low}'))}" for w in levels[1:]]
        print(f"  {name}: " + ", ".join(gains))
    rate = summary["floor_commits_per_s"]
    print(f"steps/s over the floor's commits/s (1e6 / floor us = {num(rate)}/s):")
    for system, name in names.items():
        over = [f"{w} run(s) {times(ratios.get(f'{system}_c{w}_over_floor_rate'))}" for w in levels]
        print(f"  {name}: " + ", ".join(over))


def print_goals(summary: dict[str, Any], labels: dict[str, str], levels: list[int]) -> None:
    """The goals of the durability issue, side by side for the two modes; then DBOS's own
    scaling, for comparison."""
    ratios, goals = summary["ratios"], summary["goals"]
    low, high = levels[0], levels[-1]
    print(f"piton strict step / fast step: {times(ratios['piton_strict_over_fast'])}")
    dbos_goal = "_at_least_3"
    lines = [  # (what, the ratio's key, the goal's key) with {k} = piton_fast, piton_strict
        (f"piton step / floor commit  <= {GOAL_FLOOR:g}x", "{k}_step_over_floor", "_at_most_2"),
        ("piton write transaction / floor commit", "{k}_txn_over_floor", None),
        *(
            (f"{labels[name]} step / piton step  >= {GOAL_DBOS:g}x", name + "_over_{k}", dbos_goal)
            for name in summary["dbos"]
        ),
        (
            f"piton {high}-run / {low}-run throughput  >= {GOAL_SCALE:g}x",
            "{k}_scale",
            "_at_least_5",
        ),
        (f"piton {high}-run steps/s / floor commits/s", f"{{k}}_c{high}_over_floor_rate", None),
    ]
    cells = []
    for text, key, goal in lines:
        keys = [key.format(k=f"piton_{mode}") for mode in MODES]
        cells.append((text, [(ratios[k], goals[k + goal] if goal else None) for k in keys]))
    title = 'goals for each durability mode ("fast" is the default; no verdict: no goal):'
    print_ratios(MODES, cells, title=title)
    for name in summary["dbos"]:
        print(
            f"(for comparison: {labels[name]} {high}-run / {low}-run throughput "
            f"{times(ratios[f'{name}_scale'])}, {high}-run steps/s / floor commits/s "
            f"{times(ratios[f'{name}_c{high}_over_floor_rate'])})"
        )


def save(
    args: argparse.Namespace,
    info: dict[str, str],
    summary: dict[str, Any],
    res: Results,
    **shown: Any,
) -> None:
    """``--json``: the machine, the options (``shown`` replaces some, say a URL without its
    password), the summary, the notes and every repetition."""
    write_json(
        args.json,
        {
            "machine": info,
            "args": {**vars(args), **shown},
            **summary,
            "notes": res.notes,
            "repetitions": res.reps,
        },
    )


def print_end(summary: dict[str, Any]) -> None:
    summary["load_average_at_end"] = load_average()
    print(f"load average at the end: {summary['load_average_at_end']}")
