"""The HTTP API against a real uvicorn server on 127.0.0.1 (in a thread, on SQLite and
Redis; ``piton serve`` in a subprocess on PostgreSQL), talked to with httpx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from server_flows import Approve, Count

from piton.server import create_app

HERE = Path(__file__).resolve().parent
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(params=["sqlite", "redis"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A server for Count and Approve on a fresh SQLite (or Redis) store, with a worker,
    token TOKEN."""
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        url = request.getfixturevalue("redis_url")
        store = f"{url}?prefix={request.getfixturevalue('redis_prefix')}"
    app = create_app(store, [Count(), Approve()], TOKEN)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def client(base: str, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=base, headers=AUTH, timeout=10, **kw)


def wait_status(c: httpx.Client, run_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        run: dict[str, Any] = c.get(f"/api/runs/{run_id}").json()
        if run["status"] in statuses or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The server-sent events of a streamed response, as {"id", "event", "data"}."""
    current: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if current:
                yield current
            current = {}
            continue
        key, _, value = line.partition(": ")
        current[key] = json.loads(value) if key == "data" else value


def test_start_a_run_follow_it_to_completion_and_list_it(base: str) -> None:
    with client(base) as c:
        listed = c.get("/api/workflows").json()["workflows"]
        assert [w["name"] for w in listed] == ["Approve", "Count"]
        count = listed[1]
        assert count["start_event"] == "Order" and "qty" in count["input_schema"]["properties"]
        r = c.post(
            "/api/workflows/Count/runs", json={"run_id": "r1", "input": {"item": "pen", "qty": 3}}
        )
        assert r.status_code == 201, r.text
        assert r.json()["run_id"] == "r1"
        again = c.post(
            "/api/workflows/Count/runs", json={"run_id": "r1", "input": {"item": "x", "qty": 1}}
        )
        assert again.status_code == 200  # idempotent: the run exists, nothing changes
        with c.stream("GET", "/api/runs/r1/events") as stream:
            events = list(sse(stream))
        assert [e["id"] for e in events] == [str(n) for n in range(len(events))]
        assert [e["data"]["data"]["n"] for e in events if e["event"] == "Progress"] == [0, 1, 2]
        assert events[-1]["event"] == "StopEvent"
        run = wait_status(c, "r1", "completed")
        assert run["status"] == "completed" and run["result"] == "3 x pen"
        assert run["workflow"] == "Count" and run["waiting_for"] == []
        runs = c.get("/api/runs", params={"workflow": "Count", "status": "completed"}).json()
        assert [x["run_id"] for x in runs["runs"]] == ["r1"]
        assert c.get("/api/runs", params={"status": "queued"}).json()["runs"] == []
        doc = c.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.") and "/api/runs/{run_id}/events" in doc["paths"]


def test_a_waiting_run_is_answered_through_post_events(base: str) -> None:
    with client(base) as c:
        c.post("/api/workflows/Approve/runs", json={"run_id": "a1"}).raise_for_status()
        run = wait_status(c, "a1", "parked")
        assert run["status"] == "parked"
        assert [w["event_type"] for w in run["waiting_for"]] == ["Approval"]
        bad = c.post("/api/runs/a1/events", json={"type": "Nope", "data": {}})
        assert bad.status_code == 422 and "Approval" in bad.json()["detail"]["types"]
        other = c.post("/api/runs/a1/events", json={"type": "Progress", "data": {"n": 1}})
        assert other.status_code == 422 and "does not know" in other.json()["error"]
        invalid = c.post("/api/runs/a1/events", json={"type": "Approval", "data": {"ok": "maybe"}})
        assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["ok"]
        sent = c.post("/api/runs/a1/events", json={"type": "Approval", "data": {"ok": True}})
        assert sent.status_code == 202, sent.text
        run = wait_status(c, "a1", "completed")
        assert run["status"] == "completed" and run["result"] == "approved"
        late = c.post("/api/runs/a1/events", json={"type": "Approval", "data": {"ok": True}})
        assert late.status_code == 409 and "finished" in late.json()["error"]


def test_cancel_a_waiting_run(base: str) -> None:
    with client(base) as c:
        c.post("/api/workflows/Approve/runs", json={"run_id": "c1"}).raise_for_status()
        wait_status(c, "c1", "parked")
        assert c.post("/api/runs/c1/cancel").status_code == 202
        assert wait_status(c, "c1", "cancelled")["status"] == "cancelled"
        assert c.post("/api/runs/nope/cancel").status_code == 404


def test_requests_without_the_token_are_refused_and_touch_nothing(base: str) -> None:
    body = {"run_id": "sneaky", "input": {"item": "pen", "qty": 1}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        with httpx.Client(base_url=base, headers=headers, timeout=10) as anon:
            r = anon.post("/api/workflows/Count/runs", json=body)
            assert r.status_code == 401 and "Bearer" in r.json()["error"]
            assert anon.get("/api/runs").status_code == 401
            assert anon.get("/api/runs/sneaky/events").status_code == 401
    with client(base) as c:
        assert c.get("/api/runs/sneaky").status_code == 404
        assert c.get("/api/runs").json()["runs"] == []


def test_bad_bodies_get_clear_4xx(base: str) -> None:
    with client(base) as c:
        r = c.post(
            "/api/workflows/Count/runs",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        assert c.post("/api/workflows/Count/runs", json=[1]).status_code == 400
        assert c.post("/api/workflows/Count/runs", json={"input": 3}).status_code == 400
        r = c.post("/api/workflows/Nope/runs", json={})
        assert r.status_code == 404 and r.json()["detail"]["workflows"] == ["Approve", "Count"]
        r = c.post("/api/workflows/Count/runs", json={"input": {"item": "pen", "qty": 0}})
        assert r.status_code == 422
        assert [e["loc"] for e in r.json()["detail"]] == [["qty"]]
        assert c.get("/api/runs", params={"status": "weird"}).status_code == 400
        assert c.get("/api/runs", params={"limit": "zero"}).status_code == 400
        assert c.get("/api/runs/nope").status_code == 404
        r = c.get("/api/nowhere")
        assert r.status_code == 404 and "error" in r.json()
        assert c.get("/api/runs", params={}).json()["runs"] == []  # nothing was created


def test_sse_client_disconnects_and_resumes_from_last_event_id(base: str) -> None:
    with client(base) as c:
        c.post(
            "/api/workflows/Count/runs", json={"run_id": "s1", "input": {"item": "pen", "qty": 6}}
        )
        with c.stream("GET", "/api/runs/s1/events") as stream:
            first = next(sse(stream))  # then hang up
        with c.stream(
            "GET", "/api/runs/s1/events", headers={"Last-Event-ID": first["id"]}
        ) as stream:
            rest = list(sse(stream))
        seen = [first, *rest]
        assert [e["id"] for e in seen] == [str(n) for n in range(len(seen))]
        with c.stream("GET", "/api/runs/s1/events") as stream:
            whole = list(sse(stream))
        assert seen == whole
        assert [e["data"]["data"]["n"] for e in seen if e["event"] == "Progress"] == list(range(6))
        assert seen[-1]["event"] == "StopEvent"
        with c.stream("GET", "/api/runs/s1/events", headers={"Last-Event-ID": "x"}) as bad:
            assert bad.status_code == 400


def test_piton_serve_on_postgres_end_to_end(postgres_url: str, postgres_schema: str) -> None:
    store = f"{postgres_url}?schema={postgres_schema}"
    port = free_port()
    env = {**os.environ, "PITON_TOKEN": TOKEN, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piton",
            "serve",
            "server_flows:workflows",
            "--store",
            store,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=HERE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{base}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.05)
        with client(base) as c:
            assert httpx.get(f"{base}/api/runs").status_code == 401
            c.post("/api/workflows/Approve/runs", json={"run_id": "p1"}).raise_for_status()
            assert wait_status(c, "p1", "parked")["status"] == "parked"
            c.post(
                "/api/runs/p1/events", json={"type": "Approval", "data": {"ok": False}}
            ).raise_for_status()
            with c.stream("GET", "/api/runs/p1/events") as stream:
                events = list(sse(stream))
            assert events[-1]["event"] == "StopEvent"
            run = wait_status(c, "p1", "completed")
            assert run["result"] == "refused"
    finally:
        proc.terminate()
        # a graceful shutdown (the built-in worker drains) exits 0, as piton worker does
        assert proc.wait(15) == 0


def test_a_quiet_stream_sends_keepalive_comments_then_the_events(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import piton.server.app

    monkeypatch.setattr(piton.server.app, "KEEPALIVE", 0.2)
    with client(base) as c:
        c.post("/api/workflows/Approve/runs", json={"run_id": "k1"}).raise_for_status()
        with c.stream("GET", "/api/runs/k1/events") as stream:
            lines = stream.iter_lines()
            assert next(lines) == ": keep-alive"  # the run waits: nothing to send yet
            c.post("/api/runs/k1/events", json={"type": "Approval", "data": {"ok": True}})
            rest = list(lines)
        assert "event: StopEvent" in rest and rest.count("id: 0") == 1
