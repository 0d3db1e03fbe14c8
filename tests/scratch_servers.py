"""Scratch PostgreSQL and Redis servers that a test may stop, kill and restart.

The shared servers (5432, 6379) are never restarted by a test: other tests use them. A
fault test starts servers of its own, on free ports, with their data in a temporary
directory, and removes them at the end:

    with ScratchPostgres.started() as pg:      # initdb + pg_ctl start, ~0.5 s
        url = pg.url("test_db")
        pg.restart(mode="immediate")            # a crash: WAL recovery on start
    with ScratchRedis.started() as rd:         # appendonly yes, appendfsync always
        rd.restart(kill=True)                   # SIGKILL, then start on the same AOF

``find_postgres()`` / ``find_redis()`` return None when the binaries are missing; the
fixtures in test files skip then (or fail under ``PITON_REQUIRE_SERVICES=1``). PostgreSQL
refuses to run as root: as root, its commands run as the ``postgres`` user (runuser), and
the data directory is made theirs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.02)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# --- PostgreSQL ---------------------------------------------------------------------------


def find_postgres() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _as_postgres() -> list[str]:
    """The prefix that runs a command as a user PostgreSQL accepts (not root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"]
    return ["su", "postgres", "-s", "/bin/sh", "-c"]  # pragma: no cover - one string


class ScratchPostgres:
    """A PostgreSQL cluster of its own in a temporary directory, on a free port."""

    def __init__(self, bindir: Path, base: Path, port: int) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.port = port
        self.log = base / "server.log"

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[ScratchPostgres]:
        bindir = find_postgres()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL's pg_ctl and initdb are not installed")
        base = Path(tempfile.mkdtemp(prefix="piton-scratch-pg-"))
        if os.geteuid() == 0:
            os.chown(base, pwd.getpwnam("postgres").pw_uid, -1)
        server = cls(bindir, base, free_port())
        try:
            server._run(
                "initdb", "-D", str(server.data), *"-A trust -U postgres -E UTF8 --no-sync".split()
            )
            server.start()
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop(mode="immediate")
            shutil.rmtree(base, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, tool: str, *args: str) -> None:
        command = [*_as_postgres(), str(self.bindir / tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def _options(self) -> str:
        # fsync=off: the tests crash the server process, never the machine
        return (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=60"
        )

    def running(self) -> bool:
        return _listening(self.port)

    def start(self) -> None:
        data, log = str(self.data), str(self.log)
        self._run("pg_ctl", "-D", data, "-o", self._options(), "-l", log, "-w", "-t", "30", "start")
        _wait_until(self.running, 10, "PostgreSQL did not listen")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown (sessions ended); ``immediate``: like a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


# --- Redis ----------------------------------------------------------------------------------


def find_redis() -> str | None:
    return shutil.which("redis-server")


class ScratchRedis:
    """A redis-server of its own, persisting to an append-only file (fsync on every write)
    in a temporary directory, so a restart (even a SIGKILL) keeps every acknowledged write."""

    def __init__(self, binary: str, base: Path, port: int) -> None:
        self.binary = binary
        self.base = base
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[ScratchRedis]:
        binary = find_redis()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        base = Path(tempfile.mkdtemp(prefix="piton-scratch-redis-"))
        server = cls(binary, base, free_port())
        try:
            server.start()
            yield server
        finally:
            server.stop(kill=True)
            shutil.rmtree(base, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None and _listening(self.port)

    def start(self) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.base),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.base / "server.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _wait_until(self.running, 10, "redis-server did not listen")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown) or SIGKILL (a crash); wait for the process to end."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        process.wait(timeout=30)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


__all__ = ["ScratchPostgres", "ScratchRedis", "find_postgres", "find_redis", "free_port"]
