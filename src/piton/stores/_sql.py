"""SQL text that the SQL backends (SQLite and PostgreSQL) share: the runs table's columns,
the run statuses as SQL literals, and the filter of ``list_runs``.

Only what both dialects read the same way lives here; each backend keeps its own
dialect (placeholders, types, locking) in its ``_*_ops`` module. Statuses come from
``piton._core.status``, in its order, so a list here reads as the migrations wrote it
(``runs_active``'s ``status IN ('queued', 'running', 'parked')``, which SQLite's planner
matches term for term).
"""

from __future__ import annotations

from collections.abc import Collection

from piton._core.status import ACTIVE_STATUSES, FINAL_STATUSES, PARKED, STATUSES, RunStatus
from piton.stores._rows import COLUMNS

# every column of the runs table, in the order of RunRecord's fields
COLUMN_LIST = ", ".join(f'"{name}"' for name in COLUMNS)


def statuses(wanted: Collection[RunStatus]) -> str:
    """``wanted`` as a list of SQL literals, in the order of ``STATUSES``."""
    return ", ".join(f"'{status}'" for status in STATUSES if status in wanted)


FINAL = statuses(FINAL_STATUSES)
ACTIVE = statuses(ACTIVE_STATUSES)
# base.is_stuck() as a WHERE clause; the runs_stuck index of the SQLite schema has the
# same terms, word for word, so SQLite can use it
STUCK = f"status = '{PARKED}' AND inbox = 0 AND wake_at IS NULL AND waiters = 0"


def runs_filter(status: str | None, workflow: str | None, mark: str) -> tuple[str, list[str]]:
    """``list_runs``' ``WHERE`` clause (empty when nothing is asked) and its arguments;
    ``mark`` is the dialect's placeholder (``?``, ``%s``)."""
    terms, args = [], []
    for column, value in (("status", status), ("workflow", workflow)):
        if value is not None:
            terms.append(f"{column} = {mark}")
            args.append(value)
    return (f" WHERE {' AND '.join(terms)}" if terms else ""), args


def page_filter(
    status: str | None,
    workflow: str | None,
    after: tuple[float, str] | None,
    created_after: float | None,
    created_before: float | None,
    mark: str,
    run_id: str = "run_id",
) -> tuple[str, list[object]]:
    """``list_runs``' ``WHERE`` clause for one page and its arguments, then its ``ORDER BY``:
    newest first, by ``(created_at, run_id)``; ``after`` is the parsed cursor (a keyset
    condition, which the migration 004 indexes serve). ``run_id`` is the dialect's way to
    compare run ids by their bytes (PostgreSQL: ``run_id COLLATE "C"``)."""
    if after is not None and created_before is not None:
        # one upper bound, so the index is searched from it: the cursor's (rows at or
        # before created_at c) when c < created_before, else created_before's
        if after[0] < created_before:
            created_before = None
        else:
            after = None
    clause, args = runs_filter(status, workflow, mark)
    terms: list[str] = [clause[len(" WHERE ") :]] if clause else []
    values: list[object] = list(args)
    if created_after is not None:
        terms.append(f"created_at >= {mark}")
        values.append(created_after)
    if created_before is not None:
        terms.append(f"created_at < {mark}")
        values.append(created_before)
    if after is not None:
        terms.append(f"(created_at, {run_id}) < ({mark}, {mark})")
        values += after
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    return f"{where} ORDER BY created_at DESC, {run_id} DESC", values


__all__ = [
    "ACTIVE",
    "COLUMN_LIST",
    "FINAL",
    "STUCK",
    "page_filter",
    "runs_filter",
    "statuses",
]
