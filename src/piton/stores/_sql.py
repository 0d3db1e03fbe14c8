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


__all__ = ["ACTIVE", "COLUMN_LIST", "FINAL", "STUCK", "runs_filter", "statuses"]
