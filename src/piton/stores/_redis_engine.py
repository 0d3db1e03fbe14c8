"""The connections of a RedisStore on one event loop, its group commit, and the
translation of redis-py errors into piton errors.

``Engine`` holds, for one loop, a redis-py client (its own connection pool), the
``Writer`` and the ``Listener`` (pub/sub: an event was delivered, a worker may wake).

Every write is a Lua script. The writer runs whatever scripts queued while it was busy
as ONE pipeline of EVALSHA calls (one round trip), reads one reply per script, settles
each caller's future with its own outcome (one ``LeaseLost`` fails only its caller),
and starts again with whatever queued meanwhile. The pipeline is not a MULTI
transaction: each script is atomic by itself, and scripts run in the order queued.
redis-py's retries are off: a write whose connection failed may have been applied, and
is reported as such (``StoreUnavailable``), never sent twice.

Reconnecting: the writer takes its connection from the client's pool before it sends
anything, and the pool replaces a connection the server closed (a restart). When no
connection can be opened, or the server answers LOADING (it is reading its data back
after a restart and runs nothing), the writer fails its jobs with ``StoreUnreachable``:
they never ran, so anyone may send them again. redis-py 7's maintenance notifications are
switched off (``CLIENT_DEFAULTS``): with them on, the pool stops checking that an idle
connection is still open, and the first request after a restart would fail with its fate
unknown.

An engine closes its connections when its loop ends: it parks an async generator on
the loop, which ``asyncio.run`` (and any ``loop.shutdown_asyncgens()``) finalizes
before closing the loop, so ``run_sync``'s short-lived loops leave no socket behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # redis-py 7+
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # pragma: no cover - older redis-py has no such notifications
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

from piton.errors import (
    StoreError,
    StoreUnavailable,
    StoreUnreachable,
    WorkflowConfigurationError,
)
from piton.stores._batching import BatchWriter, copy_error, unreachable
from piton.stores._redact import scrub, secrets_of
from piton.stores._redis_codec import Arg
from piton.stores._redis_scripts import SCRIPTS
from piton.stores._wakeups import Waiters
from piton.stores.base import redact_url, split_store_url

Decode: TypeAlias = Callable[[Any], Any]
Outcome: TypeAlias = tuple["Job", Any, BaseException | None]


def honour_cancellation() -> None:
    """Raise the cancellation redis-py swallowed: a task cancelled while redis-py awaited a
    reply (or its read timeout) can get the reply instead of CancelledError
    (redis/redis-py#2028, #2551); its loop would then never end."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass(eq=False, slots=True)
class Job:
    """One script call: its keys and arguments, how to read its reply, who waits for it."""

    script: str
    keys: list[Arg]
    args: list[Arg]
    decode: Decode
    future: asyncio.Future[Any]
    commit: bool = False  # a CommitRequest: counted in Writer.commits


class Writer(BatchWriter[Job]):
    """Runs a store's write scripts on one loop, pipelining the calls that queue up meanwhile."""

    def __init__(self, client: aioredis.Redis, where: str, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(where)
        self.client = client
        self.secrets = secrets  # scrubbed from redis-py's errors
        self.scripts = {name: client.register_script(source) for name, source in SCRIPTS.items()}
        self.loaded = False  # SCRIPT LOAD sent on this loop's client

    async def aclose(self) -> None:
        """Finish the queued jobs; refuse new ones."""
        self.closed = True
        if self.task is not None:
            await asyncio.wait([self.task])

    async def _run(self, jobs: list[Job]) -> list[Outcome]:
        try:
            if not self.loaded:
                await self._load()
            replies = await self._pipeline(jobs)
            # the server lost its scripts (restart, failover, SCRIPT FLUSH): load, run again
            missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                await self._load()
                again = await self._pipeline([jobs[n] for n in missing])
                for n, reply in zip(missing, again, strict=True):
                    replies[n] = reply
        except StoreUnreachable as exc:  # no connection: the batch never ran
            return [(job, None, copy_error(exc)) for job in jobs]
        except (RedisError, OSError) as exc:  # the connection failed: the batch's fate is unknown
            error = translate(exc, self.where, writing=True, secrets=self.secrets)
            return [(job, None, copy_error(error)) for job in jobs]
        self.transactions += 1
        outcomes: list[Outcome] = []
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, Exception):
                error = (
                    reply
                    if isinstance(reply, StoreError)
                    else translate(reply, self.where, writing=True, secrets=self.secrets)
                )
                outcomes.append((job, None, error))
                continue
            try:
                result = job.decode(reply)
            except Exception as exc:  # LeaseLost, RunNotFound, ...: the script wrote nothing
                outcomes.append((job, None, exc))
            else:
                outcomes.append((job, result, None))
                self.commits += job.commit
        return outcomes

    async def _pipeline(self, jobs: list[Job]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            pipe.evalsha(self.scripts[job.script].sha, len(job.keys), *job.keys, *job.args)
        pipe.connection = await self._connect()
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for n, reply in enumerate(replies):
            if isinstance(reply, BusyLoadingError):  # refused unrun: the script never ran
                replies[n] = unreachable(translate(reply, self.where, secrets=self.secrets))
        return replies

    async def _load(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for script in self.scripts.values():
            pipe.script_load(script.script)
        pipe.connection = await self._connect()
        await pipe.execute()
        self.loaded = True

    async def _connect(self) -> Any:
        """A connection from the client's pool, open and checked, before anything is sent:
        a failure here is ``StoreUnreachable`` (the batch never ran)."""
        pool = self.client.connection_pool
        try:
            if _wants_command_name(type(pool)):
                return await pool.get_connection("EVALSHA")  # type: ignore[no-untyped-call,unused-ignore]
            return await pool.get_connection()  # type: ignore[no-untyped-call,unused-ignore]
        except (RedisError, OSError) as exc:
            error = unreachable(translate(exc, self.where, secrets=self.secrets))
            raise error from error.__cause__


class Listener:
    """One pub/sub connection subscribed to the store's channel; wakes whoever waits.

    Opened by the first ``wait``; if it breaks, waiters fall back to their timeout and the
    next ``wait`` opens it again. It reads with a timeout, so no socket timeout ends it.
    """

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.waiters = Waiters()
        self.task: asyncio.Task[None] | None = None

    async def wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._listen(), name=f"piton listener on {self.channel}")
        await self.waiters.wait(timeout)

    async def _listen(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.waiters.wake()  # what was delivered before we listened: look once
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                honour_cancellation()  # or the loop never ends
                if message is not None:
                    self.waiters.wake()
        except (RedisError, OSError):
            pass  # the server went away: waiters time out and poll, the next wait reconnects
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])


class Engine:
    """What a store uses on one event loop: a client (with its pool), the writer, the
    listener."""

    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        where: str,
        channel: str,
        forget: Callable[[Engine], None],
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.client = aioredis.Redis.from_url(url, **options)
        # reads share READERS connections: redis-py's pool opens one per concurrent call,
        # and past its limit (100) fails the call as if the server were down; a worker
        # running a thousand runs would open a thousand
        self.reads = asyncio.Semaphore(READERS)
        self.writer = Writer(self.client, where, secrets)
        self.listener = Listener(self.client, channel)
        self.forget = forget
        self.closed = False
        self._guard = self._until_loop_ends()

    async def start(self) -> None:
        """Arm the guard that closes this engine when its loop shuts down."""
        await self._guard.__anext__()

    async def _until_loop_ends(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.aclose()

    async def shutdown(self) -> None:
        await self._guard.aclose()  # runs its `finally` if it was started
        await self.aclose()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.forget(self)
        try:
            await self.listener.aclose()
            await self.writer.aclose()
        finally:
            await self.client.aclose()


# --- the URL ----------------------------------------------------------------------------------

READERS = 32  # reads in flight at once per store and event loop (each holds a connection)
OPTIONS = ("prefix", "lease", "deadline")  # piton's own URL options; the rest is redis-py's
CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 10.0,
    "socket_timeout": 30.0,
    "client_name": "piton",
}
if MaintNotificationsConfig is not None:  # redis-py 7+: keep the pool's stale-connection check
    CLIENT_DEFAULTS["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)


def parse_store_url(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(the URL for redis-py, piton's options, the connection arguments it sets)."""
    client_url, options = split_store_url(
        url,
        ("redis", "rediss"),
        "a Redis URL: use redis://[user:password@]host:port/db?prefix=name (or rediss:// for TLS)",
        OPTIONS,
    )
    rest = parse_qsl(urlsplit(client_url).query, keep_blank_values=True)
    try:
        connect: dict[str, Any] = dict(parse_url(client_url))
    except ValueError as exc:
        text = str(exc)
        shown = scrub(text, secrets_of(url))
        error = WorkflowConfigurationError(f"Store URL {redact_url(url)!r}: {shown}")
        raise error from (exc if shown == text else None)
    unknown = sorted(key for key, _ in rest if key not in _known_options())
    if unknown:
        raise WorkflowConfigurationError(
            f"Store URL {redact_url(url)!r}: unknown option {unknown[0]!r}. piton's own options are "
            "prefix, lease and deadline; the others go to redis-py (socket_timeout, ssl_cert_reqs, ...)."
        )
    return client_url, options, connect


@cache
def _known_options() -> frozenset[str]:
    """The keyword arguments redis-py's pool and connections take, as URL query options."""
    known = {"max_connections"}
    for cls in (AbstractConnection, Connection, SSLConnection):
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD:
                known.add(name)
    return frozenset(known)


@cache
def _wants_command_name(pool: type[Any]) -> bool:
    """redis-py before 5.3 wants ``get_connection(command_name)``; later ones warn about it."""
    try:
        parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


# --- errors -----------------------------------------------------------------------------------


_CODE = re.compile(r"\b(NOAUTH|WRONGPASS|NOPERM|LOADING|BUSY|OOM|MISCONF|READONLY|WRONGTYPE)\b")


def translate(
    exc: BaseException, where: str, *, writing: bool = False, secrets: tuple[str, ...] = ()
) -> StoreError:
    """A redis-py error as the piton error a caller can act on, chained to it (``__cause__``)
    unless its message held a password: then the message is scrubbed and not chained."""
    if isinstance(exc, StoreError):
        return exc
    raw = " ".join(str(exc).split())
    text = scrub(raw, secrets)
    match = _CODE.search(text)
    code = match.group(1) if match else ""
    unsure = (
        " A write that was under way may or may not have been applied; load the run to see."
        if writing
        else ""
    )
    error: StoreError
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError) or code in (
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
    ):
        error = StoreError(
            f"{where}: the server refused the login or a command ({text}). Check the user and "
            "password in the URL (redis://user:password@host:port/db) and the user's ACL: "
            "piton runs Lua scripts (EVALSHA, SCRIPT LOAD) on the keys under its prefix."
        )
    elif isinstance(exc, BusyLoadingError) or code == "LOADING":
        error = StoreUnavailable(
            f"{where}: the server is loading its data set ({text}). Nothing committed is lost; "
            "retry in a moment."
        )
    elif code == "BUSY":
        error = StoreUnavailable(
            f"{where}: the server is busy running a script ({text}). Nothing committed is lost; "
            "retry, or stop the script with SCRIPT KILL."
        )
    elif isinstance(exc, OutOfMemoryError) or code == "OOM":
        error = StoreUnavailable(
            f"{where}: the server is out of memory ({text}). Nothing committed is lost; prune "
            "finished runs (store.prune) or raise maxmemory, then retry."
        )
    elif code == "MISCONF":
        error = StoreUnavailable(
            f"{where}: the server refuses writes because it cannot save to disk ({text}). "
            "Nothing committed is lost; fix the server's disk or persistence, then retry."
        )
    elif isinstance(exc, ReadOnlyError) or code == "READONLY":
        error = StoreUnavailable(
            f"{where} is a read-only replica ({text}). Point the URL at the primary; during a "
            "failover, retry once it is over."
        )
    elif code == "WRONGTYPE":
        error = StoreError(
            f"{where}: a key under piton's prefix holds data piton did not write ({text}). Give "
            "piton a prefix of its own: ?prefix=name in the URL or RedisStore(prefix=...)."
        )
    elif isinstance(exc, RedisTimeoutError | asyncio.TimeoutError):
        error = StoreUnavailable(
            f"{where} did not answer in time ({text}). Nothing committed is lost; check the "
            f"server and the network, or raise ?socket_timeout=seconds, then retry.{unsure}"
        )
    elif isinstance(exc, RedisConnectionError | OSError):
        error = StoreUnavailable(
            f"{where} cannot be reached ({text}). Nothing committed is lost; check that the "
            f"server is running and the URL's host and port, then retry.{unsure}"
        )
    else:
        error = StoreError(f"{where} failed: {type(exc).__name__}: {text}")
    error.__cause__ = exc if text == raw else None
    error.__suppress_context__ = True
    return error
