"""Append-only files that survive the writer's SIGKILL: each line is flushed and fsynced
before the writer goes on, so what a reader finds is what the writer had done."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append_line(path: str | os.PathLike[str], line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def append_json(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    append_line(path, json.dumps(record, sort_keys=True))


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    p = Path(path)
    return p.read_text().splitlines() if p.exists() else []


def read_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete record; a last line cut by a kill is skipped."""
    records = []
    for line in read_lines(path):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def side_effect(key: str) -> None:
    """A step's visible effect, to the file named by PITON_MODEL_EFFECTS."""
    append_line(os.environ["PITON_MODEL_EFFECTS"], key)
