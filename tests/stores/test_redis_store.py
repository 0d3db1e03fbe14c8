"""RedisStore: what only Redis has: its URL options, connections and errors, the schema
version, lost scripts, damaged keys. What every server store must do (the conformance
suite, fencing, group commit, several event loops, durable workflows end to end) is in
``test_server_stores.py``. Each test works under a fresh key prefix, whose keys are deleted
afterwards; after each, the indexes are checked against the runs (``assert_indexes_match``,
which ``test_server_stores.py`` uses too).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from piton.errors import (
    JournalCorrupted,
    StoreError,
    StoreUnavailable,
    WorkflowConfigurationError,
)
from piton.stores import RedisStore as LazyRedisStore
from piton.stores.base import FINAL_STATUSES, CommitRequest, RunRecord, Store, open_store
from piton.stores.redis import SCHEMA_VERSION, RedisStore


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


@pytest.fixture
def url(redis_url: str, prefix: str) -> str:
    return f"{redis_url}?prefix={prefix}"


@pytest.fixture
async def db(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client of our own; at the end of the test, the indexes must match the runs."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await assert_indexes_match(client, prefix)
    await client.aclose()


@pytest.fixture
async def store(url: str, db: aioredis.Redis) -> AsyncIterator[RedisStore]:
    s = RedisStore(url)
    await s.open()
    yield s
    await s.close()


async def new_run(store: Store, run_id: str, entries: tuple[str, ...] = ("e1",)) -> str:
    record = RunRecord(run_id, "wf", "running", owner=store.owner, epoch=1)
    assert await store.create(record, list(entries), [])
    return run_id


async def keys_of(db: aioredis.Redis, prefix: str, run_id: str) -> dict[bytes, Any]:
    """Every key of one run, with its contents."""
    found: dict[bytes, Any] = {}
    for kind in ("run", "journal", "snapshot", "stream", "inbox", "inbox-step"):
        key = f"{prefix}:{kind}:{run_id}".encode()
        held = await db.type(key)
        if held == b"hash":
            found[key] = await db.hgetall(key)
        elif held == b"list":
            found[key] = await db.lrange(key, 0, -1)
        elif held == b"string":
            found[key] = await db.get(key)
    return found


async def assert_indexes_match(db: aioredis.Redis, prefix: str) -> None:
    """The index keys hold exactly what the runs' hashes say they should (the rules of
    ``_redis_scripts.index``, written again here as the test's oracle)."""
    zsets: dict[str, dict[bytes, float]] = {}
    sets: dict[str, set[bytes]] = {}

    def z(key: str, member: bytes, score: float) -> None:
        zsets.setdefault(key, {})[member] = score

    async for key in db.scan_iter(match=f"{prefix}:run:*", count=1000):
        run_id = key[len(prefix) + 5 :]
        h = {k.decode(): v.decode() for k, v in (await db.hgetall(key)).items()}
        w, s, created = h["workflow"], h["status"], float(h["created_at"])
        for index in ("runs", f"workflow:{w}", f"status:{s}", f"workflow-status:{s}:{w}"):
            z(index, run_id, created)
        if s == "parked":
            if "wake_at" in h:
                z(f"wake:{w}", run_id, float(h["wake_at"]))
            if int(h.get("inbox", "0")) > 0:
                z(f"mail:{w}", run_id, created)
        elif s == "running":
            owner = h.get("owner")
            lease = float(h.get("lease_until", "inf")) if owner is not None else float("-inf")
            z(f"lease:{w}", run_id, lease)
            if owner is not None:
                sets.setdefault(f"owned:{owner}", set()).add(run_id)
                sets.setdefault("owners", set()).add(owner.encode())
        elif s in FINAL_STATUSES and "finished_at" in h:
            z("finished", run_id, float(h["finished_at"]))
    actual_z: dict[str, dict[bytes, float]] = {}
    actual_s: dict[str, set[bytes]] = {}
    async for key in db.scan_iter(match=f"{prefix}:*", count=1000):
        name = key.decode()[len(prefix) + 1 :]
        kind = await db.type(key)
        if kind == b"zset":
            actual_z[name] = dict(await db.zrange(key, 0, -1, withscores=True))
        elif kind == b"set":
            actual_s[name] = set(await db.smembers(key))
    assert actual_z == zsets, "the sorted-set indexes do not match the runs"
    assert actual_s == sets, "the owner indexes do not match the runs"


