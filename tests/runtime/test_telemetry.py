"""OpenTelemetry spans for runs and steps (piton.telemetry), read back with the SDK's
in-memory exporter; a resumed durable run's span links to the earlier execution's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from piton import (
    Context,
    Event,
    HumanResponseEvent,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowHandler,
    step,
    telemetry,
)
from piton.retry import retry_policy, stop_after_attempt, wait_fixed
from piton.serde import JsonSerializer
from piton.stores import Store, open_store
from piton.worker import Worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


def _named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


class Mid(Event):
    n: int


class Flaky(Workflow):
    @step
    async def start(self, ev: StartEvent, ctx: Context) -> Mid:
        return Mid(n=1)

    @step(retry_policy=retry_policy(wait=wait_fixed(0.01), stop=stop_after_attempt(3)))
    async def work(self, ev: Mid, ctx: Context) -> StopEvent:
        tries = await ctx.store.get("tries", default=0) + 1
        await ctx.store.set("tries", tries)
        if tries < 2:
            raise RuntimeError("flaky")
        return StopEvent(result=tries)


async def test_memory_run_has_a_run_span_and_a_span_per_step_attempt(
    spans: InMemorySpanExporter,
) -> None:
    assert await Flaky().run() == 2
    (run,) = _named(spans, "piton.run ")
    assert run.name == "piton.run Flaky"
    attrs = _attrs(run)
    assert attrs["piton.workflow"] == "Flaky" and attrs["piton.status"] == "completed"
    run_id = attrs["piton.run_id"]
    steps = _named(spans, "piton.step ")
    got = [
        (s.name, _attrs(s)["piton.attempt"], _attrs(s)["piton.status"])
        for s in sorted(steps, key=lambda s: s.start_time or 0)
    ]
    assert got == [
        ("piton.step start", 1, "ok"),
        ("piton.step work", 1, "retry"),
        ("piton.step work", 2, "ok"),
    ]
    for s in steps:
        assert s.parent is not None and s.parent.span_id == run.context.span_id
        assert s.context.trace_id == run.context.trace_id
        assert _attrs(s)["piton.run_id"] == run_id
        assert _attrs(s)["piton.workflow"] == "Flaky"
        assert _attrs(s)["piton.step"] == s.name.removeprefix("piton.step ")
    failed = next(s for s in steps if _attrs(s)["piton.status"] == "retry")
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.message"] == "flaky"


async def test_a_failed_run_and_step_are_errors(spans: InMemorySpanExporter) -> None:
    class Broken(Workflow):
        @step
        async def start(self, ev: StartEvent) -> StopEvent:
            raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        await Broken().run()
    (run,) = _named(spans, "piton.run ")
    (st,) = _named(spans, "piton.step ")
    assert _attrs(run)["piton.status"] == "failed"
    assert run.status.status_code is StatusCode.ERROR
    assert _attrs(st)["piton.status"] == "failed"
    assert st.status.status_code is StatusCode.ERROR


async def test_a_step_span_is_current_inside_the_step(spans: InMemorySpanExporter) -> None:
    from opentelemetry import trace

    seen: list[Any] = []

    class Sees(Workflow):
        @step
        async def start(self, ev: StartEvent) -> Mid:
            seen.append(trace.get_current_span().get_span_context())
            return Mid(n=1)

        @step
        def sync(self, ev: Mid) -> StopEvent:  # a thread: the context goes with it
            seen.append(trace.get_current_span().get_span_context())
            return StopEvent(result=None)

    await Sees().run()
    ids = {s.name: s.context.span_id for s in _named(spans, "piton.step ")}
    assert [c.span_id for c in seen] == [ids["piton.step start"], ids["piton.step sync"]]


async def test_a_cancelled_run(spans: InMemorySpanExporter) -> None:
    class Slow(Workflow):
        @step
        async def start(self, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(30)
            return StopEvent(result=None)

    handler = Slow().run()
    await asyncio.sleep(0.05)
    await handler.cancel_run()
    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever cancellation error
        await handler
    (run,) = _named(spans, "piton.run ")
    assert _attrs(run)["piton.status"] == "cancelled"
    (st,) = _named(spans, "piton.step ")
    assert _attrs(st)["piton.status"] == "cancelled"


# -- durable runs: a resumed run links to the earlier execution ---------------------------


class Ask(Workflow):
    @step
    async def start(self, ev: StartEvent, ctx: Context) -> Mid:
        return Mid(n=1)

    @step
    async def ask(self, ev: Mid, ctx: Context) -> StopEvent:
        first = await ctx.wait_for_event(HumanResponseEvent, waiter_id="first")
        second = await ctx.wait_for_event(HumanResponseEvent, waiter_id="second")
        return StopEvent(result=f"{first.response} {second.response}")


async def _wait_status(store: Store, run_id: str, status: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = await store.get(run_id)
        if record is not None and record.status == status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not become {status}: {await store.get(run_id)}")


async def _park(handler: WorkflowHandler, reader: Store, run_id: str) -> None:
    await _wait_status(reader, run_id, "parked")
    handler.cancel()  # this "process" stops listening: the run stays parked in the store
    await asyncio.sleep(0.05)


async def test_a_resumed_durable_run_links_to_the_earlier_execution(
    store_url: str | Store, spans: InMemorySpanExporter
) -> None:
    reader = open_store(store_url)
    # process 1 starts the run; it parks waiting for the first answer
    await _park(Ask(store=store_url).run(run_id="r1"), reader, "r1")
    # process 2 (a new workflow and store object) answers; the run parks again
    h2 = Ask(store=open_store(store_url)).run(run_id="r1")
    await h2.send_event(HumanResponseEvent(response="yes"))
    await _park(h2, reader, "r1")
    # process 3 answers again; the run finishes there
    h3 = Ask(store=open_store(store_url)).run(run_id="r1")
    await h3.send_event(HumanResponseEvent(response="sure"))
    assert await asyncio.wait_for(h3, 10) == "yes sure"

    runs = sorted(_named(spans, "piton.run "), key=lambda s: s.start_time or 0)
    assert [_attrs(r)["piton.status"] for r in runs] == ["parked", "parked", "completed"]
    first, second, third = runs
    for r in runs:
        assert r.name == "piton.run Ask"
        assert _attrs(r)["piton.run_id"] == "r1" and _attrs(r)["piton.workflow"] == "Ask"
        assert isinstance(_attrs(r)["piton.epoch"], int) and _attrs(r)["piton.owner"]
    assert [_attrs(r)["piton.epoch"] for r in runs] == sorted(
        {_attrs(r)["piton.epoch"] for r in runs}
    )  # three executions, three leases
    assert not first.links and "piton.resumed" not in _attrs(first)
    for later, earlier in ((second, first), (third, second)):
        assert _attrs(later)["piton.resumed"] is True
        (link,) = later.links
        assert link.context.trace_id == earlier.context.trace_id
        assert link.context.span_id == earlier.context.span_id

    steps = _named(spans, "piton.step ")
    by_run: dict[int, list[tuple[str, str]]] = {}
    for s in sorted(steps, key=lambda s: s.start_time or 0):
        assert s.parent is not None
        a = _attrs(s)
        assert a["piton.run_id"] == "r1" and a["piton.workflow"] == "Ask"
        assert a["piton.attempt"] == 1
        by_run.setdefault(s.parent.span_id, []).append((a["piton.step"], a["piton.status"]))
    assert by_run == {
        first.context.span_id: [("start", "ok"), ("ask", "waiting")],
        second.context.span_id: [("ask", "waiting")],
        third.context.span_id: [("ask", "ok")],
    }


class AskOnce(Workflow):
    @step
    async def ask(self, ev: StartEvent, ctx: Context) -> StopEvent:
        answer = await ctx.wait_for_event(HumanResponseEvent)
        return StopEvent(result=answer.response)


async def test_a_worker_that_wakes_a_parked_run_links_to_the_execution_that_parked_it(
    store_url: str | Store, spans: InMemorySpanExporter
) -> None:
    store = open_store(store_url)
    await store.open()
    w = AskOnce(store=store_url)
    async with Worker(store_url, workflows=[AskOnce], poll_interval=0.05):
        await w.start(run_id="wk")
        await _wait_status(store, "wk", "parked")
        text = JsonSerializer().dumps(HumanResponseEvent(response="yes"), "event")
        await store.deliver("wk", text, None, limit=100)
        await _wait_status(store, "wk", "completed")
    runs = sorted(_named(spans, "piton.run "), key=lambda s: s.start_time or 0)
    assert [_attrs(r)["piton.status"] for r in runs] == ["parked", "completed"]
    (link,) = runs[1].links
    assert link.context.span_id == runs[0].context.span_id
    assert _attrs(runs[0])["piton.resumed"] is True  # queued by start(): stored before
    assert _attrs(runs[0])["piton.epoch"] < _attrs(runs[1])["piton.epoch"]


async def test_telemetry_writes_nothing_to_the_journal_when_off(store_url: str | Store) -> None:
    """No provider: no span, and no trace key in the journal."""
    reader = open_store(store_url)
    await _park(Ask(store=store_url).run(run_id="off"), reader, "off")
    loaded = await reader.load("off")
    assert loaded.entries and all('"trace"' not in text for _, text in loaded.entries)
    h = Ask(store=open_store(store_url)).run(run_id="off")
    await h.send_event(HumanResponseEvent(response="a"))
    await h.send_event(HumanResponseEvent(response="b"))
    assert await asyncio.wait_for(h, 10) == "a b"


def test_off_without_a_provider() -> None:
    assert not telemetry.enabled()  # nothing configured: the API's proxy provider
    assert telemetry.start_run("W", "r") is None


async def test_runs_without_a_provider_make_no_spans() -> None:
    exporter = InMemorySpanExporter()  # attached to nothing piton uses
    assert await Flaky().run() == 2
    assert exporter.get_finished_spans() == ()


def test_traceparent_round_trip() -> None:
    from opentelemetry.trace import SpanContext, TraceFlags

    sc = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    text = telemetry.to_traceparent(sc)
    assert text == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    back = telemetry.from_traceparent(text)
    assert (back.trace_id, back.span_id, back.is_remote) == (0xABC, 0xDEF, True)
    for bad in (None, 3, "", "00-xyz", f"00-{0:032x}-{1:016x}-01", "00-" + "g" * 32 + "-1-01"):
        assert telemetry.from_traceparent(bad) is None
    entries = [
        (1, '{"k":"Begin","at":1,"trace":"' + text + '"}'),
        (2, '{"k":"Send","at":2,"event":{"trace":"no"}}'),
    ]
    assert telemetry.previous_execution(entries) == text
    assert telemetry.previous_execution([(1, '{"k":"Begin","at":1}')]) is None


# -- without opentelemetry-api; and across processes -------------------------------------


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_a_workflow_runs_without_opentelemetry_installed() -> None:
    done = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
        from piton import Workflow, StartEvent, StopEvent, step, telemetry

        class W(Workflow):
            @step
            async def go(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result="ran")

        assert not telemetry.enabled()
        print(W().run_sync())
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran"


CHILD = """
import asyncio, json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from piton import Context, Event, StartEvent, StopEvent, Workflow, step, telemetry


