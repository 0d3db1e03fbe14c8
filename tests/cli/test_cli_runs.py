"""``piton runs`` and ``piton show`` (and the commands that act on runs), run as real
subprocesses against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_flows import Ask, Echo

from piton.stores.base import RunRecord, open_store

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return sqlite_or_postgres(request, tmp_path)


def sqlite_or_postgres(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's store: a SQLite file, or a fresh Postgres schema (``request.param``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    base = request.getfixturevalue("postgres_url")
    return f"{base}?schema={request.getfixturevalue('postgres_schema')}"


def piton(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="250", PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    env.pop("PITON_STORE", None)
    return subprocess.run(
        [sys.executable, "-m", "piton", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


async def finished_echo(url: str, run_id: str) -> None:
    assert await Echo(store=url).run(run_id=run_id, message="hi") == "echo: hi"


async def parked_ask(url: str, run_id: str) -> None:
    """An Ask run parked on its wait_for_event(CliReply)."""
    w = Ask(store=url)
    handler = w.run(run_id=run_id)
    for _ in range(500):
        record = await w.store.get(run_id) if w.store is not None else None
        if record is not None and record.status == "parked":
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the run never parked")
    assert not handler.done() or handler.exception() is None


def test_runs_lists_filters_and_prints_json(url: str) -> None:
    asyncio.run(finished_echo(url, "echo-1"))
    asyncio.run(Ask(store=url).start(run_id="ask-queued"))
    table = piton("runs", "--store", url)
    assert table.returncode == 0, table.stderr
    assert "echo-1" in table.stdout and "ask-queued" in table.stdout
    assert "completed" in table.stdout and "queued" in table.stdout
    out = piton("runs", "--store", url, "--status", "completed", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [(r["run_id"], r["workflow"], r["status"]) for r in listed] == [
        ("echo-1", "Echo", "completed")
    ]
    only = json.loads(piton("runs", "--store", url, "--workflow", "Ask", "--json").stdout)
    assert [r["run_id"] for r in only] == ["ask-queued"]
    assert json.loads(piton("runs", "--store", url, "--limit", "1", "--json").stdout)[0]


def test_runs_refuses_an_unknown_status(tmp_path: Path) -> None:
    out = piton("runs", "--store", f"sqlite:///{tmp_path / 'r.db'}", "--status", "done")
    assert out.returncode == 2
    assert "parked" in out.stderr and "completed" in out.stderr


def test_show_prints_the_record_and_the_journal(url: str) -> None:
    asyncio.run(finished_echo(url, "echo-1"))
    out = piton("show", "echo-1", "--store", url)
    assert out.returncode == 0, out.stderr
    assert "Run echo-1" in out.stdout and "completed" in out.stdout
    assert "start StartEvent" in out.stdout and "done -> StopEvent" in out.stdout
    data = json.loads(piton("show", "echo-1", "--store", url, "--json").stdout)
    assert data["status"] == "completed" and data["run_id"] == "echo-1"
    kinds = [row["kind"] for row in data["timeline"]]
    assert kinds[0] == "Begin" and "StepDone" in kinds
    assert all(row["at"] for row in data["timeline"])


def test_show_says_what_a_parked_run_waits_for(url: str) -> None:
    asyncio.run(parked_ask(url, "ask-1"))
    out = piton("show", "ask-1", "--store", url)
    assert out.returncode == 0, out.stderr
    assert "parked" in out.stdout and "1 waiter(s)" in out.stdout
    assert "waits for CliReply" in out.stdout
    data = json.loads(piton("show", "ask-1", "--store", url, "--json").stdout)
    assert data["waiting"]["waiters"] == 1
    asyncio.run(Ask(store=url).cancel_run("ask-1"))  # leave nothing parked behind


def test_show_an_unknown_run_exits_1(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    out = piton("show", "nope", "--store", url)
    assert out.returncode == 1
    assert f"No run 'nope' in {url}" in out.stderr


def test_every_command_has_help_with_an_example() -> None:
    for command in ("runs", "show", "send", "cancel", "resume", "gc", "doctor"):
        out = piton(command, "--help")
        assert out.returncode == 0 and "Examples:" in out.stdout, command


FLOWS = "cli_flows:Ask"


def test_send_answers_a_parked_run_and_resume_finishes_it(url: str, tmp_path: Path) -> None:
    asyncio.run(parked_ask(url, "ask-1"))
    sent = piton(
        "send", "ask-1", "CliReply", "--data", '{"text": "yes"}', "-w", FLOWS, "--store", url
    )
    assert sent.returncode == 0, sent.stderr
    assert "Sent CliReply to run 'ask-1'" in sent.stdout
    done = piton("resume", "ask-1", "--workflow", FLOWS, "--store", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "answer: yes"
    again = piton(
        "send", "ask-1", "CliReply", "--data", '{"text": "no"}', "-w", FLOWS, "--store", url
    )
    assert again.returncode == 1 and "has finished (completed)" in again.stderr


def test_send_refuses_bad_arguments(url: str) -> None:
    asyncio.run(parked_ask(url, "ask-1"))
    unknown = piton("send", "ask-1", "Nope", "-w", FLOWS, "--store", url)
    assert unknown.returncode == 2 and "CliReply" in unknown.stderr
    bad = piton("send", "ask-1", "CliReply", "--data", "{oops", "-w", FLOWS, "--store", url)
    assert bad.returncode == 2 and "not a JSON object" in bad.stderr
    invalid = piton(
        "send", "ask-1", "CliReply", "--data", '{"txt": 1}', "-w", FLOWS, "--store", url
    )
    assert invalid.returncode == 2 and "does not make a CliReply" in invalid.stderr
    missing = piton(
        "send", "nope", "CliReply", "--data", '{"text": "x"}', "-w", FLOWS, "--store", url
    )
    assert missing.returncode == 1 and "No run 'nope'" in missing.stderr
    no_workflow = piton("send", "ask-1", "CliReply", "--store", url)
    assert no_workflow.returncode == 2 and "--workflow" in no_workflow.stderr
    asyncio.run(Ask(store=url).cancel_run("ask-1"))


def test_cancel_stops_a_parked_run(url: str) -> None:
    asyncio.run(parked_ask(url, "ask-1"))
    out = piton("cancel", "ask-1", "--workflow", FLOWS, "--store", url)
    assert out.returncode == 0, out.stderr
    assert "Asked run 'ask-1' to stop" in out.stdout
    resumed = piton("resume", "ask-1", "--workflow", FLOWS, "--store", url)
    assert resumed.returncode == 1 and "ask-1" in resumed.stderr
    data = json.loads(piton("show", "ask-1", "--store", url, "--json").stdout)
    assert data["status"] == "cancelled"
    gone = piton("cancel", "nope", "--workflow", FLOWS, "--store", url)
    assert gone.returncode == 1 and "No run 'nope'" in gone.stderr


def test_resume_runs_a_queued_run(url: str) -> None:
    asyncio.run(Echo(store=url).start(run_id="echo-q", message="later"))
    out = piton("resume", "echo-q", "--workflow", "cli_flows:Echo", "--store", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "echo: later"
    wrong = piton("resume", "echo-q", "--workflow", FLOWS, "--store", url)
    assert wrong.returncode == 1 and "belongs to workflow 'Echo'" in wrong.stderr


def test_gc_deletes_finished_runs_only(url: str) -> None:
    asyncio.run(finished_echo(url, "echo-1"))
    asyncio.run(Echo(store=url).start(run_id="echo-q", message="later"))
    kept = piton("gc", "--older-than", "30d", "--store", url)
    assert kept.returncode == 0, kept.stderr
    assert "Deleted 0 finished run(s)" in kept.stdout
    out = piton("gc", "--older-than", "0s", "--store", url)
    assert out.returncode == 0, out.stderr
    assert "Deleted 1 finished run(s)" in out.stdout
    left = json.loads(piton("runs", "--store", url, "--json").stdout)
    assert [r["run_id"] for r in left] == ["echo-q"]
    bad = piton("gc", "--older-than", "soon", "--store", url)
    assert bad.returncode == 2 and "not a duration" in bad.stderr


async def plant(url: str, record: RunRecord, entries: list[str]) -> None:
    store = open_store(url)
    await store.open()
    try:
        assert await store.create(record, entries, [])
    finally:
        await store.close()


@pytest.mark.allow_stuck_runs
def test_doctor_lists_stuck_and_unresumable_runs(url: str) -> None:
    healthy = piton("doctor", "--store", url)
    assert healthy.returncode == 0, healthy.stderr
    assert "No stuck runs" in healthy.stdout
    asyncio.run(plant(url, RunRecord(run_id="stuck-1", workflow="Ask", status="parked"), []))
    begin = (
        '{"k":"Begin","at":1.0,"start_event":{"__piton__":"model","type":"gone.Start","data":{}}}'
    )
    broken = RunRecord(run_id="old-1", workflow="Ask", status="parked", waiters=1)
    asyncio.run(plant(url, broken, [begin]))
    out = piton("doctor", "--store", url)
    assert out.returncode == 1
    assert "stuck-1" in out.stdout and "piton cancel" in out.stdout
    assert "old-1" not in out.stdout  # a waiter: not stuck
    data = json.loads(piton("doctor", "-w", FLOWS, "--store", url, "--json").stdout)
    assert [r["run_id"] for r in data["stuck"]] == ["stuck-1"]
    assert [r["run_id"] for r in data["incompatible"]] == ["old-1"]
    other = piton("doctor", "-w", "Echo", "--store", url)
    assert other.returncode == 0 and "No stuck runs of Echo" in other.stdout