# --- URLs, connections, errors -----------------------------------------------------------------


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
def test_url_options_identity_and_redaction() -> None:
    s = open_store("redis://app:s3cret@cache.example:6380/2?prefix=team_a&socket_timeout=5")
    assert isinstance(s, RedisStore) and LazyRedisStore is RedisStore
    assert (s.prefix, s.lease) == ("team_a", 15.0)
    assert "s3cret" not in s.url and s.url.startswith("redis://app:***@cache.example:6380/")
    assert s.identity == "redis://cache.example:6380/2?prefix=team_a"
    same = RedisStore("rediss://bob@cache.example:6380/2", prefix="team_a", lease=3)
    assert same.identity == s.identity and same.lease == 3.0, "one prefix: one identity"
    assert RedisStore("redis://localhost").identity == "redis://localhost:6379/0?prefix=piton"
    for bad, match in [
        ("redis://h/0?prefix=a:b", "prefix"),
        ("redis://h/0?prefix=", "prefix"),
        ("redis://h/0?prefix=a&other=1", "other"),
        ("redis://h/0?socket_timeout=soon", "socket_timeout"),
        ("postgresql://h/d", "redis://"),
    ]:
        with pytest.raises(WorkflowConfigurationError, match=match):
            RedisStore(bad)
    with pytest.raises(WorkflowConfigurationError, match="disagrees"):
        RedisStore("redis://h/0?prefix=a", prefix="b")
    with pytest.raises(WorkflowConfigurationError, match="lease"):
        RedisStore("redis://h/0", lease=0)


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_a_server_that_does_not_answer_is_store_unavailable() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the commands, answers nothing
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    s = RedisStore(f"redis://127.0.0.1:{port}/0?prefix=mute&socket_timeout=0.2")
    try:
        with pytest.raises(StoreUnavailable, match="did not answer in time.*socket_timeout"):
            await s.get("r")
    finally:
        await s.close()
        server.close()
        await server.wait_closed()


async def test_connections_killed_by_the_server_are_replaced(url: str, db: aioredis.Redis) -> None:
    name = f"piton_test_{uuid.uuid4().hex[:8]}"
    s = RedisStore(f"{url}&client_name={name}")
    try:
        await new_run(s, "r")
        assert await s.get("r") is not None
        mine = [c["id"] for c in await db.client_list() if c.get("name") == name]
        assert mine, "the store's connections carry its client_name"
        for client_id in mine:
            await db.client_kill_filter(_id=client_id)
        assert await s.get("r") is not None  # a read is tried again on a fresh connection
        await asyncio.sleep(0.05)  # the loop sees the other connections closed
        await s.commit(CommitRequest("r", 1, 1, ["e2"]))  # the pool replaces them
        assert (await s.load("r")).entries == [(1, "e1"), (2, "e2")]
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("error", "kind", "advice"),
    [
        (
            redis.exceptions.BusyLoadingError("Redis is loading the dataset"),
            StoreUnavailable,
            "loading",
        ),
        (
            redis.exceptions.ResponseError("BUSY Redis is busy running a script"),
            StoreUnavailable,
            "SCRIPT KILL",
        ),
        (
            redis.exceptions.OutOfMemoryError("OOM command not allowed"),
            StoreUnavailable,
            "maxmemory",
        ),
        (
            redis.exceptions.ResponseError("MISCONF Errors writing to disk"),
            StoreUnavailable,
            "disk",
        ),
        (redis.exceptions.ReadOnlyError("READONLY You can't write"), StoreUnavailable, "primary"),
        (
            redis.exceptions.TimeoutError("Timeout reading from socket"),
            StoreUnavailable,
            "socket_timeout",
        ),
        (redis.exceptions.ConnectionError("Connection reset by peer"), StoreUnavailable, "running"),
        (
            redis.exceptions.AuthenticationError("WRONGPASS invalid username"),
            StoreError,
            "password",
        ),
        (redis.exceptions.NoPermissionError("NOPERM no permissions"), StoreError, "ACL"),
        (redis.exceptions.ResponseError("WRONGTYPE Operation against a key"), StoreError, "prefix"),
        (redis.exceptions.ResponseError("ERR unknown command"), StoreError, "ERR unknown"),
    ],
)
def test_redis_errors_become_piton_errors(error: Exception, kind: type, advice: str) -> None:
    from piton.stores._redis_engine import translate

    translated = translate(error, "Redis store 'redis://h/0'")
    assert type(translated) is kind and translated.__cause__ is error
    assert "Redis store 'redis://h/0'" in str(translated) and advice in str(translated)


# --- the schema version -----------------------------------------------------------------------


async def test_schema_version_is_written_and_a_newer_one_refused(
    url: str, prefix: str, db: aioredis.Redis
) -> None:
    async with RedisStore(url) as s:
        assert await s.get("r") is None
    assert await db.get(f"{prefix}:schema") == str(SCHEMA_VERSION).encode()
    await db.set(f"{prefix}:schema", SCHEMA_VERSION + 5)
    s = RedisStore(url)
    with pytest.raises(StoreError, match="newer piton.*[Uu]pgrade piton") as info:
        await s.open()
    assert f"schema version {SCHEMA_VERSION + 5}" in str(info.value)
    assert f"knows up to {SCHEMA_VERSION}" in str(info.value) and prefix in str(info.value)
    with pytest.raises(StoreError, match="newer piton"):  # and again: nothing was half-opened
        await s.get("x")
    await s.close()
    assert [key async for key in db.scan_iter(match=f"{prefix}:*")] == [f"{prefix}:schema".encode()]


