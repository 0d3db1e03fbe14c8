"""The benchmarks' shared harness: what every script in bench/ does the same way.

- the machine header: ``machine_info``, ``print_machine``, ``load_average``;
- the common options: ``add_common_args`` and ``check_common_args`` (``--repeat``,
  ``--quick``, and as asked ``--smoke``, ``--concurrency``; ``--json``);
- repetitions: ``repeat`` runs named blocks in an order reversed on odd repetitions
  (``block_order``), and ``Results`` keeps each repetition's figures and gives medians,
  spreads (min, max) and medians of per-repetition ratios;
- tables: ``print_columns`` (any table), ``print_figures`` (median, min, max per figure) and
  ``print_ratios`` (ratios side by side, with a verdict per goal);
- the end: ``scratch_dir`` (a temporary directory on the repository's disk),
  ``write_json``, and ``CpuMeter`` (how many cores were busy during a timing).

The benchmarks are run as scripts (``python bench/durable.py``), so ``bench/`` is on
``sys.path`` and they import this module as ``_harness``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# -- the machine --------------------------------------------------------------------------------


def version(dist: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(packages: tuple[str, ...] = ()) -> dict[str, str]:
    """CPU, cores, OS, Python, the versions of ``packages``, the date and the load average."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable",
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    for dist in packages:
        info[dist] = version(dist)
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    info["load average"] = load_average()
    return info


