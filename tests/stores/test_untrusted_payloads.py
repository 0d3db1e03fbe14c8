"""Damaged payloads (from_dict, journal entries) fail as ContextSerdeError, saying what is
damaged: never a bare UnicodeDecodeError, RecursionError, OverflowError or TypeError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from piton import Context, ContextSerdeError, StartEvent, StopEvent, Workflow, step
from piton._core import inputs as inp
from piton._journal_codec import decode_input, encode_input
from piton.serde import MAX_NESTING, JsonSerializer, TypeResolver


class Simple(Workflow):
    @step
    async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
        await ctx.store.set("count", 1)
        return StopEvent(result=1)


async def _snapshot() -> dict[str, str]:
    handler = Simple().run()
    await handler
    return handler.ctx.to_dict()


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("state", b'{"count": "\xff\xfe"}', "state"),  # invalid UTF-8 (redis hgetall bytes)
        ("state", _nested(100_000), "state"),  # past the JSON parser's recursion
        ("state", _nested(MAX_NESTING + 5), "nests"),  # past piton's own nesting limit
        ("deadlines", json.dumps({"run": 10**400}), "deadline"),  # float() overflows
        ("active_elapsed", "1e999", "active_elapsed"),  # infinity
        ("counter", "1e999", "counter"),
        ("status", '"exploded"', "status"),
        ("work", '[{"step": ["only"], "id": "e1", "event": null}]', "work"),
        ("waiters", '[{"key": {}, "attempt": 5}]', "waiters"),
        ("buffers", '{"b": {"pending": [[1, 2, 3]]}}', "buffers"),
        ("state", '{"__piton__": "set", "items": [{"a": 1}]}', "state"),  # unhashable
        ("state", '{"__piton__": "bytes", "b64": "***"}', "state"),
        ("result", '{"__piton__": "error", "type": 7}', "result"),
    ],
)
async def test_damaged_parts_are_context_serde_errors_naming_the_part(
    key: str, value: str | bytes, named: str
) -> None:
    data: dict[Any, Any] = dict(await _snapshot())
    data[key] = value
    with pytest.raises(ContextSerdeError, match=named):
        Context.from_dict(Simple(), data)


async def test_a_key_that_is_not_utf8_is_refused() -> None:
    data: dict[Any, Any] = {k.encode(): v.encode() for k, v in (await _snapshot()).items()}
    data[b"\xff"] = b"1"
    with pytest.raises(ContextSerdeError, match="not UTF-8"):
        Context.from_dict(Simple(), data)


async def test_values_nested_too_deeply_cannot_be_stored() -> None:
    loop: list[Any] = []
    loop.append(loop)

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent, ctx: Context) -> StopEvent:
            await ctx.store.set("loop", loop)
            return StopEvent()

    handler = W().run()
    await handler
    with pytest.raises(ContextSerdeError, match="state.loop.*nests more than"):
        handler.ctx.to_dict()


# --- journal entries ----------------------------------------------------------------------------

ser = JsonSerializer()
types = TypeResolver({"piton.events.StartEvent": StartEvent})


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        (b'{"k": "Park", "at": "\xff"}', "journal entry"),
        ('{"k": "SetState", "at": 1, "path": "a", "value": ' + _nested(50_000) + "}", "deep"),
        ('{"k": "SetState", "at": 1, "path": "a", "value": ' + _nested(300) + "}", "value"),
        ('{"k": "Park", "at": "soon"}', "'at'"),
        ('{"k": "Park", "at": 1e999}', "'at'"),
        ('{"k": "Park", "at": 1, "extra": 2}', "Park.*'extra'"),
        ('{"k": "Park"}', "Park.*'at'"),
        ('{"k": "Park", "at": 1, "v": 2}', "version 2"),
        ('{"k": "Park", "at": 1, "v": "1"}', "version '1'"),
        ('{"k": "Explode", "at": 1}', "Explode"),
        ('["k", "Park"]', "object"),
        ('{"k": "SetState", "at": 1, "path": ["a"], "value": 1}', "'path'"),
        ('{"k": "TimerFired", "at": 1, "timer_id": null}', "'timer_id'"),
        ('{"k": "Send", "at": 1, "event": 5}', "'event'"),
        ('{"k": "StepDone", "at": 1, "exec_id": "x", "sends": [[0, 1]]}', "'sends'"),
        ('{"k": "StepFailed", "at": 1, "exec_id": "x", "error": []}', "'error'"),
        (
            '{"k": "Collect", "at": 1, "exec_id": "x", "buffer_id": "b", "event": '
            '{"__piton__": "model", "type": "piton.events.StartEvent", "data": {}},'
            ' "expected": [["piton.events.StartEvent", 1000000000]]}',
            "'expected'",
        ),
    ],
)
def test_damaged_journal_entries_are_context_serde_errors(entry: str | bytes, named: str) -> None:
    with pytest.raises(ContextSerdeError, match=named):
        decode_input(entry, ser, types)


def test_an_undamaged_entry_still_round_trips() -> None:
    entry = inp.SetState(at=1.5, path="user.name", value={"first": "Ada", "tags": ("a", "b")})
    assert decode_input(encode_input(entry, ser), ser, types) == entry
