"""How RedisStore writes runs into Redis values and reads them back.

Script arguments are bytes (text encoded here, so text that cannot be stored fails only
its own call, not the pipeline it would have joined); floats travel as ``repr`` (exact);
an optional argument is ``''`` for None, else ``'='`` and the value. A run's hash holds
its ``RunRecord`` fields as text, absent when None. ``Codec.loaded`` checks what ``load``
read: a part that is damaged raises ``JournalCorrupted`` naming the run and the seq.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from piton._core.status import FINAL_STATUSES
from piton.errors import JournalCorrupted, LeaseLost, RunNotFound, StoreError
from piton.stores._rows import (
    COLUMNS,
    DEFAULTS,
    INTEGERS,
    TIMES,
    BadColumn,
    LoadReader,
    RowReader,
    check_column,
)
from piton.stores.base import CommitRequest, Loaded, RunRecord

Arg: TypeAlias = bytes | str | int | float

FIELDS = COLUMNS
_INTS = INTEGERS
_FLOATS = TIMES
# what load() reads, in order: the name of each part, for errors
PARTS = (
    "the run's hash",
    "the snapshot",
    "the journal",
    "the stream",
    "the inbox",
    "the inbox's steps",
)


def encode_arg(value: Arg | None) -> Arg:
    """A script argument: text as UTF-8, a float as its exact ``repr``, None as ``''``."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise StoreError(
                f"Text cannot be stored in Redis: it is not valid Unicode ({exc.reason} at "
                f"position {exc.start})."
            ) from exc
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return b""
    return value


def opt(value: str | float | None) -> bytes | None:
    """An optional script argument: None stays None (sent as ``''``), else ``'='`` + value."""
    if value is None:
        return None
    text = repr(float(value)) if isinstance(value, int | float) else value
    return b"=" + text.encode("utf-8")


def encode_record(record: RunRecord) -> list[Arg]:
    """The run's hash as field, value, field, value, ...; None fields are left out."""
    out: list[Arg] = []
    for name in FIELDS:
        value = getattr(record, name)
        if value is None:
            continue
        if name in _INTS:
            value = int(value)
        elif name in _FLOATS:
            value = float(value)
        out += [name, value]
    return out


def commit_args(r: CommitRequest, now: float) -> list[Arg | None]:
    """The commit script's arguments after the prefix (see ``_redis_scripts.COMMIT``)."""
    waiters = None if r.plain else b"=%d" % int(r.waiters)  # a plain commit leaves it
    return [
        r.run_id,
        r.epoch,
        r.seq,
        r.seq + len(r.entries),
        now,
        r.status,
        int(r.status in FINAL_STATUSES),
        int(r.release),
        opt(r.result),
        opt(r.error),
        opt(r.wake_at),
        opt(r.fingerprint),
        opt(r.snapshot),
        waiters,
        len(r.entries),
        len(r.stream),
        len(r.inbox_done),
        *r.entries,
        *r.stream,
        *r.inbox_done,
    ]


