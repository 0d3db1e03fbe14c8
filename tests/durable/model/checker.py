"""Runs one schedule (``schedule.py``) as real processes against a store, then checks
what the processes logged and what the store holds against the promises:

- every sent Answer was consumed exactly once (promise 10): the run's result lists the
  payloads of the sends, each as often as it was sent;
- every fact a listener saw is in the durable history (promise 9): the stored stream holds
  the same event at the same position;
- each run ends exactly once (one StopEvent in its stored stream) with the result of an
  uninterrupted in-memory run (promises 1-5);
- no committed step ran again (promise 1): a side-effect line repeats only after the
  process that wrote the earlier copy was gone (killed or left), never in the same process;
- no run is stuck (promise 11): ``store.stuck()`` finds none of the schedule's runs once
  its processes are gone, and a final "drain" process (a worker plus an attached handler
  per run, sending what the schedule never got to send) finishes every run in time.

Each problem names the seed and the promise; ``PITON_MODEL_SEED=<seed>`` replays one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import read_json
from .model_flow import Answer, ModelFlow, expected_keys, reference
from .schedule import ProcSpec, Schedule
from .targets import query

ACTOR = Path(__file__).with_name("actor.py")
DRAIN_DEADLINE = 10.0  # seconds the drain has to finish every run
SEND_SETTLE = 3.0  # at the end, how long a send in flight may take before the kill


@dataclass
class Observation:
    """What a schedule left: process logs, side effects, the store's view of each run."""

    logs: list[dict[str, Any]] = field(default_factory=list)
    effects: list[dict[str, Any]] = field(default_factory=list)
    ended: dict[int, float] = field(default_factory=dict)  # pid -> when it was gone
    kills: int = 0
    sends: int = 0
    stuck: list[str] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    streams: dict[str, list[str]] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)  # kept events and waiters, if shown
    kept: dict[str, list[str]] = field(default_factory=dict)  # kept Answers' payloads
    answered: dict[str, int] = field(default_factory=dict)  # answers an unfinished run took
    drain_rc: int | None = None


