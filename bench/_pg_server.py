"""The PostgreSQL server of bench/postgres.py, outside the timings: the URL it is given,
what it says about itself (settings, data directory, checkpoints, transaction ids), the
scratch schemas, and who else uses it.

- ``APP``: the ``application_name`` of every connection of the benchmark, so any other
  session is another client's;
- ``Admin``: a plain (blocking) connection for setup, accounting and cleanup;
- ``Watcher``: a thread sampling other programs' busy sessions during the measurement;
- ``with_query``, ``redact``: URL helpers.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_URL = os.environ.get("PITON_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
# every connection of this benchmark names itself so: any other session is another client's
APP = f"piton-bench-{os.getpid()}"
SETTINGS = (
    "server_version",
    "synchronous_commit",
    "fsync",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "checkpoint_timeout",
    "max_wal_size",
)


def with_query(url: str, **params: str) -> str:
    """``url`` with these query parameters set (replacing any of the same name)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


def redact(url: str) -> str:
    """``url`` without its password, for the report."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


# -- the server, outside the timings ----------------------------------------------------------


class Admin:
    """A plain (blocking) connection for setup, accounting and cleanup, never used while timing."""

    def __init__(self, url: str, prefix: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, application_name=APP)
        self.prefix = prefix
        self.schemas: list[str] = []

    def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def schema(self, suffix: str) -> str:
        """A scratch schema, created now and dropped by ``drop()``."""
        name = f"{self.prefix}_{suffix}"
        self.schemas.append(name)
        self.conn.execute(f'CREATE SCHEMA "{name}"')
        return name

    def drop(self) -> list[str]:
        dropped = []
        for name in self.schemas:
            self.conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            dropped.append(name)
        self.schemas.clear()
        return dropped

    def settings(self) -> dict[str, str]:
        return {name: self.value(f"SHOW {name}") for name in SETTINGS}

    def data_directory(self) -> str:
        """Where the server keeps its files, and on which filesystem (if the server is local)."""
        try:
            path = self.value("SHOW data_directory")
        except Exception as exc:  # not a superuser
            self.conn.rollback()
            return f"unknown ({type(exc).__name__})"
        mount = ("", "?", "?")
        try:
            with open("/proc/mounts") as f:
                for line in f:
                    device, point, fstype = line.split()[:3]
                    inside = path == point or path.startswith(point.rstrip("/") + "/")
                    if inside and len(point) >= len(mount[0]):
                        mount = (point, device, fstype)
        except OSError:
            pass
        if not os.path.isdir(path) or not mount[0]:
            return f"{path} (not on this machine, or not visible to this user)"
        return f"{path} ({mount[2]} on {mount[1]}, mounted at {mount[0]})"

    def checkpoints(self) -> int:
        """Checkpoints the server made so far (they make the next commits write more WAL)."""
        try:  # PostgreSQL 17 and later
            return int(
                self.value("SELECT num_timed + num_requested FROM pg_stat_checkpointer") or 0
            )
        except Exception:
            return int(
                self.value("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter") or 0
            )

    def next_xid(self) -> int:
        """The next transaction id: the server assigns one to every transaction (and
        subtransaction) that writes, so the difference counts write transactions, server-wide.
        Reading it assigns none."""
        return int(self.value("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"))

    def other_sessions(self) -> int:
        """Client connections of other programs to the server: other users of the server."""
        return int(self.value(_FOREIGN.format(states="")))

    def pair(self, sql: str) -> tuple[int, int]:
        """The first two columns of the one row ``sql`` returns, as ints."""
        row = self.conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def journal(self, schema: str) -> tuple[int, int]:
        """(journal rows, their total size) in piton's tables in ``schema``."""
        return self.pair(
            f'SELECT COUNT(*), COALESCE(SUM(octet_length(entry)), 0) FROM "{schema}".journal'
        )

    def completed(self, schema: str) -> tuple[int, int]:
        """(runs completed, runs) in piton's tables in ``schema``."""
        return self.pair(
            f"SELECT COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FROM \"{schema}\".runs"
        )

    def dbos_checkpoints(self, schema: str, prefix: str) -> tuple[int, int]:
        """(step rows in operation_outputs, succeeded workflows) for the ids with this prefix."""
        steps = self.value(
            f'SELECT COUNT(*) FROM "{schema}".operation_outputs WHERE workflow_uuid LIKE %s',
            (prefix + "%",),
        )
        done = self.value(
            f'SELECT COUNT(*) FROM "{schema}".workflow_status WHERE workflow_uuid LIKE %s '
            "AND status = 'SUCCESS'",
            (prefix + "%",),
        )
        return int(steps), int(done)

    def close(self) -> None:
        self.conn.close()


_FOREIGN = (
    "SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
    f"AND application_name <> '{APP}' AND pid <> pg_backend_pid(){{states}}"
)


class Watcher:
    """Samples, on a thread of its own and a connection of its own, how many other
    programs' sessions are busy on the server (running a statement or inside a
    transaction), every ``period`` seconds: the benchmark's figures are only its own when
    there are none."""

    def __init__(self, url: str, period: float = 0.25) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, application_name=APP)
        self.period = period
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="bench-watcher", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        sql = _FOREIGN.format(states=" AND state <> 'idle'")
        while not self.stop.wait(self.period):
            row = self.conn.execute(sql).fetchone()
            self.samples.append(int(row[0]) if row else 0)

    def close(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self.conn.close()
        busy = [n for n in self.samples if n]
        return {
            "samples": len(self.samples),
            "share_with_other_sessions_busy": len(busy) / max(len(self.samples), 1),
            "most_other_sessions_busy": max(self.samples, default=0),
        }