def load_average() -> str:
    """Other processes on the machine skew the figures; this shows whether there were any."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def print_machine(info: dict[str, str]) -> None:
    for key, value in info.items():
        print(f"{key + ':':<24}{value}")


# -- the common options -------------------------------------------------------------------------


def add_common_args(
    p: argparse.ArgumentParser,
    *,
    repeat_help: str = "repetitions (default 5, quick 2)",
    quick_help: str = "a smoke test of about 20 s",
    smoke: bool = False,
    concurrency: bool = False,
) -> None:
    """``--repeat``, ``--quick``, ``--smoke`` (if asked), ``--json``, ``--concurrency`` (if
    asked); ``check_common_args`` fills them in once parsed."""
    p.add_argument("--repeat", type=int, default=None, help=repeat_help)
    p.add_argument("--quick", action="store_true", help=quick_help)
    if smoke:
        p.add_argument(
            "--smoke",
            action="store_true",
            help="1 repetition of tiny workloads: checks that it runs, measures nothing (for tests)",
        )
    p.add_argument("--json", metavar="PATH", help="also write machine info and figures as JSON")
    if concurrency:
        p.add_argument(
            "--concurrency",
            default="1,10,100",
            help="concurrent runs, comma-separated, ascending (default 1,10,100)",
        )


def check_common_args(
    p: argparse.ArgumentParser, args: argparse.Namespace, *, default: int = 5, quick: int = 2
) -> None:
    """Fill in and check what add_common_args added (``p.error`` exits on a bad value):
    ``--repeat`` defaults to 1 with ``--smoke``, ``quick`` with ``--quick``, else ``default``;
    ``--concurrency`` becomes a list of ints."""
    if args.repeat is None:
        args.repeat = 1 if getattr(args, "smoke", False) else quick if args.quick else default
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if not hasattr(args, "concurrency"):
        return
    try:
        args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        p.error("--concurrency takes integers, e.g. 1,10,100")
    if not args.concurrency or sorted(args.concurrency) != args.concurrency:
        p.error("--concurrency takes ascending integers, e.g. 1,10,100")
    if args.concurrency[0] < 1:
        p.error("--concurrency levels must be >= 1")


# -- repetitions --------------------------------------------------------------------------------


@dataclass
class Results:
    """The figures of every repetition (one dict each) and notes (what is not a timing)."""

    reps: list[dict[str, float]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def values(self, key: str) -> list[float]:
        return [rep[key] for rep in self.reps if key in rep]

    def median(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.median(values) if values else None

    def spread(self, key: str) -> tuple[float, float] | None:
        values = self.values(key)
        return (min(values), max(values)) if values else None

    def ratio(self, top: str, bottom: str) -> float | None:
        """The median of the per-repetition ratios: each is taken within one repetition."""
        values = [rep[top] / rep[bottom] for rep in self.reps if top in rep and rep.get(bottom)]
        return statistics.median(values) if values else None

    def table(self, rows: Iterable[tuple[str, str, str]]) -> list[dict[str, Any]]:
        """For each ``(label, unit, key)``: the median, min and max of that figure."""
        table = []
        for label, unit, key in rows:
            spread = self.spread(key)
            table.append(
                {
                    "figure": label,
                    "unit": unit,
                    "key": key,
                    "median": self.median(key),
                    "min": spread[0] if spread else None,
                    "max": spread[1] if spread else None,
                }
            )
        return table


def block_order(rep: int, names: Sequence[T]) -> list[T]:
    """``names`` in order on even repetitions, reversed on odd ones: what drifts in time
    (the disk, the machine's load) is not always charged to the same block."""
    return list(names) if rep % 2 == 0 else list(names)[::-1]


async def repeat(
    res: Results,
    count: int,
    blocks: Sequence[str],
    run: Callable[[str, int, dict[str, float]], Awaitable[None]],
    done: Callable[[int, dict[str, float]], None],
) -> None:
    """``count`` repetitions: each awaits ``run(block, rep, figures)`` for every block, in
    ``block_order``, then calls ``done(rep, figures)`` (derived figures, a progress line)
    and keeps the figures in ``res.reps``."""
    for rep in range(count):
        figures: dict[str, float] = {}
        for block in block_order(rep, blocks):
            await run(block, rep, figures)
        done(rep, figures)
        res.reps.append(figures)


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


# -- tables -------------------------------------------------------------------------------------


def num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def times(value: float | None) -> str:
    """A ratio: ``2.31x``."""
    return "-" if value is None else f"{value:.2f}x"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def print_columns(
    columns: Sequence[tuple[str, str]],
    rows: Iterable[Sequence[str]],
    rule: bool = True,
    title: str | None = None,
) -> None:
    """A table: ``columns`` are (title, format spec such as ``"<52"`` or ``">9"``), each row
    has one cell per column; a blank line first, then ``title`` if any, and a rule under the
    column titles if ``rule``."""
    head = " ".join(f"{name:{spec}}" for name, spec in columns)
    print()
    if title:
        print(title)
    print(head.rstrip())
    if rule:
        print("-" * len(head))
    for row in rows:
        print(" ".join(f"{cell:{spec}}" for cell, (_, spec) in zip(row, columns, strict=True)))


def print_figures(table: list[dict[str, Any]], width: int = 52) -> None:
    """A ``Results.table``: each figure's median, min and max."""
    print_columns(
        [("figure", f"<{width}"), ("unit", ">9"), ("median", ">9"), ("min", ">9"), ("max", ">9")],
        ([r["figure"], r["unit"], num(r["median"]), num(r["min"]), num(r["max"])] for r in table),
    )


Cell = tuple[float | None, bool | None]  # a ratio, and whether it meets its goal (None: no goal)


def print_ratios(
    titles: Sequence[str],
    lines: Iterable[tuple[str, Sequence[Cell]]],
    width: int = 52,
    title: str | None = None,
) -> None:
    """Ratios side by side, one column per title (the systems or modes compared), each with
    PASS or FAIL where the line is a goal."""
    columns = [("ratio", f"<{width}")]
    for name in titles:
        columns += [(name, ">8"), ("", "<4")]
    rows = []
    for text, cells in lines:
        row = [text]
        for value, ok in cells:
            row += [times(value), "" if ok is None else verdict(ok)]
        rows.append(row)
    print_columns(columns, rows, rule=False, title=title)


# -- the end ------------------------------------------------------------------------------------


@contextmanager
def scratch_dir(prefix: str, parent: str | None = None) -> Iterator[Path]:
    """A temporary directory under ``parent`` (default ``.bench-tmp/`` in the repository: the
    repository's disk, not a RAM disk), deleted at the end with ``.bench-tmp/`` if empty."""
    base = Path(parent) if parent else ROOT / ".bench-tmp"
    base.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if not parent:
            try:
                base.rmdir()  # only if nothing else is in it
            except OSError:
                pass


def write_json(path: str | None, document: dict[str, Any]) -> None:
    """``document`` to ``path`` (``--json``), if given."""
    if not path:
        return
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def process_seconds(name: str) -> float:
    """CPU seconds used so far by the processes whose name starts with ``name`` on this
    machine (a local server's processes, when they are visible; else 0)."""
    total = 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        command, rest = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :]
        if command.startswith(name):
            fields = rest.split()
            # utime, stime, and cutime, cstime: a server's reaped children (say the
            # backends of connections that ended) stay counted
            total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How many cores were busy during a timing: this process (``process``), the processes
    named ``server`` (``server``: a local database server), and the whole machine; the
    rest of the machine's (``other``) is whatever else ran meanwhile (another user's tests,
    say), which skews the figures."""

    def __init__(self, server: str) -> None:
        self.name = server

    def __enter__(self) -> CpuMeter:
        self.ticks, self.started_server = _machine_ticks(), process_seconds(self.name)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        wall = time.perf_counter() - self.wall
        self.process = (time.process_time() - self.cpu) / wall
        busy, total = (now - then for now, then in zip(_machine_ticks(), self.ticks, strict=True))
        self.server = (process_seconds(self.name) - self.started_server) / wall
        self.machine = busy / total * (os.cpu_count() or 1) if total else float("nan")
        self.other = max(self.machine - self.process - self.server, 0.0)