# --- group commit ------------------------------------------------------------------------------


async def test_lost_scripts_are_loaded_again(store: RedisStore, db: aioredis.Redis) -> None:
    await new_run(store, "r")
    await db.script_flush()  # as after a restart or a failover
    await asyncio.gather(
        store.commit(CommitRequest("r", 1, 1, ["e2"])), store.deliver("r", '{"x": 1}')
    )
    loaded = await store.load("r")
    assert loaded.entries == [(1, "e1"), (2, "e2")] and len(loaded.inbox) == 1


# --- failures ---------------------------------------------------------------------------------


async def test_damaged_keys_fail_only_that_run(
    store: RedisStore, db: aioredis.Redis, prefix: str
) -> None:
    for run_id in ("bad", "good", "gap", "ahead", "wrong", "snap"):
        await new_run(store, run_id, ("e1", "e2", "e3"))
    await db.hset(f"{prefix}:journal:bad", "2", b"\xff\xfe")
    await db.hdel(f"{prefix}:journal:gap", "3")
    await db.hset(f"{prefix}:journal:ahead", "4", "e4")
    await db.delete(f"{prefix}:journal:wrong")
    await db.set(f"{prefix}:journal:wrong", "not a hash")
    await store.commit(CommitRequest("snap", 1, 3, ["e4"], snapshot="S4"))
    await db.hset(f"{prefix}:snapshot:snap", "seq", "four")
    with pytest.raises(
        JournalCorrupted, match=r"Run 'bad'.*journal entry seq 2 is not valid UTF-8"
    ):
        await store.load("bad")
    with pytest.raises(JournalCorrupted, match=r"Run 'gap'.*journal entry seq 3 is missing"):
        await store.load("gap")
    with pytest.raises(JournalCorrupted, match=r"Run 'ahead'.*past the run's seq 3"):
        await store.load("ahead")
    with pytest.raises(JournalCorrupted, match=r"Run 'wrong'.*the journal .*another type"):
        await store.load("wrong")
    with pytest.raises(JournalCorrupted, match=r"Run 'snap'.*snapshot's seq is b'four'"):
        await store.load("snap")
    assert (await store.load("good")).entries == [(1, "e1"), (2, "e2"), (3, "e3")]
    assert (await store.get("bad")) is not None  # the run's hash itself is fine
    await store.commit(CommitRequest("good", 1, 3, ["e4"]))  # the store goes on
    await db.hset(f"{prefix}:run:bad", "epoch", "x")
    with pytest.raises(JournalCorrupted, match=r"Run 'bad'.*field 'epoch' holds the text 'x'"):
        await store.get("bad")
    listed = {r.run_id for r in await store.list_runs(workflow="wf")}
    assert listed == {"good", "gap", "ahead", "wrong", "snap"}, "a damaged hash hides one run only"
    await db.hset(f"{prefix}:run:bad", "epoch", "1")  # for the index check at teardown
    before = await keys_of(db, prefix, "wrong")
    with pytest.raises(JournalCorrupted, match=r"Run 'wrong' cannot be committed.*journal:wrong"):
        await store.commit(CommitRequest("wrong", 1, 3, ["e4"], ["s"], status="completed"))
    assert await keys_of(db, prefix, "wrong") == before, "a commit to a damaged run wrote"


async def test_prune_deletes_every_key_of_old_runs(
    store: RedisStore, db: aioredis.Redis, prefix: str
) -> None:
    await new_run(store, "old")
    await store.deliver("old", "{}", "a_step")
    await store.commit(
        CommitRequest("old", 1, 1, ["e2"], ["s"], status="completed", snapshot="snap")
    )
    await new_run(store, "young")
    await asyncio.sleep(0.05)
    with pytest.raises(WorkflowConfigurationError, match="negative"):
        await store.prune(-1)
    assert await store.prune(timedelta(milliseconds=10)) == 1
    assert await keys_of(db, prefix, "old") == {}
    assert [r.run_id for r in await store.list_runs()] == ["young"]


async def test_a_thousand_concurrent_reads_share_a_few_connections(
    url: str, db: aioredis.Redis
) -> None:
    """A worker running 1,000 runs reads for all of them at once: the reads queue for the
    store's connections instead of opening one each (redis-py's pool fails past 100)."""
    from piton.stores._redis_engine import READERS

    name = f"piton_test_{uuid.uuid4().hex[:8]}"
    s = RedisStore(f"{url}&client_name={name}")
    try:
        await new_run(s, "r")
        records = await asyncio.gather(*(s.get("r") for _ in range(1000)))
        assert all(r is not None and r.run_id == "r" for r in records)
        mine = [c for c in await db.client_list() if c.get("name") == name]
        assert 1 <= len(mine) <= READERS + 2, len(mine)  # the readers, the writer, a listener
    finally:
        await s.close()
