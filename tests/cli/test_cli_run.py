"""``piton run``, ``piton watch`` and ``piton fork``, run as real subprocesses against
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_runs import HERE, parked_ask, piton, sqlite_or_postgres

from piton.stores.base import open_store


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return sqlite_or_postgres(request, tmp_path)


def popen(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, COLUMNS="250", PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    env.pop("PITON_STORE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "piton", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def status_of(url: str, run_id: str) -> str | None:
    store = open_store(url)
    await store.open()
    try:
        record = await store.get(run_id)
        return None if record is None else record.status
    finally:
        await store.close()


def wait_for_status(url: str, run_id: str, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(status_of(url, run_id)) == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never became {wanted}")


def test_run_prints_progress_and_the_result(url: str, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    proc = popen(
        "run",
        "cli_flows:Chain",
        "--arg",
        "n=5",
        "--arg",
        f"log={log}",
        "--run-id",
        "chain-1",
        "--store",
        url,
    )
    wait_for_status(url, "chain-1", "parked")
    sent = piton(
        "send",
        "chain-1",
        "CliReply",
        "--data",
        '{"text": "yes"}',
        "-w",
        "cli_flows:Chain",
        "--store",
        url,
    )
    assert sent.returncode == 0, sent.stderr
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"n": 6, "answer": "yes"}
    assert "run chain-1 of Chain" in err
    assert "done -> Tally" in err and "waits for CliReply" in err
    assert "answer with piton send chain-1 CliReply" in err
    assert "completed in" in err and "2 step(s)" in err
    assert log.read_text().split() == ["first"]
    assert asyncio.run(status_of(url, "chain-1")) == "completed"


def test_run_reads_a_json_file_and_quiet_prints_only_the_result(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'r.db'}"
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"message": "from a file"}))
    out = piton("run", "cli_flows:Echo", "--json", str(args), "-q", "--store", store)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "echo: from a file" and out.stderr == ""
    # --arg overrides the file, and a value that is not JSON is a string
    out = piton(
        "run", "cli_flows:Echo", "--json", str(args), "--arg", "message=x y", "-q", "--store", store
    )
    assert out.stdout.strip() == "echo: x y"


def test_run_refuses_bad_arguments_with_exit_2(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'r.db'}"
    bad = piton("run", "cli_flows:Chain", "--arg", "n=many", "--store", store)
    assert bad.returncode == 2
    assert "do not make a Counted" in bad.stderr and "n" in bad.stderr
    assert piton("run", "cli_flows:Chain", "--arg", "n", "--store", store).returncode == 2
    missing = piton("run", "nosuchmodule:Flow", "--store", store)
    assert missing.returncode == 2 and "no module named 'nosuchmodule'" in missing.stderr
    not_json = tmp_path / "x.json"
    not_json.write_text("[1, 2]")
    listed = piton("run", "cli_flows:Echo", "--json", str(not_json), "--store", store)
    assert listed.returncode == 2 and "not an object" in listed.stderr
    # nothing was started by a refused command
    assert json.loads(piton("runs", "--store", store, "--json").stdout) == []


def test_a_failing_run_exits_1_with_its_error(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'r.db'}"
    out = piton("run", "cli_flows:Boom", "--run-id", "boom", "--store", store)
    assert out.returncode == 1
    assert "Run 'boom' failed: ValueError: the input is bad" in out.stderr
    assert asyncio.run(status_of(store, "boom")) == "failed"


def test_ctrl_c_leaves_the_run_resumable(url: str, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    proc = popen(
        "run",
        "cli_flows:Slow",
        "--arg",
        "n=21",
        "--arg",
        f"log={log}",
        "--run-id",
        "slow-1",
        "--store",
        url,
    )
    deadline = time.monotonic() + 20
    while "second" not in (log.read_text().split() if log.exists() else []):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "run 'slow-1' is resumable: piton resume slow-1 -w cli_flows:Slow" in err
    assert asyncio.run(status_of(url, "slow-1")) == "running"  # not finished, not lost
    resumed = piton("resume", "slow-1", "-w", "cli_flows:Slow", "--store", url)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "42"
    # the committed step did not run again; the interrupted one did
    assert log.read_text().split() == ["first", "second", "second"]


def test_watch_follows_a_run_live_from_a_cursor(url: str, tmp_path: Path) -> None:
    proc = popen("run", "cli_flows:Chain", "--arg", "n=1", "--run-id", "w-1", "--store", url)
    wait_for_status(url, "w-1", "parked")
    watcher = popen("watch", "w-1", "--json", "--store", url)
    time.sleep(0.5)  # the watcher prints what is there, then waits
    assert watcher.poll() is None
    piton(
        "send",
        "w-1",
        "CliReply",
        "--data",
        '{"text": "ok"}',
        "-w",
        "cli_flows:Chain",
        "--store",
        url,
    )
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    items = [json.loads(line) for line in out.splitlines()]
    assert [(i["id"], i["type"]) for i in items] == [(0, "Tally"), (1, "StopEvent")]
    assert items[0]["data"] == {"n": 1}
    assert items[1]["data"]["result"] == {"n": 2, "answer": "ok"}
    assert "run w-1 completed" in err
    proc.communicate(timeout=30)
    # from a cursor, on a finished run: the rest, then exit at once
    later = piton("watch", "w-1", "--cursor", "1", "--store", url)
    assert later.returncode == 0, later.stderr
    assert later.stdout.splitlines() == ['[1] StopEvent {"result": {"n": 2, "answer": "ok"}}']


def test_watch_exits_1_for_a_failed_or_unknown_run(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'r.db'}"
    piton("run", "cli_flows:Boom", "--run-id", "boom", "--store", store)
    failed = piton("watch", "boom", "--store", store)
    assert failed.returncode == 1 and "run boom failed" in failed.stderr
    assert "ValueError" in failed.stderr
    unknown = piton("watch", "nope", "--store", store)
    assert unknown.returncode == 1 and "No run 'nope'" in unknown.stderr


def test_fork_branches_a_run_from_an_earlier_entry(url: str) -> None:
    proc = popen("run", "cli_flows:Chain", "--arg", "n=1", "--run-id", "f-1", "--store", url)
    wait_for_status(url, "f-1", "parked")
    piton(
        "send",
        "f-1",
        "CliReply",
        "--data",
        '{"text": "yes"}',
        "-w",
        "cli_flows:Chain",
        "--store",
        url,
    )
    out, err = proc.communicate(timeout=30)
    assert json.loads(out) == {"n": 2, "answer": "yes"}, err
    shown = json.loads(piton("show", "f-1", "--json", "--store", url).stdout)
    waits = [row["seq"] for row in shown["timeline"] if row["kind"] == "StepWaits"]
    assert waits, shown["timeline"]
    forked = piton(
        "fork",
        "f-1",
        "--at",
        str(waits[0]),
        "--run-id",
        "f-2",
        "-w",
        "cli_flows:Chain",
        "--store",
        url,
    )
    assert forked.returncode == 0, forked.stderr
    assert forked.stdout.strip() == "f-2"
    assert "piton resume f-2" in forked.stderr
    assert asyncio.run(status_of(url, "f-2")) == "running"  # for a worker or resume to take
    sent = piton(
        "send",
        "f-2",
        "CliReply",
        "--data",
        '{"text": "no"}',
        "-w",
        "cli_flows:Chain",
        "--store",
        url,
    )
    assert sent.returncode == 0, sent.stderr
    resumed = piton("resume", "f-2", "-w", "cli_flows:Chain", "--store", url)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"n": 2, "answer": "no"}
    items = [
        json.loads(line)
        for line in piton("watch", "f-2", "--json", "--store", url).stdout.splitlines()
    ]
    assert [i["type"] for i in items] == ["Tally", "StopEvent"]
    # the source run is unchanged
    again = json.loads(piton("show", "f-1", "--json", "--store", url).stdout)
    assert again["status"] == "completed" and again["timeline"] == shown["timeline"]


def test_fork_refuses_bad_points(url: str) -> None:
    asyncio.run(parked_ask(url, "ask-1"))
    shown = json.loads(piton("show", "ask-1", "--json", "--store", url).stdout)
    kinds = {row["seq"]: row["kind"] for row in shown["timeline"]}
    last = max(kinds)
    too_far = piton("fork", "ask-1", "--at", str(last + 5), "-w", "cli_flows:Ask", "--store", url)
    assert too_far.returncode == 1 and f"entries 1..{last}" in too_far.stderr
    inner = [seq for seq, kind in kinds.items() if kind in ("SetState", "StreamWrite")]
    for seq in inner:
        mid = piton("fork", "ask-1", "--at", str(seq), "-w", "cli_flows:Ask", "--store", url)
        assert mid.returncode == 1 and "middle of a commit" in mid.stderr
    unknown = piton("fork", "nope", "--at", "1", "-w", "cli_flows:Ask", "--store", url)
    assert unknown.returncode == 1 and "No run 'nope'" in unknown.stderr
    taken = piton(
        "fork", "ask-1", "--at", "1", "--run-id", "ask-1", "-w", "cli_flows:Ask", "--store", url
    )
    assert taken.returncode == 1 and "already exists" in taken.stderr


def test_fork_of_a_finished_point_is_refused(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'r.db'}"
    assert piton("run", "cli_flows:Echo", "--run-id", "e", "--arg", "message=hi", "-q", "--store", store).returncode == 0
    shown = json.loads(piton("show", "e", "--json", "--store", store).stdout)
    last = shown["timeline"][-1]["seq"]
    out = piton("fork", "e", "--at", str(last), "-w", "cli_flows:Echo", "--store", store)
    assert out.returncode == 1 and "already finished (completed)" in out.stderr
    first = piton("fork", "e", "--at", "1", "-w", "cli_flows:Echo", "--store", store)
    assert first.returncode == 0, first.stderr
    new = first.stdout.strip()
    resumed = piton("resume", new, "-w", "cli_flows:Echo", "--store", store)
    assert resumed.returncode == 0 and resumed.stdout.strip().startswith("echo: ")


@pytest.mark.parametrize("command", ["run", "watch", "fork"])
def test_help_has_an_example(command: str) -> None:
    out = piton(command, "--help")
    assert out.returncode == 0 and "Examples:" in out.stdout and f"piton {command} " in out.stdout
