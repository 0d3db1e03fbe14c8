"""RedisStore: durable runs in Redis, on redis-py's asyncio client.

``RedisStore("redis://host:6379/0")`` or ``redis://...?prefix=name`` keeps runs under keys
that start with a prefix (default ``piton``), so several applications, or tests, can
share a database. Several processes on several machines can share one prefix: that is
how workers scale out (DESIGN.md section 4). Not for Redis Cluster: the scripts touch a
run's keys and the shared indexes together, which a cluster would keep on other nodes.

Durability is Redis's own: a run survives a Redis restart only as far as the server
persists its data (``appendonly yes``; ``appendfsync always`` to lose nothing on a
crash, ``everysec`` to lose at most a second). Run it with ``maxmemory-policy
noeviction``: a server that evicts keys can drop a run's journal.

Keys (``P`` is the prefix; a run id or workflow name ends a key, so no two collide):

- ``P:schema``: the data model's version; data from a newer piton is refused.
- ``P:run:<id>``: a hash, the run's ``RunRecord`` fields (a field that is None is absent;
  ``waiters`` is absent in a run written before schema version 2: it reads as 0, and
  ``stuck`` takes such a run's waiters as unknown, so it does not report it).
- ``P:journal:<id>``: a hash, journal seq -> entry, for the entries after the snapshot
  (what ``load`` reads).
- ``P:snapshot:<id>``: a hash, ``seq`` and ``data``; a commit with a snapshot replaces it
  and moves the entries it sums up to the history.
- ``P:history:<id>``: a hash, journal seq -> entry, for the entries up to the snapshot:
  with the journal, the run's whole history (``Store.journal`` reads both).
- ``P:stream:<id>``: a list, the events published to the run's stream.
- ``P:inbox:<id>`` and ``P:inbox-step:<id>``: hashes, message id -> event and -> the step
  it is addressed to; ids come from the counter ``P:inbox-id``, unique across runs.
- Indexes, kept in step with each run's hash by the same script that changes it:
  ``P:runs``, ``P:workflow:<w>``, ``P:status:<s>`` and ``P:workflow-status:<s>:<w>``
  (sorted sets scored by created_at: ``list_runs`` reads one, newest first);
  ``P:wake:<w>`` (parked runs by wake_at), ``P:mail:<w>`` (parked runs with an inbox),
  ``P:lease:<w>`` (running runs by lease expiry), ``P:owned:<owner>`` and ``P:owners``
  (who holds which running run): ``runnable`` reads those, never the whole keyspace;
  ``P:finished`` (finished runs by finished_at) for ``prune``. ``stuck`` reads the
  parked runs' index (``P:workflow-status:parked:<w>``, or ``P:status:parked``) page by
  page and keeps the runs with no inbox, deadline or waiter: it costs a read of every
  parked run, so it is for checks, not for every poll.

Every write is one Lua script (``_redis_scripts``), so it is atomic: ``commit`` checks the
epoch, owner and seq and then appends entries and stream events, takes inbox messages,
writes the snapshot and changes the run's hash and indexes, or writes nothing and fails
with ``LeaseLost``. ``claim`` reads the run first and asks /proc whether a same-host
owner is dead; the script gets that verdict and takes the run only if its owner and
epoch are still those that were read, under ``may_claim``'s rule. ``load`` reads the run,
snapshot, journal, stream and inbox in one MULTI/EXEC round trip.

Workers and the listeners of parked runs are woken by pub/sub: ``deliver``, ``create``
of a queued run and ``release`` publish a run id on the channel ``P:work:<db>``, to which
``wait_for_work`` subscribes. ``claim_runnable`` is one script: it reads the indexes
above kind by kind (expired leases, dead owners' runs, parked runs with an inbox, due
parked runs, queued runs) and claims as it goes, so two workers never take one run.

Group commit: a store's writes on one event loop go through one writer, which sends the
scripts queued while it was busy as one pipeline (see ``_redis_engine``). A store keeps
one client per event loop, as ``run_sync`` runs each call on a fresh loop; each client
is closed when its loop shuts down.

Times are the client's ``time.time()``, as in every store: keep clocks in sync (NTP) and
leases well above the skew. Errors from redis-py leave as ``StoreUnavailable`` (server
down, loading, busy, out of memory, read-only replica, timeouts) or ``StoreError``.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from piton._core.status import PARKED, QUEUED
from piton.errors import StoreError, WorkflowConfigurationError
from piton.stores._engines import Engines, ServerStore
from piton.stores._redact import secrets_of
from piton.stores._redis_codec import (
    PARTS,
    Arg,
    Codec,
    check_field,
    commit_args,
    encode_arg,
    encode_record,
    opt,
    values,
)
from piton.stores._redis_engine import (
    CLIENT_DEFAULTS,
    Decode,
    Engine,
    Job,
    honour_cancellation,
    parse_store_url,
    translate,
)
from piton.stores._rows import BadColumn, to_record
from piton.stores.base import (
    CommitRequest,
    Loaded,
    RunRecord,
    age_in_seconds,
    check_limit,
    check_page,
    check_timing,
    check_window,
    is_runnable,
    is_stuck,
    owner_is_dead,
    parse_cursor,
    redact_url,
    too_many_events,
    url_option,
)

# the data model's version, kept in <prefix>:schema. 2: a run's hash has a `waiters` field
# (absent in runs written at version 1); open() raises a version 1 to 2, so an older piton
# refuses the data from then on
SCHEMA_VERSION = 2
T = TypeVar("T")

_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_PRUNE_BATCH = 500
_STUCK_PAGE = 500
_CHUNK = 1000  # runs read per pipeline by get_many
# raises the schema version to ARGV[1] if it is lower; returns the version now
_UPGRADE = """
local found = tonumber(redis.call('GET', KEYS[1]))
if found and found < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('GET', KEYS[1])
"""



def _either(first: bytes | None, second: bytes | None) -> bytes | None:
    return first if first is not None else second

class RedisStore(ServerStore[Engine]):
    """Runs kept in Redis under a key prefix. ``RedisStore("redis://host:6379/0")``.

    ``prefix`` (or ``?prefix=`` in the URL; default ``piton``): letters, digits, ``_``,
    ``-`` and ``.``. ``lease`` is how long (seconds) a claim lasts without renewal. Other
    query parameters go to redis-py (``socket_timeout``, ``ssl_cert_reqs``, ...).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        lease: float | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        client_url, options, connect = parse_store_url(url)
        if "prefix" in options and prefix is not None and prefix != options["prefix"]:
            raise WorkflowConfigurationError(
                f"RedisStore(prefix={prefix!r}) disagrees with prefix={options['prefix']} in "
                "the URL; give it once."
            )
        self.prefix = options.get("prefix", prefix if prefix is not None else "piton")
        if not _PREFIX.fullmatch(self.prefix):
            raise WorkflowConfigurationError(
                f"RedisStore(prefix={self.prefix!r}): use letters, digits, '_', '-' and '.', "
                "at most 100 characters."
            )
        check_timing(
            self,
            url_option("RedisStore", url, "lease", lease, options, float, 15.0),
            url_option("RedisStore", url, "deadline", deadline, options, float, 30.0),
        )
        self.url = redact_url(url)  # a password never reaches a message or a log
        named = "" if "prefix" in options else f" (prefix '{self.prefix}')"
        self.where = f"Redis store '{self.url}'{named}"
        self._codec = Codec(self.where, self.url)
        self._secrets = secrets_of(url)  # scrubbed from redis-py's errors
        self._identity = (
            f"redis://{connect.get('host', 'localhost')}:{connect.get('port', 6379)}/"
            f"{connect.get('db', 0)}?prefix={self.prefix}"
        )
        self._channel = f"{self.prefix}:work:{connect.get('db', 0)}"  # pub/sub spans databases
        self._client_url = client_url
        self._client_options = {
            **{key: value for key, value in CLIENT_DEFAULTS.items() if key not in connect},
            "retry": Retry(NoBackoff(), 0),  # never resend a write: it may have been applied
        }
        # a store dropped while open (``await W(store=url).start(...)``) closes its
        # connections on their loops, rather than leaving them to the garbage collector
        weakref.finalize(self, _close_all, self._engines)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """``redis://[user:password@]host:port/db?prefix=name`` (``rediss://`` for TLS)."""
        return cls(url)

    # -- lifecycle ----------------------------------------------------------------------------

    async def _start(self) -> None:
        """Connect and check the data model's version (written on first use)."""
        engine = await self._engine()
        key = self._key("schema")
        try:
            pipe = engine.client.pipeline(transaction=False)
            pipe.set(key, SCHEMA_VERSION, nx=True)
            pipe.get(key)
            _, found = await pipe.execute()
            if found != str(SCHEMA_VERSION).encode():
                found = await engine.client.eval(_UPGRADE, 1, key, str(SCHEMA_VERSION))
        except (RedisError, OSError) as exc:
            error = translate(exc, self.where, secrets=self._secrets)
            raise error from error.__cause__
        try:
            version = int(found)
        except (TypeError, ValueError):
            raise StoreError(
                f"{self.where}: the key '{key}' holds {found!r}, not a piton schema version. "
                "Give piton a prefix of its own: ?prefix=name in the URL."
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.where}: the data under prefix '{self.prefix}' was written by a newer "
                f"piton (schema version {version}; this piton knows up to {SCHEMA_VERSION}). "
                "Upgrade piton (pip install -U 'piton[redis]') to open it."
            )

    async def close(self) -> None:
        """Finish the queued writes and close every connection. ``open()`` starts again."""
        self._closed, self._ready = True, False
        loop = asyncio.get_running_loop()
        for engine_loop, engine in self._engines.items():
            if engine_loop is loop:
                await engine.shutdown()
            elif engine_loop.is_running():  # a loop running in another thread: close it there
                asyncio.run_coroutine_threadsafe(engine.shutdown(), engine_loop)
            else:  # a loop that ended; its connections closed with it
                self._engines.retire(engine_loop)

    async def _engine(self) -> Engine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get(loop)
        if engine is None:
            for old in self._engines.ended():  # their connections closed with their loop
                self._engines.retire(old)
            engine = Engine(
                self._client_url,
                self._client_options,
                self.where,
                self._channel,
                self._engines.forget,
                self._secrets,
            )
            self._engines.add(loop, engine)
            await engine.start()
        return engine

    async def _ready_engine(self) -> Engine:
        await self._opened()
        return await self._engine()

    async def _read(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        engine = await self._ready_engine()
        client = engine.client
        try:
            async with engine.reads:
                try:
                    result = await op(client)
                except RedisConnectionError:  # it died while idle (a server restart): again
                    result = await op(client)
        except (RedisError, OSError) as exc:
            error = translate(exc, self.where, secrets=self._secrets)
            raise error from error.__cause__
        honour_cancellation()
        return result

    async def _write(
        self,
        script: str,
        keys: list[str],
        args: Iterable[Arg | None],
        decode: Decode,
        *,
        commit: bool = False,
    ) -> Any:
        engine = await self._ready_engine()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        encoded = [self.prefix.encode(), *(encode_arg(arg) for arg in args)]
        names = [encode_arg(key) for key in keys]
        engine.writer.submit(Job(script, names, encoded, decode, future, commit))
        return await future

    # -- keys ---------------------------------------------------------------------------------

    def _key(self, kind: str, name: str | None = None) -> str:
        return f"{self.prefix}:{kind}" if name is None else f"{self.prefix}:{kind}:{name}"

    def _run_keys(self, run_id: str) -> list[str]:
        """run, journal, stream, inbox, inbox-step, snapshot, history: the keys of one run."""
        kinds = ("run", "journal", "stream", "inbox", "inbox-step", "snapshot", "history")
        return [self._key(kind, run_id) for kind in kinds]

    # -- the Store protocol -------------------------------------------------------------------

    async def create(
        self,
        record: RunRecord,
        entries: list[str],
        stream: list[str],
        *,
        snapshot: str | None = None,
    ) -> bool:
        now = time.time()
        record = replace(record, seq=len(entries), inbox=0, created_at=now, updated_at=now)
        encoded = encode_record(record)
        args = [record.run_id, self._channel, len(encoded), *encoded]
        args += [0 if snapshot is None else 1, *([] if snapshot is None else [snapshot])]
        args += [len(entries), *entries, *stream]
        keys = self._run_keys(record.run_id)
        created: bool = await self._write("create", keys, args, lambda reply: reply == 1)
        return created

    async def get(self, run_id: str) -> RunRecord | None:
        raw = await self._read(lambda client: client.hgetall(self._key("run", run_id)))
        return self._codec.record(run_id, raw) if raw else None

    async def get_many(self, run_ids: list[str]) -> dict[str, RunRecord]:
        ids = [run_id.encode("utf-8") for run_id in dict.fromkeys(run_ids)]
        if not ids:
            return {}

        async def read(client: aioredis.Redis) -> list[RunRecord]:
            found: list[RunRecord] = []
            for start in range(0, len(ids), _CHUNK):  # one pipeline per chunk
                found += await self._records(client, ids[start : start + _CHUNK])
            return found

        return {record.run_id: record for record in await self._read(read)}

    async def claim_runnable(
        self, workflows: list[str], now: float, owner: str, lease: float, limit: int
    ) -> list[RunRecord]:
        names = list(dict.fromkeys(workflows))
        if not names or limit <= 0:
            return []
        key = self._key("owners")
        owners = cast(set[bytes], await self._read(lambda client: client.smembers(key)))
        dead = [o for o in owners if o != owner.encode() and _dead(o)]
        wall = time.time()
        random.shuffle(names)  # no workflow always goes first
        args: list[Arg] = [owner, now, wall, wall + lease, limit, len(dead), *dead, *names]
        bad, claimed = await self._write("claim_runnable", [], args, lambda reply: reply)
        for n in range(0, len(bad), 3):
            run_id, name, value = (bytes(part) for part in bad[n : n + 3])
            try:
                check_field(name.decode("utf-8", "replace"), value)
            except BadColumn as problem:
                self._codec.rows.skipped(run_id.decode("utf-8", "replace"), problem)
        records = []
        for flat in claimed:
            raw = dict(zip(flat[::2], flat[1::2], strict=True))
            record = self._decoded(raw.get(b"run_id", b"?"), raw)
            if record is not None:
                records.append(record)
        return records

    async def claim(self, run_id: str, owner: str, lease: float) -> int | None:
        for _ in range(3):  # the run changed between the read and the script: look again
            record = await self.get(run_id)
            if record is None:
                raise self._codec.missing(run_id)
            now = time.time()
            if record.finished:
                return None
            dead = False
            if not (
                record.owner is None
                or record.owner == owner
                or (record.lease_until is not None and record.lease_until < now)
            ):
                dead = owner_is_dead(record.owner)  # the script checks it is still the owner
                if not dead:
                    return None
            args: list[Arg | None] = [
                run_id,
                owner,
                record.epoch,
                opt(record.owner),
                int(dead),
                now,
                now + lease,
            ]
            reply = await self._write("claim", [self._key("run", run_id)], args, _claimed)
            if reply == "missing":
                raise self._codec.missing(run_id)
            if reply != "changed":
                result: int | None = reply
                return result
        return None

    async def load(self, run_id: str) -> Loaded:
        run, journal, stream, inbox, steps, snapshot, _ = self._run_keys(run_id)

        async def read(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=True)  # MULTI/EXEC: one consistent view
            pipe.hgetall(run)
            pipe.hgetall(snapshot)
            pipe.hgetall(journal)
            pipe.lrange(stream, 0, -1)
            pipe.hgetall(inbox)
            pipe.hgetall(steps)
            return await pipe.execute(raise_on_error=False)

        replies = await self._read(read)
        keys = (run, snapshot, journal, stream, inbox, steps)  # in the order of PARTS
        for part, key, reply in zip(PARTS, keys, replies, strict=True):
            if isinstance(reply, Exception):
                if "WRONGTYPE" in str(reply):
                    raise self._codec.parts.damaged(
                        run_id, f"{part} (key '{key}') holds another type of value"
                    )
                raise translate(reply, self.where, secrets=self._secrets)
        raw, snapshot, journal, stream, inbox, steps = replies
        if not raw:
            raise self._codec.missing(run_id)
        record = self._codec.record(run_id, raw)
        return self._codec.loaded(record, snapshot, journal, stream, inbox, steps)

    async def commit(self, request: CommitRequest) -> None:
        args = commit_args(request, time.time())
        decode = functools.partial(self._codec.committed, request)
        await self._write("commit", self._run_keys(request.run_id), args, decode, commit=True)

    async def renew(self, run_ids: list[tuple[str, int]], owner: str, lease: float) -> list[str]:
        if not run_ids:
            return []
        args: list[Arg] = [owner, time.time() + lease]
        for run_id, epoch in run_ids:
            args += [run_id, epoch]
        lost: list[str] = await self._write(
            "renew", [], args, lambda reply: [item.decode() for item in reply]
        )
        return lost

    async def release(self, runs: list[tuple[str, int]], owner: str) -> None:
        if not runs:
            return
        args: list[Arg] = [time.time(), owner, self._channel]
        for run_id, epoch in runs:
            args += [run_id, epoch]
        await self._write("release", [], args, lambda reply: None)

    async def deliver(
        self, run_id: str, event: str, step: str | None = None, *, limit: int | None = None
    ) -> None:
        check_limit(limit)
        keys = [self._key(kind, run_id) for kind in ("run", "inbox", "inbox-step")]

        def decode(reply: list[bytes]) -> None:
            kind = bytes(reply[0]).decode()
            if kind == "missing":
                raise self._codec.missing(run_id)
            if kind == "full":
                assert limit is not None
                raise too_many_events(run_id, limit)
            if kind == "damaged-field":
                raise self._codec.bad_field(run_id, reply, "given an event in")

        bound = None if limit is None else b"=%d" % limit
        args = [run_id, event, opt(step), self._channel, bound]
        await self._write("deliver", keys, args, decode)

    async def wait_for_work(self, timeout: float) -> None:
        """Return when an event is delivered to a run under this prefix, a run is queued or
        leases are released (pub/sub, from any process), or after ``timeout`` seconds."""
        engine = await self._ready_engine()
        await engine.listener.wait(timeout)

    async def runnable(self, workflows: list[str], now: float, limit: int = 100) -> list[RunRecord]:
        names = list(dict.fromkeys(workflows))
        if not names or limit <= 0:
            return []

        async def candidates(client: aioredis.Redis) -> list[RunRecord]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.zrange(self._key("workflow-status", f"{QUEUED}:{name}"), 0, limit - 1)
                pipe.zrangebyscore(self._key("wake", name), "-inf", now, start=0, num=limit)
                pipe.zrange(self._key("mail", name), 0, limit - 1)
                pipe.zrangebyscore(self._key("lease", name), "-inf", f"({now!r}", 0, limit)
            pipe.smembers(self._key("owners"))
            *found, owners = await pipe.execute()
            ids: dict[bytes, None] = {run_id: None for group in found for run_id in group}
            dead = [o for o in owners if o != self.owner.encode() and _dead(o)]
            if dead:
                pipe = client.pipeline(transaction=False)
                for owner in dead:
                    pipe.smembers(self.prefix.encode() + b":owned:" + owner)
                for group in await pipe.execute():
                    ids.update(dict.fromkeys(sorted(group)))
            return await self._records(client, list(ids))

        records = await self._read(candidates)
        wanted = set(names)
        chosen = [r for r in records if r.workflow in wanted and is_runnable(r, now)]
        chosen.sort(key=lambda r: r.created_at)
        return chosen[:limit]

    async def stuck(self, workflows: list[str] | None = None, limit: int = 100) -> list[RunRecord]:
        if limit <= 0:
            return []
        if workflows is None:
            indexes = [self._key("status", PARKED)]
        else:
            names = dict.fromkeys(workflows)
            indexes = [self._key("workflow-status", f"{PARKED}:{name}") for name in names]

        async def read(client: aioredis.Redis) -> list[RunRecord]:
            found: list[RunRecord] = []
            for index in indexes:  # each oldest first; at most `limit` from each
                found += await self._stuck_in(client, index, limit)
            return found

        found = await self._read(read)
        found.sort(key=lambda r: r.created_at)
        return found[:limit]

    async def _stuck_in(self, client: aioredis.Redis, index: str, limit: int) -> list[RunRecord]:
        """The stuck runs among the parked runs of one index, oldest first, up to ``limit``."""
        found: list[RunRecord] = []
        start = 0
        while len(found) < limit:
            ids = cast(list[bytes], await client.zrange(index, start, start + _STUCK_PAGE - 1))
            if not ids:
                break
            start += len(ids)
            pipe = client.pipeline(transaction=False)
            for run_id in ids:
                pipe.hgetall(self.prefix.encode() + b":run:" + run_id)
            for run_id, raw in zip(ids, await pipe.execute(), strict=True):
                if not raw or b"waiters" not in raw:  # pruned meanwhile; waiters unknown
                    continue
                record = self._decoded(run_id, raw)
                if record is not None and is_stuck(record):
                    found.append(record)
        return found[:limit]

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 100,
        after: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> list[RunRecord]:
        since, until = check_window(created_after, created_before)
        start = None if after is None else parse_cursor(after)
        if limit <= 0:
            return []
        if status is not None and workflow is not None:
            key = self._key("workflow-status", f"{status}:{workflow}")
        elif status is not None:
            key = self._key("status", status)
        elif workflow is not None:
            key = self._key("workflow", workflow)
        else:
            key = self._key("runs")
        low = "-inf" if since is None else repr(since)

        # The index is scored by created_at; Redis orders the members of one score by their
        # bytes, so ZREVRANGEBYSCORE reads them in list_runs' order. After a cursor (c, id):
        # the scores up to c, skipping the members of score c that are >= id.
        async def read(client: aioredis.Redis) -> list[RunRecord]:
            offset = 0
            if start is not None and (until is None or start[0] < until):
                high = repr(start[0])
                offset = await self._ties(client, key, start[0], start[1].encode("utf-8"))
            else:
                high = "+inf" if until is None else f"({until!r}"
            ids = cast(
                list[bytes],
                await client.zrevrangebyscore(key, high, low, start=offset, num=limit),
            )
            return await self._records(client, ids)

        return await self._read(read)

    async def _ties(self, client: aioredis.Redis, key: str, score: float, member: bytes) -> int:
        """How many members of ``key`` have ``score`` and come at or before ``member`` in
        descending order (their bytes >= ``member``'s)."""
        pipe = client.pipeline(transaction=True)
        pipe.zscore(key, member)
        pipe.zrevrank(key, member)
        pipe.zcount(key, f"({score!r}", "+inf")
        found, rank, above = await pipe.execute()
        if found is not None and float(found) == score and rank is not None:
            return int(rank) - int(above) + 1  # the cursor's run is still in the index: O(log n)
        # it left the index (pruned, or its status changed): compare the ties one by one
        ties = cast(list[bytes], await client.zrevrangebyscore(key, repr(score), repr(score)))
        return sum(1 for tie in ties if tie >= member)

    async def journal(
        self, run_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        after, limit = check_page(after, limit)
        run, journal, _, _, _, _, history = self._run_keys(run_id)
        codec = self._codec

        async def read(client: aioredis.Redis) -> list[tuple[int, str]]:
            pipe = client.pipeline(transaction=True)
            pipe.exists(run)
            pipe.hget(run, "seq")
            exists, seq = await pipe.execute()
            if not exists:
                raise codec.missing(run_id)
            last = codec.number(seq, run_id, "the run's seq")
            first = after + 1
            numbers = list(range(first, min(last, first + limit - 1) + 1))
            if not numbers:
                return []
            pipe = client.pipeline(transaction=True)  # a snapshot may move entries meanwhile
            pipe.hmget(history, numbers)
            pipe.hmget(journal, numbers)
            old, tail = cast(list[list[bytes | None]], await pipe.execute())
            return [
                (n, codec.parts.text(body, run_id, f"journal entry seq {n}"))
                for n, body in zip(numbers, map(_either, old, tail), strict=True)
                if body is not None  # compacted away by a piton that did not keep history
            ]

        return await self._read(read)

    async def prune(self, older_than: float | timedelta) -> int:
        cutoff = time.time() - age_in_seconds(older_than)
        total = 0
        while True:  # in batches: a script holds the server while it runs
            deleted: int
            seen: int
            deleted, seen = await self._write(
                "prune", [], [cutoff, _PRUNE_BATCH], lambda reply: (int(reply[0]), int(reply[1]))
            )
            total += deleted
            if seen < _PRUNE_BATCH:
                return total

    async def _records(self, client: aioredis.Redis, ids: list[bytes]) -> list[RunRecord]:
        """The runs with these ids, in order; runs pruned meanwhile are left out, and so
        (logged as errors) are runs whose hash is damaged: ``get`` or ``load`` names them."""
        if not ids:
            return []
        pipe = client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(self.prefix.encode() + b":run:" + run_id)
        records = []
        for run_id, raw in zip(ids, await pipe.execute(), strict=True):
            record = self._decoded(run_id, raw) if raw else None
            if record is not None:
                records.append(record)
        return records

    def _decoded(self, run_id: bytes, raw: dict[Any, Any]) -> RunRecord | None:
        """The run's record, or None (logged: logger ``piton.store``) if its hash is damaged."""
        try:
            return to_record(values(raw))
        except BadColumn as bad:
            self._codec.rows.skipped(run_id.decode("utf-8", "replace"), bad)
            return None


def _close_all(engines: Engines[Engine]) -> None:
    """Close the engines of a store that was garbage-collected, each on its own loop."""
    for loop, engine in engines.items():
        engines.retire(loop)
        if loop.is_closed():
            continue  # its connections closed with it
        try:
            loop.call_soon_threadsafe(_close_on_loop, engine)
        except RuntimeError:  # the loop closed meanwhile
            pass


def _close_on_loop(engine: Engine) -> None:
    asyncio.ensure_future(engine.aclose())


def _claimed(reply: list[Any]) -> int | str | None:
    kind = bytes(reply[0]).decode()
    if kind == "ok":
        return int(reply[1])
    return None if kind == "no" else kind


def _dead(owner: bytes) -> bool:
    return owner_is_dead(owner.decode("utf-8", "replace"))


__all__ = ["SCHEMA_VERSION", "RedisStore"]
