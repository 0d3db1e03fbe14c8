"""The dashboard's HTTP side against a real uvicorn server on SQLite, PostgreSQL and
Redis: the page and its files, the step graph, the paged timeline, what a waiting run can
be sent, and the token on the new routes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from server_flows import Approve, Count
from test_http import TOKEN, client, free_port, wait_status

from piton.server import create_app


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'runs.db'}"
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        store = f"{url}?schema={request.getfixturevalue('postgres_schema')}"
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


def test_the_page_and_its_files_load_without_the_token(base: str) -> None:
    page = httpx.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and "/static/style.css" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{base}/static/{name}", timeout=10)
        assert r.status_code == 200 and kind in r.headers["content-type"], name
        assert "https://" not in r.text, name  # works offline: no CDN, no web font
    missing = httpx.get(f"{base}/static/nope.js", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    assert httpx.get(f"{base}/static/../app.py", timeout=10).status_code == 404


def test_the_step_graph_of_a_workflow(base: str) -> None:
    with client(base) as c:
        graph = c.get("/api/workflows/Count/graph").json()
        assert graph["workflow"] == "Count"
        assert [s["name"] for s in graph["steps"]] == ["count"]
        assert {e["name"]: e["kind"] for e in graph["events"]} == {
            "Order": "start",
            "StopEvent": "stop",
        }
        assert {(e["source"], e["target"]) for e in graph["edges"]} == {
            ("event:Order", "step:count"),
            ("step:count", "event:StopEvent"),
        }
        assert graph["layers"] == [["event:Order"], ["step:count"], ["event:StopEvent"]]
        assert graph["mermaid"].startswith("flowchart TD")
        r = c.get("/api/workflows/Nope/graph")
        assert r.status_code == 404 and r.json()["detail"]["workflows"] == ["Approve", "Count"]
        assert "/api/workflows/{name}/graph" in c.get("/openapi.json").json()["paths"]


def test_the_timeline_is_paged_by_seq(base: str) -> None:
    with client(base) as c:
        c.post(
            "/api/workflows/Count/runs", json={"run_id": "t1", "input": {"item": "pen", "qty": 5}}
        ).raise_for_status()
        run = wait_status(c, "t1", "completed")
        assert run["status"] == "completed"
        whole = c.get("/api/runs/t1/timeline").json()
        rows = whole["rows"]
        assert whole["next_after"] is None and len(rows) >= 5
        assert [r["seq"] for r in rows] == sorted({r["seq"] for r in rows})
        assert rows[0]["kind"] == "Begin" and rows[0]["what"].startswith("start Order")
        assert any("streamed Progress" in r["what"] for r in rows)
        assert {"seq", "at", "after", "kind", "exec_id", "step", "took", "what"} <= set(rows[0])
        done = [r for r in rows if r["kind"] == "StepDone"]
        assert done and done[-1]["step"] == "count" and done[-1]["took"] >= 0
        paged: list[dict[str, Any]] = []
        after = 0
        while True:
            page = c.get("/api/runs/t1/timeline", params={"after": after, "limit": 2}).json()
            paged += page["rows"]
            assert len(page["rows"]) <= 2
            if page["next_after"] is None:
                break
            after = page["next_after"]
        if len(paged) % 2 == 0:  # the last full page says there may be more: one empty page
            assert page["rows"] == []
        assert paged == rows  # the same rows, each page's first row keeps its "after"
        last = c.get("/api/runs/t1/timeline", params={"after": rows[-1]["seq"]}).json()
        assert last == {"rows": [], "next_after": None}
        for bad in ({"after": "-1"}, {"after": "x"}, {"after": str(2**64)}, {"limit": "0"}):
            assert c.get("/api/runs/t1/timeline", params=bad).status_code == 400, bad
        assert c.get("/api/runs/nope/timeline").status_code == 404


def test_a_waiting_run_says_what_it_can_be_sent(base: str) -> None:
    with client(base) as c:
        c.post("/api/workflows/Approve/runs", json={"run_id": "w1"}).raise_for_status()
        run = wait_status(c, "w1", "parked")
        assert run["waiting_for"][0]["event_type"] == "Approval"
        schema = run["sendable"]["Approval"]
        assert schema["properties"]["ok"]["type"] == "boolean"
        workflows = {w["name"]: w for w in c.get("/api/workflows").json()["workflows"]}
        assert workflows["Approve"]["events"] == {}  # its graph takes nothing from outside
        c.post("/api/runs/w1/events", json={"type": "Approval", "data": {"ok": True}})
        done = wait_status(c, "w1", "completed")
        assert done["result"] == "approved" and "sendable" not in done
        rows = c.get("/api/runs/w1/timeline").json()["rows"]
        # what the store keeps: entries a snapshot folded in are gone from the journal
        assert rows and rows[-1]["seq"] == done["seq"] and rows[-1]["kind"] == "StepDone"


def test_the_new_routes_want_the_token_and_touch_nothing(base: str) -> None:
    with client(base) as c:
        c.post(
            "/api/workflows/Count/runs", json={"run_id": "x1", "input": {"item": "a", "qty": 1}}
        ).raise_for_status()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with httpx.Client(base_url=base, headers=headers, timeout=10) as anon:
            for path in (
                "/api/workflows/Count/graph",
                "/api/runs/x1/timeline",
                "/api/runs/nope/timeline",
            ):
                r = anon.get(path)
                assert r.status_code == 401 and "Bearer" in r.json()["error"], path
            r = anon.get("/api/runs/x1/events", params={"token": TOKEN})
            assert r.status_code == 401  # the token only ever travels in the header
    with client(base) as c:
        assert [r["run_id"] for r in c.get("/api/runs").json()["runs"]] == ["x1"]


def test_runs_are_paged_with_the_next_cursor(base: str) -> None:
    with client(base) as c:
        for n in range(5):
            c.post(
                "/api/workflows/Count/runs",
                json={"run_id": f"p{n}", "input": {"item": "a", "qty": 1}},
            ).raise_for_status()
        whole = c.get("/api/runs").json()
        assert whole["next"] is None and len(whole["runs"]) == 5
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 2}
        while True:
            page = c.get("/api/runs", params=params).json()
            seen += [r["run_id"] for r in page["runs"]]
            if page["next"] is None:
                break
            params["after"] = page["next"]
        assert seen == [r["run_id"] for r in whole["runs"]]  # newest first, none twice
        newest = whole["runs"][0]["created_at"]
        since = c.get("/api/runs", params={"created_after": newest}).json()["runs"]
        assert [r["run_id"] for r in since] == [
            r["run_id"] for r in whole["runs"] if r["created_at"] >= newest
        ]
        before = c.get("/api/runs", params={"created_before": newest}).json()["runs"]
        assert len(since) + len(before) == 5
        for bad in ({"after": "not-a-cursor"}, {"created_after": "soon"}, {"limit": "0"}):
            r = c.get("/api/runs", params=bad)
            assert r.status_code == 400 and r.json()["error"], bad
        for r in whole["runs"]:
            wait_status(c, r["run_id"], "completed")