class Proc:
    def __init__(self, spec: ProcSpec, plan: dict[str, Any], workdir: Path) -> None:
        self.spec = spec
        self.log = plan["log"]
        self.out = open(workdir / f"{spec.name}.err", "w")  # noqa: SIM115 - closed in reap
        self.popen = subprocess.Popen(
            [sys.executable, str(ACTOR), json.dumps(plan)],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> float:
        at = time.time()
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        return at

    def sending(self) -> bool:
        """A send started and not yet returned, by this process's log."""
        kinds = Counter(r["kind"] for r in read_json(self.log))
        return kinds["sending"] > kinds["sent"]


def _plan(spec: ProcSpec, url: str, workdir: Path, deadline: float) -> dict[str, Any]:
    return {
        "url": url,
        "log": str(workdir / f"{spec.name}.jsonl"),
        "effects": str(workdir / "effects.jsonl"),
        "actions": spec.actions,
        "fate": spec.fate,
        "at": spec.at,
        "deadline": deadline,
    }


def _references(schedule: Schedule, out: dict[str, Any]) -> threading.Thread:
    async def compute() -> None:
        results = await asyncio.gather(*(reference(r.n, r.k, r.payloads) for r in schedule.runs))
        out.update({r.run_id: res for r, res in zip(schedule.runs, results, strict=True)})

    thread = threading.Thread(target=lambda: asyncio.run(compute()), daemon=True)
    thread.start()
    return thread


def run_schedule(schedule: Schedule, url: str, workdir: Path) -> Observation:
    workdir.mkdir(parents=True, exist_ok=True)
    obs = Observation()
    refs = _references(schedule, obs.expected)
    started = time.monotonic()
    procs = [
        Proc(s, _plan(s, url, workdir, schedule.duration + 1), workdir) for s in schedule.procs
    ]
    external = {p.spec.name: p.spec.at for p in procs if p.spec.fate == "kill" and not p.spec.sends}
    while time.monotonic() - started < schedule.duration and any(p.alive() for p in procs):
        now = time.monotonic() - started
        for p in procs:
            if p.spec.name in external and external[p.spec.name] <= now and p.alive():
                obs.ended[p.popen.pid] = p.kill()
                obs.kills += 1
            elif not p.alive():
                obs.ended.setdefault(p.popen.pid, time.time())
        time.sleep(0.01)
    settle = time.monotonic() + SEND_SETTLE
    while any(p.alive() and p.sending() for p in procs) and time.monotonic() < settle:
        time.sleep(0.01)
    for p in procs:
        if p.alive():
            obs.kills += 1
            obs.ended[p.popen.pid] = p.kill()
        obs.ended.setdefault(p.popen.pid, time.time())
        if p.spec.fate == "kill" and p.spec.sends and p.popen.returncode == -signal.SIGKILL:
            obs.kills += 1
        p.out.close()

    obs.stuck = _stuck(url, [r.run_id for r in schedule.runs])
    _drain(schedule, url, workdir, obs)
    for path in sorted(workdir.glob("*.jsonl")):
        if path.name != "effects.jsonl":
            obs.logs.extend(read_json(path))
    obs.effects = read_json(workdir / "effects.jsonl")
    obs.sends = sum(1 for r in obs.logs if r["kind"] == "sent")
    _read_store(url, schedule, obs)
    refs.join(60)
    return obs


def _stuck(url: str, run_ids: list[str]) -> list[str]:
    """The schedule's runs that nothing will move: ``store.stuck()`` where the store has
    it, else the same rule read from each run's record."""

    async def ask(store: Any) -> list[str]:
        try:
            records = await store.stuck(limit=1000)
        except (AttributeError, NotImplementedError):
            records = [r for r in [await store.get(i) for i in run_ids] if r and _looks_stuck(r)]
        return [
            f"{r.run_id} ({r.status}, {r.waiters} waiters)" for r in records if r.run_id in run_ids
        ]

    return query(url, ask)


def _looks_stuck(record: Any) -> bool:
    return (
        record.status == "parked"
        and not record.inbox
        and record.wake_at is None
        and not int(getattr(record, "waiters", 0) or 0)
    )


def _drain(schedule: Schedule, url: str, workdir: Path, obs: Observation) -> None:
    """A last process: a worker, every run attached (started if it never was), and every
    send the schedule never began; it stays until all runs end or DRAIN_DEADLINE."""
    began = {r["send_id"] for p in workdir.glob("*.jsonl") for r in read_json(p) if "send_id" in r}
    actions: list[dict[str, Any]] = [{"do": "worker", "at": 0.0}]
    for run in schedule.runs:
        actions.append({"do": "start", "run": run.run_id, "n": run.n, "k": run.k, "at": 0.0})
        for j, payload in enumerate(run.payloads):
            send_id = f"{run.run_id}/{j}"
            if send_id not in began:
                actions.append(
                    {"do": "send", "run": run.run_id, "payload": payload, "send_id": send_id,
                     "when": "early", "at": 0.0}
                )  # fmt: skip
    spec = ProcSpec("drain", actions, "stay")
    proc = Proc(spec, _plan(spec, url, workdir, DRAIN_DEADLINE), workdir)
    try:
        obs.drain_rc = proc.popen.wait(DRAIN_DEADLINE + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        obs.drain_rc = None
    proc.out.close()


def _read_store(url: str, schedule: Schedule, obs: Observation) -> None:
    async def read(store: Any) -> None:
        flow = ModelFlow(store=store)
        for run in schedule.runs:
            record = await store.get(run.run_id)
            obs.records[run.run_id] = record
            if record is None:
                continue
            obs.streams[run.run_id] = (await store.load(run.run_id)).stream
            if hasattr(flow, "get_run"):  # the run's state: kept events, waiters
                view = await flow.get_run(run.run_id)
                obs.kept[run.run_id] = [ev.payload for ev in view.kept if isinstance(ev, Answer)]
                obs.views[run.run_id] = f"waiting {view.waiting}, kept {view.kept}"
                # the ask step waits for answer-j only once it took answers 0..j-1
                asks = [w.waiter_id for w in view.waiting if w.waiter_id.startswith("answer-")]
                if asks:
                    obs.answered[run.run_id] = int(asks[0].removeprefix("answer-"))

    query(url, read)


# -- the checks ---------------------------------------------------------------------------------


def _brief(record: Any) -> str:
    wake = "none" if record.wake_at is None else f"in {record.wake_at - time.time():.0f} s"
    return (
        f"status {record.status}, owner {record.owner}, inbox {record.inbox}, "
        f"waiters {getattr(record, 'waiters', '?')}, wake-up {wake}, seq {record.seq}"
    )


def _decode(text: str) -> tuple[str, dict[str, Any]]:
    payload = json.loads(text)
    return str(payload.get("type", "")).rsplit(".", 1)[-1], payload.get("data") or {}


def check(schedule: Schedule, obs: Observation) -> list[str]:
    problems: list[str] = []
    if obs.stuck:
        problems.append(f"[promise 11] stuck once the processes were gone: {obs.stuck}")
    if obs.drain_rc is None:
        problems.append("[promise 11] the drain process hung past its deadline")
    for run in schedule.runs:
        problems += _check_run(run.run_id, run.n, schedule, obs)
    return [f"seed {schedule.seed}: {p}" for p in problems]


def _check_run(run_id: str, n: int, schedule: Schedule, obs: Observation) -> list[str]:
    problems: list[str] = []
    record = obs.records.get(run_id)
    expected = obs.expected.get(run_id)
    logs = [r for r in obs.logs if r.get("run") == run_id]
    sent = Counter(r["payload"] for r in logs if r["kind"] == "sent")
    # a send whose process was killed before it returned may have landed or not: it counts
    # zero or one time; a send that returned must be consumed once or kept (promise 10)
    began = {r["send_id"]: r["payload"] for r in logs if r["kind"] == "sending"}
    confirmed = {r["send_id"] for r in logs if r["kind"] == "sent"}
    unsure = Counter(p for sid, p in began.items() if sid not in confirmed)
    kept = Counter(obs.kept.get(run_id, []))
    spec = next(r for r in schedule.runs if r.run_id == run_id)
    if record is None or record.status != "completed":
        state = "no record" if record is None else _brief(record)
        took = obs.answered.get(run_id)
        landed = None if took is None else took + sum(kept.values())
        explained = (
            unsure
            and landed is not None
            and sum(sent.values()) <= landed <= sum(sent.values()) + sum(unsure.values())
            and record is not None
            and record.status == "parked"
        )
        if not explained:  # waiting for an answer whose send may never have landed is fine
            problems.append(
                f"[promise 10/11] run {run_id} never completed (sent {dict(sent)} of "
                f"{spec.payloads}, unconfirmed {dict(unsure)}): {state}; "
                f"{obs.views.get(run_id, '')}"
            )
    else:
        result = json.loads(record.result)["data"]["result"]
        if result != expected:
            problems.append(f"[promise 1-5] run {run_id} ended with {result}, expected {expected}")
        if kept:  # unconfirmed sends are never sent again, so a completed run keeps none
            problems.append(
                f"[promise 10] run {run_id} completed yet keeps answers {obs.kept[run_id]}: "
                "an event both consumed and kept"
            )
        took_all = Counter(result.get("answers", [])) + kept
        missing = sent - took_all
        extra = took_all - sent - unsure
        if missing or extra:
            problems.append(
                f"[promise 10] run {run_id} consumed answers {result.get('answers')} and keeps "
                f"{dict(kept)}, sent {dict(sent)} (unconfirmed {dict(unsure)})"
            )
    for r in logs:
        if r["kind"] == "result" and r["value"] != expected:
            problems.append(f"[promise 3] pid {r['pid']} got {r['value']} for {run_id}")
        if r["kind"] == "error":
            problems.append(f"[promise 3] pid {r['pid']} got an error for {run_id}: {r['error']}")
    problems += _check_stream(run_id, logs, obs.streams.get(run_id, []))
    problems += _check_effects(run_id, n, obs, completed=record is not None and record.finished)
    return problems


def _check_stream(run_id: str, logs: list[dict[str, Any]], stream: list[str]) -> list[str]:
    problems = []
    stored = [_decode(text) for text in stream]
    stops = [name for name, _ in stored if name.endswith("StopEvent")]
    if len(stops) > 1:
        problems.append(f"[promise 3] run {run_id} ended {len(stops)} times: {stops}")
    for r in logs:
        if r["kind"] != "seen":
            continue
        i = r["index"]
        name, data = stored[i] if i < len(stored) else ("<nothing>", {})
        same = name == r["type"] and all(
            data.get(key) == value for key, value in r["data"].items() if value is not None
        )
        if not same:
            problems.append(
                f"[promise 9] pid {r['pid']} saw {r['type']} {r['data']} at position {i} of "
                f"{run_id}'s stream, but the store holds {name} {data} there"
            )
    return problems


def _check_effects(run_id: str, n: int, obs: Observation, *, completed: bool) -> list[str]:
    problems = []
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in obs.effects:
        if line["run"] == run_id:
            copies[line["key"]].append(line)
    keys = expected_keys(n)
    if set(copies) - keys:
        problems.append(f"[model] run {run_id} has unknown side effects {set(copies) - keys}")
    if completed and keys - set(copies):
        problems.append(f"[promise 1] run {run_id} completed without {sorted(keys - set(copies))}")
    gone = dict(obs.ended)
    for r in obs.logs:
        if r["kind"] in ("exit", "selfkill"):
            gone[r["pid"]] = min(gone.get(r["pid"], r["t"]), r["t"])
    for key, lines in copies.items():
        lines.sort(key=lambda line: line["t"])
        for earlier, later in zip(lines, lines[1:], strict=False):
            if earlier["pid"] == later["pid"]:
                problems.append(
                    f"[promise 1] step {key} of {run_id} ran twice in one process (pid {later['pid']})"
                )
            elif gone.get(earlier["pid"], float("inf")) > later["t"] + 0.01:
                problems.append(
                    f"[promise 1/5] step {key} of {run_id} ran again in pid {later['pid']} while "
                    f"pid {earlier['pid']}, which ran it first, was still alive"
                )
    return problems
