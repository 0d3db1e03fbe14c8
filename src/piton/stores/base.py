"""The Store protocol every backend implements, and ``open_store(url)``.

A store keeps, per run: a row (status, owner and lease epoch, last journal sequence
number, wake-up deadline, number of waiters, result), an append-only journal of
reducer inputs (JSON text), an optional snapshot that replaces the journal prefix it
covers, the run's stream of published events, and an inbox of events sent from outside.

Rules every backend keeps (``piton.testing.check_store`` checks them):

- ``commit`` is atomic: journal entries, stream events, inbox deletions, snapshot and
  the run row change together or not at all. It fails with ``LeaseLost`` unless the
  run's epoch equals the request's and the run's ``seq`` equals ``request.seq``.
- ``claim`` hands a run to a new owner with a new, higher epoch, if the run is not
  final and its owner is absent, the caller itself, expired, or a dead process on
  this host. ``release`` hands leases back: the run is free at once, same epoch.
- ``claim_runnable`` claims, in one atomic step, runs that ``is_runnable`` and
  ``may_claim`` (``claimable``), of the given workflows only; two callers never get the
  same run. A run created queued and a release wake ``wait_for_work`` in other processes
  (on the stores that can tell them).
- A commit that is not plain writes the run's ``waiters``; a plain one leaves them.
- ``deliver(limit=n)`` checks the inbox and adds the event in one atomic step.
- Stored data is untrusted: a row that cannot be read fails that run only
  (``JournalCorrupted`` naming the run and the column); listings skip and log it.
- Driver errors leave the store as ``StoreError`` subclasses; no message, log or repr
  shows a password (``redact_url``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import math
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlsplit, urlunsplit

from piton._core.status import FINAL_STATUSES, PARKED, QUEUED, RUNNING, STATUSES, RunStatus
from piton.errors import (
    InvalidCursor,
    LeaseLost,
    TooManyPendingEvents,
    WorkflowConfigurationError,
)
from piton.stores._redact import redact_url


@dataclass
class RunRecord:
    run_id: str
    workflow: str
    status: RunStatus
    fingerprint: str = "{}"
    owner: str | None = None
    epoch: int = 0
    lease_until: float | None = None
    seq: int = 0
    wake_at: float | None = None
    inbox: int = 0
    result: str | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    start: str | None = None  # the start event, for queued runs
    # how many waiters (wait_for_event / ctx.sleep) the run had at its last non-plain
    # commit; exact for parked runs, whose parking commit always writes it
    waiters: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass
class Loaded:
    """What ``load`` returns: the snapshot, then the journal entries after it."""

    record: RunRecord
    snapshot: str | None
    snapshot_seq: int
    entries: list[tuple[int, str]]
    stream: list[str]
    inbox: list[tuple[int, str, str | None]]


@dataclass
class CommitRequest:
    run_id: str
    epoch: int
    seq: int  # the run's seq before this commit; entries get seq+1, seq+2, ...
    entries: list[str] = field(default_factory=list)
    stream: list[str] = field(default_factory=list)
    status: RunStatus = RUNNING
    result: str | None = None
    error: str | None = None
    wake_at: float | None = None
    inbox_done: list[int] = field(default_factory=list)
    snapshot: str | None = None  # covers every entry up to seq + len(entries)
    fingerprint: str | None = None
    release: bool = False  # give up ownership (parked runs, finished runs)
    waiters: int = 0  # the run's waiters after this commit (written by non-plain commits)

    @property
    def plain(self) -> bool:
        """Changes nothing on the run's row but its seq: the cheapest case of a store."""
        return (
            self.status == RUNNING
            and not self.release
            and self.result is None
            and self.error is None
            and self.wake_at is None
            and self.fingerprint is None
            and self.snapshot is None
            and not self.inbox_done
        )

    @property
    def batchable(self) -> bool:
        """Takes no inbox event: a store may apply many such requests in one statement
        (plain commits, those that park or finish a run, or write a snapshot), as the
        inbox count a taken event changes is read from the inbox itself."""
        return not self.inbox_done


