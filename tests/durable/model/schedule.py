"""Seeded random schedules for the model checker: which runs, which processes, what each
does and how it ends. A pure function of the seed: ``make_schedule(seed)``.

A process's actions (see ``actor.py``): ``start`` a run (or ``queue`` it for a worker with
``Workflow.start`` and follow it with ``Workflow.result``), ``attach`` to one (resume it or
follow it), ``send`` an Answer to one (through a handler, or ``via`` the inbox with
``Workflow.send_event``), run a ``worker`` (none, one, or two racing for claims). Every process listens to the runs
it touches and logs what it sees. Its fate: ``stay`` (until its runs end or the schedule's
time is up, then it is SIGKILLed), ``exit`` (its event loop ends at a time: a clean exit),
``kill`` (SIGKILL at a time: from the checker, or from itself once its sends returned, so
that a sent event is never in doubt).

Sends: each run waits for ``k`` answers and gets exactly ``k`` sends, ``early`` (as soon as
the run exists, before its waiter usually) or ``late`` (after the sender saw an Ask). With
some probability two sends carry the same payload: "twice" means two distinct
``send_event`` calls, so both must be consumed (the result lists the payload twice); an
engine that deduplicated them by content would leave a waiter without its answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

DURATION = (1.5, 2.5)  # seconds the schedule's processes get before the survivors are killed


@dataclass
class RunSpec:
    run_id: str
    n: int
    k: int
    payloads: list[str]


@dataclass
class ProcSpec:
    name: str
    actions: list[dict[str, Any]]
    fate: str  # stay | exit | kill
    at: float = 0.0  # when the fate strikes (exit, kill)

    @property
    def sends(self) -> bool:
        return any(a["do"] == "send" for a in self.actions)


@dataclass
class Schedule:
    seed: int
    runs: list[RunSpec]
    procs: list[ProcSpec] = field(default_factory=list)
    duration: float = 2.0

    def describe(self) -> str:
        parts = [f"{p.name}:{'+'.join(a['do'] for a in p.actions)}/{p.fate}" for p in self.procs]
        return f"seed {self.seed}: {len(self.runs)} runs, " + ", ".join(parts)


def _fate(rng: random.Random, duration: float, stay: float = 0.4) -> tuple[str, float]:
    roll = rng.random()
    if roll < stay:
        return "stay", 0.0
    kind = "exit" if roll < stay + (1 - stay) / 2 else "kill"
    return kind, rng.uniform(0.2, duration)


def make_schedule(seed: int) -> Schedule:
    rng = random.Random(seed)
    duration = rng.uniform(*DURATION)
    runs = []
    for r in range(rng.randint(1, 2)):
        k = rng.randint(1, 3)
        payloads = [f"s{seed}r{r}a{j}" for j in range(k)]
        if k >= 2 and rng.random() < 0.3:
            payloads[1] = payloads[0]  # sent twice: two sends, one payload
        runs.append(RunSpec(f"s{seed}-r{r}", rng.randint(2, 4), k, payloads))
    schedule = Schedule(seed, runs, duration=duration)
    procs = schedule.procs

    starters = [runs] if len(runs) == 1 or rng.random() < 0.5 else [[run] for run in runs]
    for group in starters:
        how = "queue" if rng.random() < 0.3 else "start"  # queued for a worker, or run here
        actions = [
            {"do": how, "run": run.run_id, "n": run.n, "k": run.k, "at": rng.uniform(0, 0.2)}
            for run in group
        ]
        procs.append(ProcSpec(f"starter{len(procs)}", actions, *_fate(rng, duration)))

    for run in runs:
        for j, payload in enumerate(run.payloads):
            send = {
                "do": "send",
                "run": run.run_id,
                "payload": payload,
                "send_id": f"{run.run_id}/{j}",
                "when": rng.choice(["early", "late"]),
                "via": "inbox" if rng.random() < 0.3 else "handler",
                "at": rng.uniform(0.0, duration * 0.6),
            }
            if procs[-1].sends and rng.random() < 0.3:
                procs[-1].actions.append(send)  # one process sends several answers
                continue
            fate, at = _fate(rng, duration, stay=0.2)
            procs.append(ProcSpec(f"sender{len(procs)}", [send], fate, at))

    for _ in range(rng.randint(0, 2)):
        run = rng.choice(runs)
        action = {"do": "attach", "run": run.run_id, "at": rng.uniform(0.1, duration * 0.8)}
        procs.append(ProcSpec(f"attach{len(procs)}", [action], *_fate(rng, duration)))

    workers = rng.choices([0, 1, 2], weights=[3, 4, 3])[0]  # two workers race for claims
    for _ in range(workers):
        action = {"do": "worker", "at": rng.uniform(0.0, duration * 0.7)}
        fate = rng.choice(["exit", "kill"])
        procs.append(ProcSpec(f"worker{len(procs)}", [action], fate, rng.uniform(0.5, duration)))
    return schedule