class Codec:
    """Reads records and loads; ``where`` and ``url`` name the store in errors."""

    def __init__(self, where: str, url: str) -> None:
        self.where, self.url = where, url
        self.rows = RowReader(where, "the run's field")
        self.parts = LoadReader(where, "the data")

    def missing(self, run_id: str) -> RunNotFound:
        return RunNotFound(f"No run '{run_id}' in {self.url}.")

    def number(self, value: bytes | None, run_id: str, what: str) -> int:
        try:
            return int(value or b"")
        except ValueError:
            raise self.parts.damaged(run_id, f"{what} is {value!r}, not a number") from None

    def committed(self, r: CommitRequest, reply: list[bytes]) -> None:
        """The commit script's reply: nothing, or why it wrote nothing."""
        kind = bytes(reply[0]).decode()
        if kind == "ok":
            return
        if kind == "missing":
            raise self.missing(r.run_id)
        value = bytes(reply[1]).decode("utf-8", "replace")
        if kind == "damaged-field":
            raise self.bad_field(r.run_id, reply, "committed to")
        if kind == "damaged":
            raise JournalCorrupted(
                f"Run '{r.run_id}' cannot be committed to {self.where}: the key '{value}' holds "
                "another type of value, so nothing was written. Other runs are not affected. "
                "Restore the data from a backup, or prune or delete this run."
            )
        if kind == "epoch":
            raise LeaseLost(
                f"Run '{r.run_id}' is now owned by another process (epoch {value}, ours "
                f"{r.epoch}); this process stops working on it."
            )
        if kind == "released":
            raise LeaseLost(
                f"Run '{r.run_id}' was released (parked or finished) at epoch {value}; claim "
                "it again before committing."
            )
        raise LeaseLost(f"Run '{r.run_id}' journal is at seq {value}, expected {r.seq}.")

    def bad_field(self, run_id: str, reply: list[bytes], verb: str) -> JournalCorrupted:
        """A script's ``{'damaged-field', name, value}``: it found the field and wrote nothing."""
        name = bytes(reply[1]).decode("utf-8", "replace")
        try:
            check_field(name, bytes(reply[2]))
        except BadColumn as bad:
            return self.rows.damaged(run_id, bad, verb)
        return self.rows.damaged(run_id, BadColumn(name, "is not a number"), verb)

    def record(self, run_id: str, raw: dict[Any, Any]) -> RunRecord:
        """The run's hash as a RunRecord; ``JournalCorrupted`` naming the run and the field
        when one cannot be read."""
        return self.rows.record(values(raw), run_id)

    def loaded(
        self,
        record: RunRecord,
        snapshot: dict[bytes, bytes],
        journal: dict[bytes, bytes],
        stream: list[bytes],
        inbox: dict[bytes, bytes],
        steps: dict[bytes, bytes],
    ) -> Loaded:
        """What ``load`` read, checked: the journal must run from the snapshot to the run's seq."""
        run_id, parts = record.run_id, self.parts
        snap_seq, data = 0, None
        if snapshot:
            snap_seq = self.number(snapshot.get(b"seq"), run_id, "the snapshot's seq")
            if b"data" not in snapshot:
                raise parts.damaged(run_id, f"the snapshot at seq {snap_seq} is empty")
            data = parts.text(snapshot[b"data"], run_id, f"the snapshot at seq {snap_seq}")
        numbered = sorted(
            (self.number(seq, run_id, "a journal entry's seq"), body)
            for seq, body in journal.items()
        )
        # entries up to the snapshot's seq are covered by it
        entries = parts.journal(record, snap_seq, [e for e in numbered if e[0] > snap_seq])
        events = [parts.text(body, run_id, f"stream event {n}") for n, body in enumerate(stream)]
        messages = []
        for key, body in inbox.items():
            n = self.number(key, run_id, "an inbox message id")
            step = steps.get(key)
            event = parts.text(body, run_id, f"inbox event {n}")
            name = None if step is None else parts.text(step, run_id, f"inbox step {n}")
            messages.append((n, event, name))
        messages.sort(key=lambda m: m[0])
        return Loaded(record, data, snap_seq, entries, events, messages)


def values(raw: dict[Any, Any]) -> list[Any]:
    """A run's hash as the values of a row, in the order of ``COLUMNS``, for ``_rows``: a
    field that is absent takes its default (``waiters`` 0), numbers are parsed, text stays
    bytes (``_rows`` decodes it, and names what cannot be read)."""
    found = dict(DEFAULTS)
    for key, value in raw.items():
        name = bytes(key).decode("utf-8", "replace")
        if name in found:
            found[name] = _parse(name, bytes(value))
    return [found[name] for name in COLUMNS]


def _parse(name: str, value: bytes) -> Any:
    if name not in _INTS and name not in _FLOATS:
        return value
    try:
        return int(value) if name in _INTS else float(value)
    except ValueError:
        return value  # not a number: _rows names it


def check_field(name: str, value: bytes) -> None:
    """``BadColumn`` unless ``value`` is what the run's field ``name`` may hold."""
    check_column(name, _parse(name, value))