class Store(ABC):
    """A place where runs are kept. Create one, ``await store.open()``, share it."""

    url: str = ""
    lease: float = 15.0  # seconds a claim lasts without renewal
    # seconds piton keeps retrying a store that cannot be reached (reconnecting with
    # back-off) before a caller gets StoreUnavailable; workers retry without a deadline
    deadline: float = 30.0

    def __init__(self) -> None:
        self.owner = process_owner()

    @property
    def identity(self) -> str:
        """Names the database: the runtime drives a run once per identity, whichever store
        object on that database a caller used."""
        return f"{type(self).__name__}@{id(self)}"

    @classmethod
    def from_url(cls, url: str) -> Store:
        """The store ``url`` names; ``open_store`` calls it for the schemes in ``BACKENDS``."""
        raise WorkflowConfigurationError(
            f"{cls.__name__} cannot be opened from a URL ({redact_url(url)!r}); create it "
            "directly and pass the store object."
        )

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def create(
        self,
        record: RunRecord,
        entries: list[str],
        stream: list[str],
        *,
        snapshot: str | None = None,
    ) -> bool:
        """Insert a new run owned by ``record.owner`` with its first commit; False if it exists.

        ``snapshot``: the run as it stood before ``entries`` (a run that continues a
        restored context), stored as the snapshot at seq 0 in the same transaction, so
        the run is never seen without the state it goes on from."""

    @abstractmethod
    async def get(self, run_id: str) -> RunRecord | None: ...

    @abstractmethod
    async def claim(self, run_id: str, owner: str, lease: float) -> int | None:
        """Take the run over; return the new epoch, or None if someone else holds it."""

    @abstractmethod
    async def get_many(self, run_ids: list[str]) -> dict[str, RunRecord]:
        """The records of ``run_ids`` that exist, by run id, read in one round trip (a long
        list in chunks). A run whose row cannot be read is left out and logged."""

    @abstractmethod
    async def claim_runnable(
        self, workflows: list[str], now: float, owner: str, lease: float, limit: int
    ) -> list[RunRecord]:
        """Claim up to ``limit`` runs of ``workflows`` (no other run is touched) that a
        worker should take now, atomically; return them as they are after the claim.

        A run is taken when ``claimable(record, owner, now)``: it is runnable at run time
        ``now`` (queued; running with an expired lease, no owner or a dead owner on this
        host; parked with an inbox event or a deadline at or before ``now``) and
        ``owner`` may claim it (``may_claim``, on the wall clock). Each run taken gets the
        next epoch, ``owner``, status ``running`` and a lease until ``time.time() +
        lease``. Two concurrent callers never get the same run.
        """

    @abstractmethod
    async def load(self, run_id: str) -> Loaded: ...

    @abstractmethod
    async def commit(self, request: CommitRequest) -> None: ...

    @abstractmethod
    async def renew(self, run_ids: list[tuple[str, int]], owner: str, lease: float) -> list[str]:
        """Extend the leases of (run_id, epoch) pairs; return the ids whose lease was lost."""

    @abstractmethod
    async def deliver(
        self, run_id: str, event: str, step: str | None = None, *, limit: int | None = None
    ) -> None:
        """Put an event in the run's inbox.

        With ``limit``, refuse (``TooManyPendingEvents`` naming the run and the limit) when the
        inbox already holds ``limit`` events; the check and the insert are atomic.
        """

    @abstractmethod
    async def runnable(self, workflows: list[str], now: float, limit: int = 100) -> list[RunRecord]:
        """Runs a worker could take: queued, expired or dead-owned, or parked and due."""

    @abstractmethod
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
        """Runs newest first: ordered by ``(created_at, run_id)`` descending (run ids of one
        ``created_at`` by their UTF-8 bytes), at most ``limit``, a page at a time.

        ``after`` is the ``run_cursor()`` of the last run of the page before: the runs
        strictly after it in this order (a keyset read, as fast deep in the list as on its
        first page; the run it names need not exist any more). ``status`` and ``workflow``
        keep only the runs that have them; ``created_after <= created_at < created_before``
        (unix seconds) keeps the runs created then. A cursor that ``run_cursor`` did not make
        raises ``InvalidCursor``. A run whose row cannot be read is left out and logged.
        """

    async def journal(
        self, run_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        """The run's journal entries ``(seq, entry)`` with ``seq > after``, in order of seq, at
        most ``limit``: page through a long run with ``after`` = the last seq seen.

        A snapshot does not delete the entries it sums up: the journal is the run's whole
        history. (Runs written by a piton that compacted them lack those entries: the
        first entry may then come after ``after + 1``.) ``RunNotFound`` if there is no
        such run. This default reads only what ``load`` returns (the entries after the
        snapshot); backends read the page from the whole history.
        """
        after, limit = check_page(after, limit)
        loaded = await self.load(run_id)
        return [entry for entry in loaded.entries if entry[0] > after][:limit]

    @abstractmethod
    async def release(self, runs: list[tuple[str, int]], owner: str) -> None:
        """Hand back the leases of (run_id, epoch) pairs that ``owner`` holds at that epoch.

        The run keeps its status; its owner and lease_until become NULL (epoch unchanged),
        so any process may claim it at once. Pairs not held by ``owner`` at that epoch, and
        finished runs, are left alone. Used when a process leaves (its loop ends, SIGTERM).
        All pairs are released in one call (one transaction, where the store has them).
        """

    @abstractmethod
    async def stuck(self, workflows: list[str] | None = None, limit: int = 100) -> list[RunRecord]:
        """Runs that nothing will ever move on (``is_stuck``): parked, with no inbox event,
        no wake-up deadline and no waiter. Should be empty. Oldest first; only runs of
        ``workflows`` when given. A run whose row cannot be read is left out and logged."""

    async def wait_for_work(self, timeout: float) -> None:
        """Return once a run may need a worker (an event was delivered to it, a run was
        queued, leases were released, in another process), or after ``timeout`` seconds.

        Backends that can be told (PostgreSQL's LISTEN/NOTIFY) return early; this default
        waits out the timeout, and the caller polls.
        """
        await asyncio.sleep(timeout)

    @abstractmethod
    async def prune(self, older_than: float | timedelta) -> int:
        """Delete finished runs that finished more than ``older_than`` ago (seconds or a
        ``timedelta``); return how many. Unfinished runs are never pruned."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)!r}>"

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --- process identity: is the owner of a run still alive? ---------------------------------


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may hold spaces: fields resume after the last ')'
    return data[data.rfind(b")") + 2 :].split()[19].decode()


def process_owner() -> str:
    """``host/pid/start-time``: identifies this process, even after pid reuse."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_time(pid) or int(time.time())}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` is a process on this host that no longer exists."""
    if not owner:
        return True
    parts = owner.split("/")
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    start = _start_time(pid)
    if start is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return not os.path.exists("/proc")  # alive, but /proc unreadable: trust kill()
    return start != parts[2]


def split_store_url(
    url: str, schemes: tuple[str, ...], usage: str, own: Iterable[str]
) -> tuple[str, dict[str, str]]:
    """(``url`` without piton's own query options, those options), for a networked store.

    ``schemes`` are the schemes the store takes; ``usage`` shows a right URL in the error.
    """
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise WorkflowConfigurationError(
            f"Store URL {redact_url(url)!r} is not a URL ({exc})."
        ) from exc
    if parts.scheme not in schemes:
        raise WorkflowConfigurationError(f"Store URL {redact_url(url)!r} is not {usage}.")
    own = frozenset(own)
    options = {key: value for key, value in query if key in own}
    rest = [(key, value) for key, value in query if key not in own]
    return urlunsplit(parts._replace(query=urlencode(rest))), options


def url_option(
    store: str,
    url: str,
    name: str,
    given: Any,
    options: dict[str, str],
    kind: type[Any],
    default: Any,
) -> Any:
    """Option ``name`` of ``store`` (a class name) from its keyword argument or the URL's
    ``options`` (both: they must agree), else ``default``."""
    if name not in options:
        return default if given is None else given
    try:
        value = kind(options[name])
    except ValueError:
        raise WorkflowConfigurationError(
            f"Store URL {redact_url(url)!r}: {name}={options[name]!r} is not a {kind.__name__}."
        ) from None
    if given is not None and given != value:
        raise WorkflowConfigurationError(
            f"{store}({name}={given!r}) disagrees with {name}={options[name]} in the URL; "
            "give it once."
        )
    return value


def check_timing(store: Store, lease: float, deadline: float) -> None:
    """Set ``store.lease`` and ``store.deadline``, refusing values that are not seconds."""
    name = type(store).__name__
    for key, value in (("lease", lease), ("deadline", deadline)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise WorkflowConfigurationError(
                f"{name}({key}={value!r}): give seconds > 0 ({key}=inf waits for ever)."
                if key == "deadline"
                else f"{name}({key}={value!r}): give seconds > 0."
            )
    if lease == float("inf"):
        raise WorkflowConfigurationError(
            f"{name}(lease=inf): a lease must end, or a dead process would hold its runs for "
            "ever; give seconds (15 by default)."
        )
    store.lease, store.deadline = float(lease), float(deadline)


def age_in_seconds(older_than: float | timedelta) -> float:
    """``prune``'s argument as seconds, refusing what cannot be an age."""
    if isinstance(older_than, timedelta):
        seconds = older_than.total_seconds()
    elif isinstance(older_than, int | float) and not isinstance(older_than, bool):
        seconds = float(older_than)
    else:
        raise WorkflowConfigurationError(
            f"prune(older_than={older_than!r}): give seconds or a datetime.timedelta."
        )
    if not seconds >= 0:
        raise WorkflowConfigurationError(
            f"prune(older_than={older_than!r}): an age cannot be negative."
        )
    return seconds


def check_fence(r: CommitRequest, epoch: int, owner: str | None, seq: int) -> None:
    """Raise ``LeaseLost`` unless ``r`` may commit to a run at ``epoch``/``owner``/``seq``."""
    if epoch != r.epoch:
        raise LeaseLost(
            f"Run '{r.run_id}' is now owned by another process (epoch {epoch}, ours "
            f"{r.epoch}); this process stops working on it."
        )
    if owner is None:
        raise LeaseLost(
            f"Run '{r.run_id}' was released (parked or finished) at epoch {epoch}; claim it "
            "again before committing."
        )
    if seq != r.seq:
        raise LeaseLost(f"Run '{r.run_id}' journal is at seq {seq}, expected {r.seq}.")


def may_claim(record: RunRecord, owner: str, now: float) -> bool:
    """The claim rule shared by every backend."""
    if record.finished:
        return False
    if record.owner is None or record.owner == owner:
        return True
    if record.lease_until is not None and record.lease_until < now:
        return True
    return owner_is_dead(record.owner)


def is_runnable(record: RunRecord, now: float) -> bool:
    """Whether a worker should take the run now: queued, abandoned, or parked and due."""
    if record.finished:
        return False
    if record.status == QUEUED:
        return True
    if record.status == PARKED:
        return record.inbox > 0 or (record.wake_at is not None and record.wake_at <= now)
    if record.owner is None:
        return True
    if record.lease_until is not None and record.lease_until < now:
        return True
    return owner_is_dead(record.owner)


def claimable(record: RunRecord, owner: str, now: float, wall: float | None = None) -> bool:
    """Whether ``claim_runnable`` takes the run for ``owner``: runnable at run time ``now``
    (``is_runnable``), and ``owner`` may claim it at wall-clock time ``wall`` (``may_claim``;
    ``time.time()`` when not given). Run time may be a test's fake clock; leases are real
    time."""
    if not is_runnable(record, now):
        return False
    return may_claim(record, owner, time.time() if wall is None else wall)


def is_stuck(record: RunRecord) -> bool:
    """Whether nothing will ever move the run: parked (so held by no process, and not
    final), with no inbox event, no wake-up deadline and no waiter."""
    return (
        record.status == PARKED
        and record.inbox == 0
        and record.wake_at is None
        and record.waiters == 0
    )


def check_limit(limit: int | None) -> None:
    """Refuse a ``deliver(limit=...)`` that cannot be a number of events."""
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise WorkflowConfigurationError(
            f"deliver(limit={limit!r}): give a whole number of events >= 0, or None for no limit."
        )


def too_many_events(run_id: str, limit: int) -> TooManyPendingEvents:
    """The refusal of ``deliver`` to a run whose inbox already holds ``limit`` events."""
    return TooManyPendingEvents(
        f"Run '{run_id}' keeps at most {limit} events that nothing has taken yet (limit="
        f"{limit}), and holds that many: this event was not delivered. Wait for the run to take "
        "some (a step or a waiter consumes them), or raise the limit."
    )


# --- paging ------------------------------------------------------------------------------------


def run_cursor(record: RunRecord) -> str:
    """The cursor ``list_runs(after=...)`` takes to list the runs after ``record``: its
    ``created_at`` and run id, in a form safe on a command line (URL-safe base64)."""
    raw = f"{record.created_at!r}:{record.run_id}".encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_cursor(cursor: str) -> tuple[float, str]:
    """``(created_at, run_id)`` of a ``run_cursor``; ``InvalidCursor`` if it is not one."""
    problem = InvalidCursor(
        f"{cursor!r} is not a paging cursor of piton: pass the cursor of the last run of the "
        "page before (printed by `piton runs`; run_cursor(record) in Python), or none to start "
        "at the newest run."
    )
    if not isinstance(cursor, str) or not cursor or len(cursor) > 4096:
        raise problem
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, sep, run_id = raw.decode("utf-8", "surrogatepass").partition(":")
        created_at = float(created)
    except (binascii.Error, ValueError):
        raise problem from None
    if not sep or not run_id or not math.isfinite(created_at):
        raise problem
    return created_at, run_id


def check_page(after: int, limit: int) -> tuple[int, int]:
    """``journal``'s ``after`` and ``limit`` as whole numbers, refusing what cannot be one."""
    for name, value in (("after", after), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise WorkflowConfigurationError(
                f"journal({name}={value!r}): give a whole number (a journal seq for after, a "
                "number of entries for limit)."
            )
    return max(after, 0), max(limit, 0)


def check_window(
    created_after: float | None, created_before: float | None
) -> tuple[float | None, float | None]:
    """``list_runs``' creation-time bounds as floats (None: no bound)."""
    bounds: list[float | None] = []
    for name, value in (("created_after", created_after), ("created_before", created_before)):
        if value is None:
            bounds.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise WorkflowConfigurationError(
                f"list_runs({name}={value!r}): give unix seconds (a float), or None."
            )
        bounds.append(float(value))
    return bounds[0], bounds[1]


def page_key(record: RunRecord) -> tuple[float, bytes]:
    """The order of ``list_runs`` (descending): created_at, then the run id's UTF-8 bytes."""
    return record.created_at, record.run_id.encode("utf-8", "surrogatepass")


def in_page(
    record: RunRecord,
    status: str | None,
    workflow: str | None,
    after: tuple[float, bytes] | None,
    created_after: float | None,
    created_before: float | None,
) -> bool:
    """Whether ``list_runs`` with these arguments (``after`` parsed, as ``page_key``) may
    return ``record``: the filter of a store that reads runs one by one."""
    if status is not None and record.status != status:
        return False
    if workflow is not None and record.workflow != workflow:
        return False
    if created_after is not None and not record.created_at >= created_after:
        return False
    if created_before is not None and not record.created_at < created_before:
        return False
    return after is None or page_key(record) < after


# scheme -> "module:Class" of the backend that serves it, imported only when a URL asks for
# it: this module imports no backend, and no driver. Each class makes its store with
# ``Class.from_url(url)``.
BACKENDS: dict[str, str] = {
    "sqlite": "piton.stores.sqlite:SqliteStore",
    "memory": "piton.stores.memory:MemoryStore",
    "postgresql": "piton.stores.postgres:PostgresStore",
    "postgres": "piton.stores.postgres:PostgresStore",
    "redis": "piton.stores.redis:RedisStore",
    "rediss": "piton.stores.redis:RedisStore",
}
# module -> (the driver's package, its name, the extra that installs it): optional backends
_EXTRAS = {
    "piton.stores.postgres": ("psycopg", "psycopg 3", "postgres"),
    "piton.stores.redis": ("redis", "redis-py", "redis"),
}
_EXAMPLES = "sqlite:///path.db, memory://, postgresql://user@host/db or redis://host:6379/0"


def backend(spec: str, wanted: str) -> type[Store]:
    """The class ``spec`` (``module:Class``, a value of ``BACKENDS``) names, imported now.

    ``wanted`` (a URL, a class name) says in the error what needed the backend, when its
    driver is not installed: the error names the extra that installs it.
    """
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package, driver, extra = _EXTRAS.get(module_name, ("", "", ""))
        if not package or not (exc.name or "").startswith(package):
            raise
        raise WorkflowConfigurationError(
            f"{wanted} needs {driver}, which is not installed ({exc}): "
            f"pip install 'piton[{extra}]'."
        ) from exc
    found: type[Store] = getattr(module, class_name)
    return found


def open_store(url: str | Store) -> Store:
    """A store for ``url``: ``sqlite:///path.db``, ``memory://``, ``postgresql://...``, ``redis://...``.

    The scheme picks the backend (``BACKENDS``); a store object is returned as it is.
    """
    if isinstance(url, Store):
        return url
    scheme = urlparse(url).scheme
    spec = BACKENDS.get(scheme)
    if spec is None:
        raise WorkflowConfigurationError(
            f"Unknown store URL {redact_url(url)!r}: the known schemes are "
            f"{', '.join(f'{name}://' for name in BACKENDS)}. Use {_EXAMPLES}."
        )
    return backend(spec, f"Store URL {redact_url(url)!r}").from_url(url)


__all__ = [
    "BACKENDS",
    "FINAL_STATUSES",
    "STATUSES",
    "CommitRequest",
    "Loaded",
    "RunRecord",
    "Store",
    "backend",
    "check_limit",
    "check_page",
    "check_window",
    "check_timing",
    "claimable",
    "in_page",
    "is_runnable",
    "is_stuck",
    "may_claim",
    "open_store",
    "page_key",
    "parse_cursor",
    "owner_is_dead",
    "process_owner",
    "redact_url",
    "run_cursor",
    "too_many_events",
    "url_option",
]
