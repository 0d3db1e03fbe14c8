"""Core benchmark: the same in-memory workloads on piton and on llama-index-workflows.

Run from the repository root (after ``pip install -e '.[bench]'``)::

    .venv/bin/python bench/core.py [--repeat N] [--quick] [--skip-llama-10k]

Workloads, each defined once by ``define()`` and instantiated for both systems:

(a) ``chain``: ten steps, StartEvent -> E1 -> ... -> E9 -> StopEvent, run 200 times in a
    row on one workflow instance; the figure is microseconds per step transition.
(b) ``fan-out 1k``: one step sends 1,000 events with ``ctx.send_event`` to a
    ``num_workers=8`` step that gathers them with ``ctx.collect_events``; total time and
    microseconds per event.
(c) ``fan-out 10k``: the same with 10,000 events. llama-index-workflows grows
    quadratically here, so its 10k case runs once, under ``--llama-10k-timeout``.
(d) ``no-collect 1k/10k``: the fan-out without ``collect_events`` (the workers count the
    events and the last one stops the run), for the raw cost of a step transition. llama's
    10k case runs only with ``--llama-no-collect-10k`` (it is quadratic too: about 4 min).

Within a repetition the two systems alternate (piton first on even repetitions, llama
first on odd ones); the table reports medians over the repetitions.
"""

import argparse
import asyncio
import gc
import inspect
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from _harness import (
    Results,
    add_common_args,
    check_common_args,
    load_average,
    machine_info,
    print_columns,
    print_machine,
    repeat,
    verdict,
    write_json,
)

CHAIN_STEPS = 10
CHAIN_RUNS = 200
FAN_SMALL = 1_000
FAN_LARGE = 10_000
LINEAR_LIMIT = 1.5  # per-event cost at 10k over 1k; quadratic growth would give about 10
GOAL_RATIO = 3.0  # llama / piton per step transition, on (a) and (b)


class Api(NamedTuple):
    """What a workload needs from a workflow library (the only difference between the two)."""

    Workflow: Any
    step: Any
    Context: Any
    Event: Any
    StartEvent: Any
    StopEvent: Any


def piton_api() -> Api:
    from piton import Context, Event, StartEvent, StopEvent, Workflow, step

    return Api(Workflow, step, Context, Event, StartEvent, StopEvent)


def llama_api() -> Api:
    try:
        from workflows import Context, Workflow, step
        from workflows.events import Event, StartEvent, StopEvent
    except ImportError as exc:
        raise SystemExit(
            f"llama-index-workflows is not installed ({exc}); run: "
            ".venv/bin/pip install -e '.[bench]'"
        ) from exc
    return Api(Workflow, step, Context, Event, StartEvent, StopEvent)


PITON = piton_api()
LLAMA = llama_api()
SYSTEMS = {"piton": PITON, "llama": LLAMA}


class Workloads(NamedTuple):
    chain: Callable[[], Any]
    fan_out: Callable[[int], Any]
    no_collect: Callable[[int], Any]


