"""docs/scaling-out.md's shell session, for real: three ``piton worker`` processes on one
PostgreSQL database, the submitter, and a process that answers the waiting run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PITON_STORE": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
    }


@pytest.mark.timeout(120)
def test_the_scaling_out_example_runs(postgres_url: str, postgres_schema: str) -> None:
    url = f"{postgres_url}?schema={postgres_schema}"
    env = _env(url)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "piton",
                "worker",
                "examples.scaling_out.flows:Expenses",
                "--concurrency",
                "20",
                "--poll",
                "0.2s",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        submitted = subprocess.run(
            [sys.executable, "-m", "examples.scaling_out.submit"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert submitted.stdout.split() == [
            word
            for who in ("ada", "grace", "linus", "barbara")
            for word in ("queued", f"expense-{who}")
        ]
        check = (
            "import asyncio\n"
            "from examples.scaling_out.flows import Expenses\n"
            "async def main():\n"
            "    w = Expenses()\n"
            "    for who in ('ada', 'linus', 'barbara'):\n"
            "        print(await w.result(f'expense-{who}', timeout=30))\n"
            "    while (await w.get_run('expense-grace')).status != 'parked':\n"
            "        await asyncio.sleep(0.05)\n"
            "    print('grace parked')\n"
            "asyncio.run(main())\n"
        )
        waited = subprocess.run(
            [sys.executable, "-c", check],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert waited.stdout.splitlines() == [
            "ada: 120.00 paid",
            "linus: 35.50 paid",
            "barbara: 980.00 paid",
            "grace parked",
        ]
        answered = subprocess.run(
            [sys.executable, "-m", "examples.scaling_out.answer", "expense-grace", "yes"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert answered.stdout.strip() == "grace: 4200.00 paid by finance"
    finally:
        for p in workers:
            p.send_signal(signal.SIGTERM)
        ended = [p.communicate(timeout=30) for p in workers]
    logs = [err for _, err in ended]
    assert [p.returncode for p in workers] == [0, 0, 0], logs
    assert all("working on Expenses" in log for log in logs), logs
