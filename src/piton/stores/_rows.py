"""Run rows, and the rest of a run that ``load`` reads, checked as they come back from a
store, before they become ``RunRecord``s and ``Loaded``s.

Stored data is untrusted (DESIGN.md, promise 8): SQLite keeps whatever a hand-made
``UPDATE`` puts in a column, a Redis hash field can hold any bytes, and even a typed
PostgreSQL column can hold a NaN time or a status piton never writes. A row with such a
value cannot become a record: ``get``, ``load`` and ``claim`` of that run raise
``JournalCorrupted`` naming the run and the column, and ``runnable``, ``list_runs`` and
``stuck`` leave the run out and log an error naming it (logger ``piton.store``), so
every other run goes on. Likewise a journal with a gap, or one that goes on past the
run's seq, or an entry, event or snapshot that is NULL or not UTF-8, fails ``load`` of
that run only (``LoadReader``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import MISSING, fields
from typing import Any

from piton._core.status import STATUSES
from piton.errors import JournalCorrupted
from piton.stores.base import RunRecord

log = logging.getLogger("piton.store")

COLUMNS = tuple(f.name for f in fields(RunRecord))
# a column's value when a store does not hold it (a Redis hash leaves None fields out)
DEFAULTS: dict[str, Any] = {
    f.name: None if f.default is MISSING else f.default for f in fields(RunRecord)
}
TEXT = frozenset(
    {"run_id", "workflow", "status", "fingerprint", "owner", "result", "error", "start"}
)
INTEGERS = frozenset({"epoch", "seq", "inbox", "waiters"})
TIMES = frozenset({"lease_until", "wake_at", "created_at", "updated_at", "finished_at"})
NUMBERS = INTEGERS | TIMES
_OPTIONAL = frozenset(
    {"owner", "result", "error", "start", "lease_until", "wake_at", "finished_at"}
)


class BadColumn(ValueError):
    """A column holds a value piton never writes there."""

    def __init__(self, column: str, problem: str) -> None:
        super().__init__(f"column '{column}' {problem}")
        self.column, self.problem = column, problem


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
        kind = "the text" if text.isprintable() else "the bytes"
        shown = repr(text) if kind == "the text" else repr(bytes(value))
    else:
        kind, shown = ("the text", repr(value)) if isinstance(value, str) else ("", repr(value))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{kind} {shown}".strip()


def _text(name: str, value: Any) -> str | None:
    if isinstance(value, bytes | bytearray):  # SQLite's text columns are read as bytes
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadColumn(
                name, f"is not valid UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
    if value is None:
        if name in _OPTIONAL:
            return None
        raise BadColumn(name, "has no value")
    if not isinstance(value, str):
        raise BadColumn(name, f"holds {_show(value)}, not text")
    if name == "status" and value not in STATUSES:
        raise BadColumn(name, f"holds {value!r}, not a run status ({', '.join(STATUSES)})")
    return value


def _integer(name: str, value: Any) -> int:
    if type(value) is int:
        return value
    if value is None:
        raise BadColumn(name, "has no value")
    raise BadColumn(name, f"holds {_show(value)}, not a whole number")


def _time(name: str, value: Any) -> float | None:
    if value is None:
        if name in _OPTIONAL:
            return None
        raise BadColumn(name, "has no value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadColumn(name, f"holds {_show(value)}, not a number")
    if math.isnan(value):
        raise BadColumn(name, "holds NaN, not a time")
    return float(value)


def check_column(name: str, value: Any) -> Any:
    """``value`` as the ``RunRecord`` field ``name`` holds it; ``BadColumn`` if it cannot be."""
    if name in INTEGERS:
        return _integer(name, value)
    if name in TIMES:
        return _time(name, value)
    return _text(name, value)


def to_record(values: Sequence[Any]) -> RunRecord:
    """A record from a row's values, in the order of ``COLUMNS``; ``BadColumn`` if one is bad."""
    return RunRecord(*(check_column(n, v) for n, v in zip(COLUMNS, values, strict=True)))


def _name(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class RowReader:
    """Turns a store's rows into records. ``where`` names the store, ``part`` what a
    column is called there (a column of the run's row, a field of the run's hash)."""

    def __init__(self, where: str, part: str = "its row's column") -> None:
        self.where, self.part = where, part

    def damaged(self, run_id: str, bad: BadColumn, verb: str = "read from") -> JournalCorrupted:
        return JournalCorrupted(
            f"Run '{run_id}' cannot be {verb} {self.where}: {self.part} '{bad.column}' "
            f"{bad.problem}. Other runs are not affected. Restore the data from a backup, or "
            "fix or delete this run."
        )

    def record(self, values: Sequence[Any], run_id: str) -> RunRecord:
        """The run ``run_id``'s record, or ``JournalCorrupted`` naming the run and the column."""
        try:
            return to_record(values)
        except BadColumn as bad:
            raise self.damaged(run_id, bad) from None

    def records(
        self, rows: Iterable[Sequence[Any]], keep: Callable[[RunRecord], bool] | None = None
    ) -> Iterator[RunRecord]:
        """The records of ``rows`` (those ``keep`` accepts); a row that cannot be read is
        left out and logged."""
        for values in rows:
            try:
                record = to_record(values)
            except BadColumn as bad:
                self.skipped(_name(values[0]), bad)
                continue
            if keep is None or keep(record):
                yield record

    def skipped(self, run_id: str, bad: BadColumn) -> None:
        log.error(
            "%s: run '%s' is left out: %s '%s' %s. The other runs go on; get() or load() of "
            "this run raises JournalCorrupted. Restore the data from a backup, or fix or "
            "delete this run.",
            self.where,
            run_id,
            self.part,
            bad.column,
            bad.problem,
        )


class LoadReader:
    """Checks what ``load`` read besides the run's row. ``where`` names the store in
    errors, ``data`` what to restore from a backup (the database, the data)."""

    def __init__(self, where: str, data: str = "the database") -> None:
        self.where, self.data = where, data

    def damaged(self, run_id: str, what: str) -> JournalCorrupted:
        return JournalCorrupted(
            f"Run '{run_id}' cannot be loaded from {self.where}: {what}. Other runs are not "
            f"affected. Restore {self.data} from a backup, or prune or delete this run."
        )

    def text(self, body: bytes | bytearray | memoryview | None, run_id: str, what: str) -> str:
        """A stored entry, event or snapshot as text; ``what`` names it in the error."""
        if body is None:
            raise self.damaged(run_id, f"{what} is NULL")
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.damaged(
                run_id, f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from exc

    def journal(
        self, record: RunRecord, snapshot_seq: int, rows: Iterable[tuple[int, Any]]
    ) -> list[tuple[int, str]]:
        """The journal entries after the snapshot, (seq, body) in order of seq, as text.
        They must run without a gap from ``snapshot_seq + 1`` to the run's seq."""
        run_id = record.run_id
        entries: list[tuple[int, str]] = []
        expected = snapshot_seq + 1
        for seq, body in rows:
            if seq != expected:
                raise self.damaged(run_id, f"journal entry seq {expected} is missing")
            entries.append((seq, self.text(body, run_id, f"journal entry seq {seq}")))
            expected += 1
        if expected - 1 < record.seq:
            raise self.damaged(run_id, f"journal entry seq {expected} is missing")
        if expected - 1 > record.seq:
            raise self.damaged(run_id, f"the journal goes on past the run's seq {record.seq}")
        return entries


__all__ = [
    "COLUMNS",
    "DEFAULTS",
    "NUMBERS",
    "BadColumn",
    "LoadReader",
    "RowReader",
    "check_column",
    "to_record",
]