def define(api: Api) -> Workloads:
    """The workflows of every workload, written once against ``api``.

    The classes are local, so their annotations must be evaluated when the functions are
    defined: this module must not use ``from __future__ import annotations``.
    """
    Workflow, step, Context, Event, StartEvent, StopEvent = api

    class E1(Event):
        pass

    class E2(Event):
        pass

    class E3(Event):
        pass

    class E4(Event):
        pass

    class E5(Event):
        pass

    class E6(Event):
        pass

    class E7(Event):
        pass

    class E8(Event):
        pass

    class E9(Event):
        pass

    class Chain(Workflow):
        @step
        async def s0(self, ev: StartEvent) -> E1:
            return E1()

        @step
        async def s1(self, ev: E1) -> E2:
            return E2()

        @step
        async def s2(self, ev: E2) -> E3:
            return E3()

        @step
        async def s3(self, ev: E3) -> E4:
            return E4()

        @step
        async def s4(self, ev: E4) -> E5:
            return E5()

        @step
        async def s5(self, ev: E5) -> E6:
            return E6()

        @step
        async def s6(self, ev: E6) -> E7:
            return E7()

        @step
        async def s7(self, ev: E7) -> E8:
            return E8()

        @step
        async def s8(self, ev: E8) -> E9:
            return E9()

        @step
        async def s9(self, ev: E9) -> StopEvent:
            return StopEvent(result="done")

    class Item(Event):
        index: int

    class FanOut(Workflow):
        def __init__(self, n: int) -> None:
            super().__init__(timeout=None)
            self.n = n
            # Built once: `[Item] * n` inside the step would cost O(n) per event in the
            # benchmark's own code and make any engine's fan-out quadratic.
            self.expected = [Item] * n

        @step
        async def spread(self, ctx: Context, ev: StartEvent) -> Item | None:
            for k in range(self.n):
                ctx.send_event(Item(index=k))
            return None

        @step(num_workers=8)
        async def gather(self, ctx: Context, ev: Item) -> StopEvent | None:
            items = ctx.collect_events(ev, self.expected)
            if items is None:
                return None
            return StopEvent(result=len(items))

    class NoCollect(Workflow):
        def __init__(self, n: int) -> None:
            super().__init__(timeout=None)
            self.n = n
            self.seen = 0

        @step
        async def spread(self, ctx: Context, ev: StartEvent) -> Item | None:
            self.seen = 0
            for k in range(self.n):
                ctx.send_event(Item(index=k))
            return None

        @step(num_workers=8)
        async def handle(self, ev: Item) -> StopEvent | None:
            self.seen += 1
            if self.seen < self.n:
                return None
            return StopEvent(result=self.seen)

    return Workloads(
        chain=lambda: Chain(timeout=None),
        fan_out=FanOut,
        no_collect=NoCollect,
    )


# -- measuring --------------------------------------------------------------------------


async def run_chain(wf: Any, runs: int) -> float:
    """Seconds for ``runs`` sequential runs of the chain on one instance."""
    gc.collect()
    start = time.perf_counter()
    for _ in range(runs):
        result = await wf.run()
        if result != "done":
            raise RuntimeError(f"chain returned {result!r}")
    return time.perf_counter() - start


async def run_once(wf: Any, expected: int, timeout: float | None) -> float | None:
    """Seconds for one run, or None if it did not finish within ``timeout``."""
    gc.collect()
    start = time.perf_counter()
    handler = wf.run()
    task = asyncio.ensure_future(_wait(handler))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    elapsed = time.perf_counter() - start
    if not done:
        await _abandon(handler, task)
        return None
    result = task.result()
    if result != expected:
        raise RuntimeError(f"fan-out returned {result!r}, expected {expected}")
    return elapsed


async def _wait(handler: Awaitable[Any]) -> Any:
    return await handler


async def _abandon(handler: Any, task: "asyncio.Future[Any]") -> None:
    """Cancel a run that overran its time limit and let it wind down."""
    try:
        cancelled = handler.cancel_run()
        if inspect.isawaitable(cancelled):
            await asyncio.wait_for(cancelled, 60)
    except Exception as exc:  # noqa: BLE001 - best effort; report and carry on
        print(f"  (cancel_run failed: {exc!r})", file=sys.stderr)
    task.cancel()
    await asyncio.wait({task}, timeout=60)
    if task.done() and not task.cancelled():
        task.exception()  # mark retrieved: the run's cancellation error is expected


ORDER = ["piton", "llama"]  # piton first on even repetitions, llama first on odd ones


async def warm_up(built: dict[str, Workloads]) -> None:
    """One small run of every workflow class, so compilation and imports are paid up front."""
    for w in built.values():
        await run_chain(w.chain(), 3)
        await run_once(w.fan_out(50), 50, None)
        await run_once(w.no_collect(50), 50, None)


