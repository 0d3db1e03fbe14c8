"""A run's durable history for people: its journal entries read as plain JSON.

The command line (``piton show``) and the HTTP service (the dashboard's timeline) both
read a run through these functions. Nothing here imports or runs workflow code: events
and errors are named by their stored type names, so any run can be shown, whatever code
wrote it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

# The journal codec and serde (and the pydantic they import) are imported when an entry or a
# value is read, not with this module: ``piton runs`` shows times only and starts faster.


def when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    return f"{span(now - ts)} ago"


def span(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def type_name(tree: Any) -> str:
    """The stored type name of an encoded event, model or error, else the JSON kind."""
    from piton.serde import TAG

    if isinstance(tree, dict) and TAG in tree:
        return str(tree.get("type") or tree[TAG]).rsplit(".", 1)[-1]
    return type(tree).__name__ if tree is not None else "None"


def shown_value(text: str) -> str:
    """A stored result for people: a StopEvent's ``result``, else the stored JSON."""
    from piton.serde import TAG

    try:
        tree = json.loads(text)
    except ValueError:
        return text
    if isinstance(tree, dict) and tree.get(TAG) == "model" and isinstance(tree.get("data"), dict):
        data = tree["data"]
        if str(tree.get("type")).endswith(".StopEvent") and set(data) == {"result"}:
            return json.dumps(data["result"])
        return f"{type_name(tree)} {json.dumps(data)}"
    return text


def describe(tree: dict[str, Any]) -> str:
    """One journal entry (as JSON) in a few words."""
    from piton._journal_codec import KIND_KEY

    kind = tree.get(KIND_KEY)
    step = f"[{tree['exec_id']}] " if tree.get("exec_id") else ""
    sends = tree.get("sends") or []
    sent = f", sends {', '.join(type_name(s[1]) for s in sends if len(s) == 3)}" if sends else ""
    if kind == "Begin":
        start = tree.get("start_event")
        first = f"start {type_name(start)}" if start is not None else "resume"
        return f"{first} (owner {tree.get('owner') or '-'}, epoch {tree.get('epoch', 0)})"
    if kind == "StepDone":
        return f"{step}done -> {type_name(tree.get('result'))}{sent}"
    if kind == "StepFailed":
        error = tree.get("error") or {}
        message = error.get("message", "") if isinstance(error, dict) else ""
        retry = tree.get("retry_in")
        then = "gave up" if retry is None else f"retry in {span(float(retry))}"
        return f"{step}failed: {type_name(error)}: {message[:120]} ({then})"
    if kind == "StepWaits":
        what = tree.get("event_type")
        what = "sleep" if what is None else f"waits for {str(what).rsplit('.', 1)[-1]}"
        timeout = tree.get("timeout")
        return f"{step}{what}" + (f" (timeout {span(float(timeout))})" if timeout else "") + sent
    if kind == "Checkpoint":
        return f"{step}checkpoint{sent}"
    if kind == "Send":
        target = f" to {tree['target']}" if tree.get("target") else ""
        return f"received {type_name(tree.get('event'))}{target}"
    if kind == "SetState":
        return f"state {tree.get('path')} set"
    if kind == "ReplaceState":
        return "state replaced"
    if kind == "Collect":
        return f"{step}collected {type_name(tree.get('event'))}"
    if kind == "StreamWrite":
        return f"{step}streamed {type_name(tree.get('event'))}"
    if kind == "TimerFired":
        return f"timer {tree.get('timer_id')} fired"
    if kind == "Cancel":
        return "cancel requested"
    if kind == "Park":
        return "parked"
    return str(kind)


def step_name(tree: dict[str, Any]) -> str | None:
    """The name of the step an entry records (``StepDone``, ``StepFailed``, ``StepWaits``
    written by a piton that stores it), else None."""
    name = tree.get("step")
    return name if isinstance(name, str) and name else None


def took(tree: dict[str, Any]) -> float | None:
    """The seconds the step's attempt ran, where the entry records it, else None."""
    value = tree.get("took")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return float(value)


def timeline(entries: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """One row per journal entry ``(seq, text)``: its seq, time, time since the entry
    before it (among ``entries``), kind, execution id, step name and the seconds the step
    ran (None where the entry does not record them) and a few words on what it records."""
    from piton._journal_codec import KIND_KEY

    rows: list[dict[str, Any]] = []
    previous: float | None = None
    for seq, text in entries:
        try:
            tree = json.loads(text)
        except ValueError:
            tree = None
        if not isinstance(tree, dict):
            rows.append(
                {"seq": seq, "at": None, "kind": "?", "step": None, "took": None}
                | {"what": "damaged entry"}
            )
            continue
        at = tree.get("at")
        at = float(at) if isinstance(at, int | float) else None
        rows.append(
            {
                "seq": seq,
                "at": when(at)
                if at is None
                else datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
                "after": None if at is None or previous is None else round(at - previous, 6),
                "kind": str(tree.get(KIND_KEY)),
                "exec_id": tree.get("exec_id"),
                "step": step_name(tree),
                "took": took(tree),
                "what": describe(tree),
            }
        )
        previous = at if at is not None else previous
    return rows


__all__ = [
    "ago",
    "describe",
    "shown_value",
    "span",
    "step_name",
    "timeline",
    "took",
    "type_name",
    "when",
]
