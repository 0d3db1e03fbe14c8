"""The schema files of the SQL backends: ``migrations/<dialect>/NNN_name.sql``.

A backend's schema is the files of its folder, numbered 1..N without a gap and applied in
that order; the backend records the last one applied (SQLite's ``PRAGMA user_version``,
PostgreSQL's ``piton_schema`` table) and refuses a database from a newer piton.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import TypeVar

from piton.errors import StoreError

T = TypeVar("T")

_FILE = re.compile(r"^(\d+)_\w+\.sql$")


def read_migrations(
    dialect: str, name: str, parse: Callable[[str], T]
) -> tuple[tuple[int, str, T], ...]:
    """(version, file name, ``parse(text)``) for every file in ``migrations/<dialect>``, in
    order; ``name`` names the database in the error for a gap in the numbers."""
    folder = resources.files("piton") / "stores" / "migrations" / dialect
    found = []
    for item in folder.iterdir():
        match = _FILE.match(item.name)
        if match:
            found.append((int(match.group(1)), item.name, parse(item.read_text("utf-8"))))
    found.sort(key=lambda migration: migration[:2])
    numbers = [version for version, _, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise StoreError(
            f"piton's {name} migrations are not numbered 1..N: {numbers}. Reinstall piton."
        )
    return tuple(found)


__all__ = ["read_migrations"]
