"""The seed's third example: a document loop checkpointed to Redis survives `kill -9`.

From "Writing durable workflows", section "Using external resources to checkpoint
execution", with only the imports changed and the seed's typos fixed (`async def` for a
step that awaits, `converted_ids.append`, indentation). After every document the step
snapshots its context into a Redis hash with `redis.hset(key, mapping=ctx.to_dict())`.
When the process is killed and started again with the same input, it loads the hash,
restores the context with `Context.from_dict`, and runs it: the step that was in flight
runs again, and its loop skips the documents already converted.

    python examples/seed_redis_checkpoint.py --crash-after 4   # dies (SIGKILL) mid-loop
    python examples/seed_redis_checkpoint.py                   # resumes, converts the rest

Options (each also read from an environment variable):
  --key KEY            the Redis hash holding the snapshot (PITON_EXAMPLE_KEY, default "ctx")
  --docs N             convert documents 1..N (PITON_EXAMPLE_DOCS, default 10)
  --crash-after N      SIGKILL this process right after its Nth conversion, before the
                       snapshot (PITON_EXAMPLE_CRASH_AFTER; the worst moment to crash)
  --log FILE           append "<doc_id>" to FILE for every conversion (PITON_EXAMPLE_LOG)
  --delay SECONDS      time one conversion takes (PITON_EXAMPLE_DELAY, default 0.05)
  --variant resource|instance
                       `resource`: the client injected with Resource (the seed's "bonus");
                       `instance`: the client kept in `self.redis` by an __init__ that does
                       not call super().__init__() (the seed's first version)
  --reset              delete the snapshot first and start over
The Redis server is REDIS_URL (default redis://localhost:6379/0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated

from redis import Redis

from piton import Context, Resource, StartEvent, StopEvent, Workflow, step

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


class Settings:
    key = "ctx"
    crash_after: int | None = None
    log: Path | None = None
    delay = 0.05
    converted_here = 0  # conversions done by this process


def convert(doc_id: int) -> None:
    """Convert one document: slow, with a side effect that a test can count."""
    time.sleep(Settings.delay)
    if Settings.log is not None:
        with Settings.log.open("a") as f:
            f.write(f"{doc_id}\n")
    Settings.converted_here += 1
    print(f"converted document {doc_id}", flush=True)
    if Settings.crash_after is not None and Settings.converted_here >= Settings.crash_after:
        print(f"crashing after {Settings.converted_here} conversions", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


# --- the seed's code, imports changed, typos fixed ------------------------------------


def get_redis_client(*args, **kwargs):
    """This can be reused across several workflows to reduce boilerplate"""
    return Redis.from_url(REDIS_URL, decode_responses=True)


class DurableWorkflow(Workflow):
    @step
    async def convert_documents(
        self,
        ev: StartEvent,
        ctx: Context,
        redis: Annotated[Redis, Resource(get_redis_client)],
    ) -> StopEvent:
        # Get the workflow input
        document_ids = ev.ids
        # Get the list of processed documents from the state store
        converted_ids = await ctx.store.get("converted_ids", default=[])
        for doc_id in document_ids:
            # Ignore documents that were already processed
            if doc_id in converted_ids:
                continue
            convert(doc_id)
            # Update the state store
            converted_ids.append(doc_id)
            await ctx.store.set("converted_ids", converted_ids)
            # Create a snapshot of the current context
            redis.hset(Settings.key, mapping=ctx.to_dict())
        return StopEvent(result=converted_ids)


class InstanceDurableWorkflow(Workflow):
    """The seed's first version: the client in an instance variable, no super().__init__()."""

    def __init__(self, r: Redis):
        self.redis = r

    @step
    async def convert_documents(self, ev: StartEvent, ctx: Context) -> StopEvent:
        # Get the workflow input
        document_ids = ev.ids
        # Get the list of processed documents from the state store
        converted_ids = await ctx.store.get("converted_ids", default=[])
        for doc_id in document_ids:
            # Ignore documents that were already processed
            if doc_id in converted_ids:
                continue
            convert(doc_id)
            # Update the state store
            converted_ids.append(doc_id)
            await ctx.store.set("converted_ids", converted_ids)
            # Create a snapshot of the current context
            self.redis.hset(Settings.key, mapping=ctx.to_dict())
        return StopEvent(result=converted_ids)


# --- starting or resuming ----------------------------------------------------------------


async def main(ids: list[int], variant: str, reset: bool) -> None:
    redis = get_redis_client()
    if reset:
        redis.delete(Settings.key)
    w = DurableWorkflow() if variant == "resource" else InstanceDurableWorkflow(redis)
    snapshot = redis.hgetall(Settings.key)
    if snapshot:
        ctx = Context.from_dict(w, snapshot)
        done = await ctx.store.get("converted_ids", default=[])
        print(f"resuming from '{Settings.key}': {len(done)} documents already converted")
        result = await w.run(ctx=ctx, ids=ids)
    else:
        print(f"starting: {len(ids)} documents, snapshots in '{Settings.key}'")
        result = await w.run(ids=ids)
    print("result:", json.dumps(result), flush=True)


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--key", default=env("PITON_EXAMPLE_KEY", "ctx"))
    p.add_argument("--docs", type=int, default=int(env("PITON_EXAMPLE_DOCS", "10")))
    crash = env("PITON_EXAMPLE_CRASH_AFTER")
    p.add_argument("--crash-after", type=int, default=int(crash) if crash else None)
    p.add_argument("--log", type=Path, default=env("PITON_EXAMPLE_LOG"))
    p.add_argument("--delay", type=float, default=float(env("PITON_EXAMPLE_DELAY", "0.05")))
    p.add_argument(
        "--variant",
        choices=["resource", "instance"],
        default=env("PITON_EXAMPLE_VARIANT", "resource"),
    )
    p.add_argument("--reset", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    args = parse_args()
    Settings.key = args.key
    Settings.crash_after = args.crash_after
    Settings.log = None if args.log is None else Path(args.log)
    Settings.delay = args.delay
    asyncio.run(main(list(range(1, args.docs + 1)), args.variant, args.reset))
