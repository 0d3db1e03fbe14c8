"""The seed's first example: data kept in the workflow instance persists across `run()` calls.

From "Writing durable workflows", section "Storing data in the workflow instance", with
only the imports changed. `Client` is a tiny stand-in for a database client: an in-memory
SQLite connection with an `exec` method. The same client object, created once, serves
every `run()` of the workflow instance; a new process would start from nothing.

    python examples/seed_instance_state.py
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

from piton import StartEvent, StopEvent, Workflow, step


class Client:
    """A fake database client: `exec(sql)` returns the first column of the first row."""

    opened = 0  # connections opened by every Client in this process

    def __init__(self) -> None:
        Client.opened += 1
        # Plain-`def` steps run in worker threads, so the connection must cross threads.
        self._conn = sqlite3.connect(":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self.queries = 0

    def exec(self, sql: str, *params: Any) -> Any:
        with self._lock:
            self.queries += 1
            row = self._conn.execute(sql, params).fetchone()
            self._conn.commit()
            return None if row is None else row[0]


# --- the seed's code, imports changed ------------------------------------------------


class DbWorkflow(Workflow):
    def __init__(self, db: Client, *args, **kwargs):
        self.db = db
        super().__init__(*args, **kwargs)

    @step
    def count(self, ev: StartEvent) -> StopEvent:
        num_rows = self.db.exec("select COUNT(*) from t;")
        return StopEvent(result=num_rows)


# --- driving it ------------------------------------------------------------------------


async def main() -> None:
    db = Client()
    db.exec("create table t (x integer);")
    w = DbWorkflow(db)
    for n in range(1, 4):
        db.exec("insert into t values (?);", n)
        rows = await w.run()
        print(f"run {n}: {rows} rows")
    assert w.db is db
    print(f"client reused: {Client.opened} connection opened for 3 runs, {db.queries} queries")


if __name__ == "__main__":
    asyncio.run(main())
