"""The seed's second example: a context saved with `to_dict()` survives a process restart.

From "Writing durable workflows", section "Storing data in the context object", with only
the imports changed. `db` is a tiny stand-in for a database: a JSON file whose path is
the first argument. Each invocation is a new Python process:

    python examples/seed_context_snapshot.py /tmp/ctx.json   # run 1: fresh state, saved
    python examples/seed_context_snapshot.py /tmp/ctx.json   # run 2: restored, counter = 2
    python examples/seed_context_snapshot.py /tmp/ctx.json   # run 3: counter = 3

The workflow counts its runs in `ctx.store`, so the counter keeps growing across
processes: the state travels inside the saved context, not in the process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from piton import Context, StartEvent, StopEvent, Workflow, step


class JsonFileDb:
    """A fake database: `save(key, value)` / `load(key)` on a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def has(self, key: str) -> bool:
        return key in self._read()

    def save(self, key: str, value: Any) -> None:
        data = self._read()
        data[key] = value
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)

    def load(self, key: str) -> Any:
        return self._read()[key]


class MyWorkflow(Workflow):
    @step
    async def count_runs(self, ev: StartEvent, ctx: Context) -> StopEvent:
        runs = await ctx.store.get("runs", default=0) + 1
        await ctx.store.set("runs", runs)
        history = await ctx.store.get("history", default=[])
        history.append(f"run {runs}")
        await ctx.store.set("history", history)
        return StopEvent(result={"runs": runs, "history": history})


async def main(db: JsonFileDb) -> None:
    if not db.has("id"):
        # --- the seed's code: the first process ------------------------------------
        w = MyWorkflow()
        handler = w.run()
        result = await handler  # (let the run finish, so its state is in the context)
        context = handler.ctx
        # Save the context to a database
        db.save("id", context.to_dict())
        print(f"first run: {json.dumps(result)}; context saved to {db.path}")
        return

    # --- the seed's code: after a restart -------------------------------------------
    w = MyWorkflow()
    # Load the context from the database
    context = Context.from_dict(w, db.load("id"))
    # Pass the context containing the state to the workflow
    result = await w.run(ctx=context)

    db.save("id", context.to_dict())  # keep the new state for the next restart
    print(f"restored run: {json.dumps(result)}; context saved to {db.path}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} CONTEXT.json")
    asyncio.run(main(JsonFileDb(Path(sys.argv[1]))))
