"""Child processes that report JSON lines on stdout, for tests that kill them."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROMISE_CHILD = Path(__file__).with_name("promise_child.py")


class Child:
    """``python promise_child.py '<json>'``; ``record(key)`` waits for a line with ``key``."""

    def __init__(self, opts: dict[str, Any], env: dict[str, str]) -> None:
        self.opts = opts
        self._stderr = tempfile.TemporaryFile("w+")  # a pipe could fill and block the child
        self.proc = subprocess.Popen(
            [sys.executable, str(PROMISE_CHILD), json.dumps(opts)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, **env},
        )
        self.records: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.records.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.records.put(None)

    def record(self, key: str, timeout: float) -> dict[str, Any]:
        """The first reported line that holds ``key``; fails on exit or timeout."""
        return self.record_any((key,), timeout)

    def record_any(self, keys: tuple[str, ...], timeout: float) -> dict[str, Any]:
        """The first reported line that holds one of ``keys``; fails on exit or timeout."""
        key = " or ".join(keys)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                got = self.records.get(timeout=max(left, 0.01))
            except queue.Empty:
                self.kill()
                raise AssertionError(
                    f"{self.opts['mode']} process reported no {key!r} within {timeout} s "
                    f"(saw {self.seen}){self.stderr()}"
                ) from None
            if got is None:
                self.records.put(None)
                raise AssertionError(
                    f"{self.opts['mode']} process exited ({self.proc.wait()}) without "
                    f"reporting {key!r} (saw {self.seen}){self.stderr()}"
                )
            self.seen.append(got)
            if set(keys) & set(got):
                return got

    def stderr(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().strip()
        return f"\n--- stderr ---\n{text[-3000:]}" if text else ""

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.opts['mode']} process did not exit within {timeout} s"
            ) from None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