async def measure(args: argparse.Namespace) -> Results:
    """Each repetition's figures are seconds per workload and system (``chain_piton``,
    ``fan10k_llama``, ...); a run cut off by its time limit leaves the limit in
    ``res.notes["cut_off"]`` instead."""
    built = {name: define(api) for name, api in SYSTEMS.items()}
    await warm_up(built)
    res = Results(notes={"cut_off": {}})
    chains = {name: w.chain() for name, w in built.items()}  # one instance for all reps
    done: list[str] = []

    def progress(prefix: str) -> Callable[[int, dict[str, float]], None]:
        def show(rep: int, _figures: dict[str, float]) -> None:
            print(f"  {prefix}rep {rep + 1}: " + ", ".join(done), flush=True)
            done.clear()

        return show

    async def chain(system: str, rep: int, figures: dict[str, float]) -> None:
        seconds = await run_chain(chains[system], CHAIN_RUNS)
        figures[f"chain_{system}"] = seconds
        done.append(f"{system} {seconds * 1e3:,.1f} ms")

    def fan(name: str, n: int, make: str, llama_10k: bool) -> Callable[..., Awaitable[None]]:
        """A fan-out of ``n`` events (``make``: ``fan_out`` or ``no_collect``); llama's 10k
        case runs once, under the time limit, and only if ``llama_10k``."""

        async def run(system: str, rep: int, figures: dict[str, float]) -> None:
            limit = None
            if system == "llama" and n == FAN_LARGE:
                if not llama_10k or rep > 0:
                    return
                limit = args.llama_10k_timeout
                print(f"  llama 10k: a single run, time limit {limit:.0f} s ...", flush=True)
            seconds = await run_once(getattr(built[system], make)(n), n, limit)
            if seconds is None:
                res.notes["cut_off"][f"{name}_{system}"] = limit
            else:
                figures[f"{name}_{system}"] = seconds
            done.append(_done_text(system, seconds, limit))

        return run

    print(f"(a) chain of {CHAIN_STEPS} steps x {CHAIN_RUNS} runs, {args.repeat} repetitions")
    await repeat(res, args.repeat, ORDER, chain, progress(""))
    for label, n, name, reps in (
        ("b", FAN_SMALL, "fan1k", args.repeat),
        ("c", FAN_LARGE, "fan10k", args.repeat_10k),
    ):
        print(f"({label}) fan-out of {n:,} events, {reps} repetitions")
        run = fan(name, n, "fan_out", not args.skip_llama_10k)
        await repeat(res, reps, ORDER, run, progress(""))
    print(f"(d) fan-out without collect_events, {args.repeat} repetitions")
    for n, name in ((FAN_SMALL, "nc1k"), (FAN_LARGE, "nc10k")):
        run = fan(name, n, "no_collect", args.llama_no_collect_10k)
        await repeat(res, args.repeat, ORDER, run, progress(f"{n:,} events "))
    return res


def _done_text(system: str, seconds: float | None, limit: float | None) -> str:
    if seconds is None:
        return f"{system} CUT OFF at {limit:.0f} s"
    return f"{system} {seconds * 1e3:,.1f} ms"


# -- reporting --------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    unit: str
    per: int  # the median is divided by this, then scaled by `scale`
    scale: float
    name: str


ROWS = [
    Row("(a) chain, per step transition", "us", CHAIN_RUNS * CHAIN_STEPS, 1e6, "chain"),
    Row("(b) fan-out 1k, total", "ms", 1, 1e3, "fan1k"),
    Row("(b) fan-out 1k, per event", "us", FAN_SMALL, 1e6, "fan1k"),
    Row("(c) fan-out 10k, total", "ms", 1, 1e3, "fan10k"),
    Row("(c) fan-out 10k, per event", "us", FAN_LARGE, 1e6, "fan10k"),
    Row("(d) no collect 1k, per event", "us", FAN_SMALL, 1e6, "nc1k"),
    Row("(d) no collect 10k, per event", "us", FAN_LARGE, 1e6, "nc10k"),
]


def figure(res: Results, row: Row, system: str) -> tuple[float | None, bool]:
    """(value, is_lower_bound): a run cut off by its time limit gives a lower bound."""
    key = f"{row.name}_{system}"
    seconds = res.median(key)
    if seconds is not None:
        return seconds / row.per * row.scale, False
    cut_off = res.notes["cut_off"].get(key)
    if cut_off is not None:
        return cut_off / row.per * row.scale, True
    return None, False


def fmt(value: float | None, bound: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:,.1f}" if value < 1e5 else f"{value:,.0f}"
    return (">" if bound else "") + text


