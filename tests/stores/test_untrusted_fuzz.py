"""Fuzzing stored data: damaged ``Context.from_dict`` payloads and damaged journal rows.

Whatever the damage, reading fails with a piton error (``ContextSerdeError`` for
``from_dict``; ``JournalCorrupted`` naming run and seq, ``IncompatibleWorkflowChange`` or
another ``PitonError`` for a durable run) or reads something valid: never a bare Python
exception, never a hang, and the other runs in the store go on. Deterministic
(``derandomize``) and bounded, so it runs in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import itertools
import json
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import drop_redis_keys
from piton import (
    Context,
    ContextSerdeError,
    Event,
    InputRequiredEvent,
    JournalCorrupted,
    PitonError,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)
from piton.stores.base import Store
from piton.stores.memory import MemoryStore
from piton.stores.sqlite import SqliteStore

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Draft(Event):
    text: str
    tags: tuple[str, ...] = ()


class Answer(Event):
    reply: str


class Review(Workflow):
    @step
    async def start(self, ev: StartEvent, ctx: Context) -> Draft:
        await ctx.store.set(
            "meta",
            {
                "by": ev.by,
                "when": datetime.datetime(2024, 5, 1, 12, 30),
                "raw": b"\x00\xff",
                "seen": {1, 2},
                "pair": (1, "a"),
                "id": str(uuid.UUID(int=7)),
            },
        )
        return Draft(text=ev.text, tags=("a", "b"))

    @step
    async def ask(self, ev: Draft, ctx: Context) -> StopEvent:
        await ctx.store.set("draft", ev.text)
        if not ev.tags:
            return StopEvent(result="no tags")
        answer = await ctx.wait_for_event(
            Answer, waiter_event=InputRequiredEvent(prefix="ok?"), timeout=600
        )
        by = await ctx.store.get("meta.by")
        return StopEvent(result=f"{ev.text}/{by}/{answer.reply}")


EXPECTED = "hello/ada/ok"


# --- mutations ---------------------------------------------------------------------------------

_PLACEHOLDER = "\x00piton-fuzz\x00"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "__class__.__init__.__globals__",
            "piton.events.StopEvent",
            "builtins.SystemExit",
            {"__piton__": "model", "type": "piton.events.StopEvent", "data": {}},
            {"__piton__": "error", "type": "builtins.KeyboardInterrupt", "args": []},
            {"__piton__": "set", "items": [[1], {"a": 1}]},
            {"__piton__": "bytes", "b64": "!!"},
            {"__piton__": "pickle", "b64": "gARLAS4="},
            {"__piton__": "nonsense"},
        ]
    ),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=8,
)

_RAW = ["[" * n + "]" * n for n in (150, 250, 5000, 100_000)] + [
    "1" + "0" * 400,
    "1" + "0" * 5000,
    "1e999",
    "-1e999",
    "NaN",
    "-0",
]


def _nodes(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(tree, dict):
        for k, v in tree.items():
            found += _nodes(v, (*path, k))
    elif isinstance(tree, list):
        for n, v in enumerate(tree):
            found += _nodes(v, (*path, n))
    return found


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    tree[path[0]] = _replace(tree[path[0]], path[1:], value)
    return tree


POSITION = st.integers(0, 1 << 20)
ANY_TEXT = st.characters()
STORABLE_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


def mutate(
    data: st.DataObject, text: str, *, chars: st.SearchStrategy[str] = ANY_TEXT, binary: bool = True
) -> str | bytes:
    """One hypothesis-chosen damage to one stored JSON text (``binary``: may be bytes that
    are not UTF-8; ``chars``: what characters it may put in)."""
    kinds = ["flip", "delete", "insert", "retype", "raw", "drop"] + (["bytes"] if binary else [])
    kind = data.draw(st.sampled_from(kinds), label="kind")
    # positions are drawn as numbers and fitted to the text: the text differs between runs
    # (times, run ids), the draws must not
    at = data.draw(POSITION, label="at") % max(len(text), 1)
    if kind == "flip":
        return text[:at] + data.draw(chars, label="char") + text[at + 1 :]
    if kind == "delete":
        return text[:at] + text[at + data.draw(st.integers(1, 40), label="n") :]
    if kind == "insert":
        return text[:at] + data.draw(st.text(chars, max_size=8), label="text") + text[at:]
    if kind == "bytes":
        junk = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]))
        raw = text.encode()
        return raw[:at] + junk + raw[at:]
    tree = json.loads(text)
    paths = _nodes(tree)
    path = paths[data.draw(POSITION, label="node") % len(paths)]
    if kind == "drop" and path:
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        return json.dumps(tree)
    if kind == "retype":
        return json.dumps(_replace(tree, path, data.draw(json_values, label="value")))
    raw = data.draw(st.sampled_from(_RAW), label="raw")  # kind "raw", or "drop" of the root
    return json.dumps(_replace(tree, path, _PLACEHOLDER)).replace(json.dumps(_PLACEHOLDER), raw, 1)


# --- Context.from_dict ---------------------------------------------------------------------------


@cache
def _payloads() -> tuple[dict[str, str], ...]:
    """Real to_dict() payloads: a run parked for a human, and a finished one."""

    async def make() -> tuple[dict[str, str], ...]:
        handler = Review().run(text="hello", by="ada")
        async for ev in handler.stream_events():
            if isinstance(ev, InputRequiredEvent):
                break
        waiting = handler.ctx.to_dict()
        handler.ctx.send_event(Answer(reply="ok"))
        assert await handler == EXPECTED
        return waiting, handler.ctx.to_dict()

    return asyncio.run(make())


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_from_dict_of_a_damaged_payload_is_a_context_serde_error_or_a_context(
    data: st.DataObject,
) -> None:
    payload: dict[Any, Any] = dict(data.draw(st.sampled_from(_payloads()), label="payload"))
    key = data.draw(st.sampled_from(sorted(payload)), label="key")
    payload[key] = mutate(data, payload[key])
    if data.draw(st.booleans(), label="as bytes"):  # as redis hgetall returns it
        payload = {
            k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in payload.items()
        }
    try:
        restored = Context.from_dict(Review(), payload)
    except ContextSerdeError as exc:
        assert str(exc)
        return
    assert isinstance(restored, Context)


# --- journal rows on every store -----------------------------------------------------------------


@dataclass
class Kit:
    """One backend: how to open a store on it, and how to reach its journal rows directly."""

    name: str
    open: Callable[[], Store]
    rows: Callable[[str], Awaitable[list[tuple[int, str]]]]
    write: Callable[[str, int, str | bytes], Awaitable[None]]
    binary: bool = True  # can a row hold bytes that are not UTF-8?


def _memory() -> Kit:
    store = MemoryStore()

    async def rows(run_id: str) -> list[tuple[int, str]]:
        return list(store._journal[run_id])

    async def write(run_id: str, seq: int, entry: str | bytes) -> None:
        journal = store._journal[run_id]
        journal[[s for s, _ in journal].index(seq)] = (seq, entry)  # bytes too: a damaged row

    return Kit("memory", lambda: store, rows, write)


def _sqlite(path: Path) -> Kit:
    async def rows(run_id: str) -> list[tuple[int, str]]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            query = "SELECT seq, entry FROM journal WHERE run_id=? ORDER BY seq"
            return list(conn.execute(query, (run_id,)))

    async def write(run_id: str, seq: int, entry: str | bytes) -> None:
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "UPDATE journal SET entry=? WHERE run_id=? AND seq=?", (entry, run_id, seq)
            )

    return Kit("sqlite", lambda: SqliteStore(path), rows, write)


def _postgres(url: str, schema: str) -> Kit:
    import psycopg
    from psycopg import sql

    from piton.stores.postgres import PostgresStore

    table = sql.SQL("{}.journal").format(sql.Identifier(schema))

    async def rows(run_id: str) -> list[tuple[int, str]]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            query = sql.SQL("SELECT seq, entry FROM {} WHERE run_id=%s ORDER BY seq")
            cur = await conn.execute(query.format(table), [run_id])
            return [(int(seq), entry) for seq, entry in await cur.fetchall()]

    async def write(run_id: str, seq: int, entry: str | bytes) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            query = sql.SQL("UPDATE {} SET entry=%s WHERE run_id=%s AND seq=%s")
            await conn.execute(query.format(table), [entry, run_id, seq])

    return Kit(
        "postgres", lambda: PostgresStore(f"{url}?schema={schema}"), rows, write, binary=False
    )


def _redis(url: str, prefix: str) -> Kit:
    import redis.asyncio as aioredis

    from piton.stores.redis import RedisStore

    async def rows(run_id: str) -> list[tuple[int, str]]:
        client = aioredis.Redis.from_url(url)
        try:
            found = await client.hgetall(f"{prefix}:journal:{run_id}")
        finally:
            await client.aclose()
        return sorted((int(seq), entry.decode()) for seq, entry in found.items())

    async def write(run_id: str, seq: int, entry: str | bytes) -> None:
        client = aioredis.Redis.from_url(url)
        try:
            await client.hset(f"{prefix}:journal:{run_id}", str(seq), entry)
        finally:
            await client.aclose()

    return Kit("redis", lambda: RedisStore(f"{url}?prefix={prefix}"), rows, write)


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    name = f"piton_fuzz_{uuid.uuid4().hex[:12]}"
    if request.param == "memory":
        yield _memory()
    elif request.param == "sqlite":
        yield _sqlite(tmp_path / "runs.db")
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        yield _postgres(url, name)
        gc.collect()  # a leaked connection would be reported here, not in a later test
        import psycopg
        from psycopg import sql

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    else:
        url = request.getfixturevalue("redis_url")
        yield _redis(url, name)
        drop_redis_keys(url, name)


async def _park(w: Workflow, store: Store, run_id: str) -> None:
    w.run(run_id=run_id, text="hello", by="ada")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        record = await store.get(run_id)
        if record is not None and record.status == "parked":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not park")


async def _park_in_a_loop_that_ends(kit: Kit, run_ids: list[str]) -> None:
    """Park the runs on an event loop of its own (in a thread), then end it as a process
    that exits does: its tasks are cancelled, then its store is closed. The runs stay
    parked in the store, and nothing in this process holds them."""

    async def park() -> None:
        async with _opened(kit) as store:
            w = Review(store=store)
            await asyncio.gather(*(_park(w, store, run_id) for run_id in run_ids))
            others = asyncio.all_tasks() - {asyncio.current_task()}
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    await asyncio.to_thread(asyncio.run, park())


async def _resume(w: Workflow, run_id: str) -> Any:
    handler = w.run(run_id=run_id)
    await handler.send_event(Answer(reply="ok"))
    return await handler


_counter = itertools.count()


@settings(FUZZ, max_examples=25)
@given(data=st.data())
async def test_a_damaged_journal_row_fails_only_its_own_run(kit: Kit, data: st.DataObject) -> None:
    """Park two runs, damage one row of one of them in the backend itself, resume both in
    "another process": the damaged one finishes or fails with a piton error naming it (or
    parks again, waiting for what the damage asks for); the other one completes."""
    n = next(_counter)
    victim, control = f"victim-{n}", f"control-{n}"
    await _within("parking", _park_in_a_loop_that_ends(kit, [victim, control]))

    rows = await _within("reading the journal", kit.rows(victim))
    seq, text = rows[data.draw(POSITION, label="row") % len(rows)]
    damaged = mutate(data, text, chars=STORABLE_TEXT, binary=kit.binary)
    await _within("damaging the journal", kit.write(victim, seq, damaged))

    async with _opened(kit) as store:  # another process picks the runs up
        w = Review(store=store)
        try:
            result = await asyncio.wait_for(_resume(w, victim), 10)
        except PitonError as exc:
            if isinstance(exc, JournalCorrupted):
                assert f"'{victim}'" in str(exc), str(exc)
                named = [int(s) for s in re.findall(r"\bseq (\d+)", str(exc))]
                assert named and named[0] >= seq, str(exc)
        except TimeoutError:
            # no hang: the damage made the run wait for something else, and it is parked
            record = await _within("reading the run", store.get(victim))
            assert record is not None and record.status == "parked", record
        else:  # harmless damage, or a changed value: rows carry no checksum
            assert isinstance(result, str), result
        assert await _within("resuming the other run", _resume(w, control)) == EXPECTED


async def _within(what: str, step: Awaitable[Any], seconds: float = 20) -> Any:
    """``step``, or a failure naming it: a store call that hangs must not hang the suite."""
    try:
        return await asyncio.wait_for(step, seconds)
    except TimeoutError:
        raise AssertionError(f"{what} took more than {seconds} s") from None


@contextlib.asynccontextmanager
async def _opened(kit: Kit) -> AsyncIterator[Store]:
    store = kit.open()
    await _within("opening the store", store.open())
    try:
        yield store
    finally:
        if kit.name != "memory":  # the memory store is the database: it lives on
            await _within("closing the store", store.close())