class Lines(SpanExporter):
    def __init__(self, path):
        self.path = path

    def export(self, spans):
        with open(self.path, "a") as f:
            for s in spans:
                f.write(json.dumps({
                    "name": s.name,
                    "trace_id": s.context.trace_id,
                    "span_id": s.context.span_id,
                    "parent": s.parent.span_id if s.parent else None,
                    "links": [[l.context.trace_id, l.context.span_id] for l in s.links],
                    "attributes": dict(s.attributes),
                }) + "\\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(Lines(sys.argv[3])))
telemetry.use_tracer_provider(provider)


class Mid(Event):
    n: int


class Long(Workflow):
    @step
    async def start(self, ev: StartEvent, ctx: Context) -> Mid:
        return Mid(n=1)

    @step
    async def slow(self, ev: Mid, ctx: Context) -> StopEvent:
        if sys.argv[2] == "first":
            print("started", flush=True)
            await asyncio.sleep(60)  # killed here
        return StopEvent(result="resumed")


async def main():
    w = Long(store=sys.argv[1], timeout=None)
    print(await w.run(run_id="k1"), flush=True)

asyncio.run(main())
"""


@pytest.mark.slow
def test_a_run_resumed_after_sigkill_links_to_the_killed_execution(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    spans_file = tmp_path / "spans.jsonl"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    first = subprocess.Popen(
        [sys.executable, str(script), store, "first", str(spans_file)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "started"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        if first.stdout is not None:
            first.stdout.close()
    # the run span of the killed execution never ended: only its first step's span is out
    killed = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert [s["name"] for s in killed] == ["piton.step start"]
    killed_run = killed[0]["parent"]

    second = subprocess.run(
        [sys.executable, str(script), store, "second", str(spans_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "resumed"
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    (run,) = [s for s in spans if s["name"] == "piton.run Long"]
    assert run["attributes"]["piton.status"] == "completed"
    assert run["attributes"]["piton.resumed"] is True
    assert run["links"] == [[killed[0]["trace_id"], killed_run]]
    resumed_steps = [s for s in spans if s["parent"] == run["span_id"]]
    # the first step's commit may not have landed before the kill (at least once): it may
    # run again; the step that was killed runs again and finishes
    got = [(s["name"], s["attributes"]["piton.status"]) for s in resumed_steps]
    assert got[-1] == ("piton.step slow", "ok")
    assert all(status == "ok" for _, status in got)