def summarize(res: Results) -> dict[str, Any]:
    table = []
    for row in ROWS:
        p, _ = figure(res, row, "piton")
        ll, ll_bound = figure(res, row, "llama")
        ratio = ll / p if p and ll is not None else None
        table.append(
            {
                "workload": row.label,
                "unit": row.unit,
                "piton": p,
                "llama": ll,
                "llama_cut_off": ll_bound,
                "ratio": ratio,
                "piton_samples": len(res.values(f"{row.name}_piton")),
                "llama_samples": len(res.values(f"{row.name}_llama")),
            }
        )
    by = {r["workload"]: r for r in table}
    chain = by["(a) chain, per step transition"]["ratio"]
    fan = by["(b) fan-out 1k, per event"]["ratio"]
    p1 = by["(b) fan-out 1k, per event"]["piton"]
    p10 = by["(c) fan-out 10k, per event"]["piton"]
    growth = p10 / p1 if p1 and p10 else None
    nc1 = by["(d) no collect 1k, per event"]["piton"]
    nc10 = by["(d) no collect 10k, per event"]["piton"]
    goals = {
        "chain_ratio_at_least_3": chain is not None and chain >= GOAL_RATIO,
        "fanout_ratio_at_least_3": fan is not None and fan >= GOAL_RATIO,
        "fanout_linear": growth is not None and growth <= LINEAR_LIMIT,
    }
    return {
        "table": table,
        "piton_fanout_growth_10k_over_1k": growth,
        "piton_no_collect_growth_10k_over_1k": nc10 / nc1 if nc1 and nc10 else None,
        "goals": goals,
    }


def print_report(summary: dict[str, Any]) -> None:
    rows = []
    for r in summary["table"]:
        ratio = r["ratio"]
        ratio_s = "-" if ratio is None else (">" if r["llama_cut_off"] else "") + f"{ratio:.1f}x"
        rows.append(
            [
                r["workload"],
                r["unit"],
                fmt(r["piton"]),
                fmt(r["llama"], r["llama_cut_off"]),
                ratio_s,
            ]
        )
    columns = [("workload", "<32"), ("unit", ">4"), ("piton", ">12"), ("llama", ">14")]
    print_columns([*columns, ("llama/piton", ">12")], rows)
    growth = summary["piton_fanout_growth_10k_over_1k"]
    nc_growth = summary["piton_no_collect_growth_10k_over_1k"]
    print()
    if growth is not None:
        shape = "linear" if growth <= LINEAR_LIMIT else "NOT linear"
        print(
            f"piton fan-out, per-event cost at 10k / at 1k: {growth:.2f} "
            f"({shape}; linear means <= {LINEAR_LIMIT}, quadratic would be ~10)"
        )
    if nc_growth is not None:
        print(f"piton no-collect fan-out, per-event cost at 10k / at 1k: {nc_growth:.2f}")
    goals = summary["goals"]
    print()
    print(
        f"goal: llama/piton >= {GOAL_RATIO:g} on (a) chain ........ "
        + verdict(goals["chain_ratio_at_least_3"])
    )
    print(
        f"goal: llama/piton >= {GOAL_RATIO:g} on (b) fan-out 1k ... "
        + verdict(goals["fanout_ratio_at_least_3"])
    )
    print("goal: piton fan-out cost linear in events ..... " + verdict(goals["fanout_linear"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(
        p,
        repeat_help="repetitions for (a), (b), (d) (default 5)",
        quick_help="2 repetitions (1 for 10k) and no llama 10k run: a smoke test, not a measurement",
    )
    p.add_argument(
        "--repeat-10k", type=int, default=None, help="piton repetitions for (c) (default 3)"
    )
    p.add_argument("--skip-llama-10k", action="store_true", help="do not run llama's 10k fan-out")
    p.add_argument(
        "--llama-10k-timeout",
        type=float,
        default=900.0,
        help="time limit in seconds for llama's single 10k run (default 900)",
    )
    p.add_argument(
        "--llama-no-collect-10k",
        action="store_true",
        help="also run llama's 10k no-collect fan-out (d) once, under the same time limit",
    )
    args = p.parse_args(argv)
    check_common_args(p, args)
    if args.quick:
        args.skip_llama_10k = True
    if args.repeat_10k is None:
        args.repeat_10k = 1 if args.quick else 3
    if args.repeat_10k < 1:
        p.error("--repeat-10k must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine_info(("piton", "llama-index-workflows", "pydantic"))
    print_machine(info)
    print()
    res = asyncio.run(measure(args))
    summary = summarize(res)
    summary["load_average_at_end"] = load_average()
    print_report(summary)
    print(f"\nload average at the end: {summary['load_average_at_end']}")
    write_json(args.json, {"machine": info, "args": vars(args), **summary})


if __name__ == "__main__":
    main()
