"""``piton draw`` and ``piton.drawing``: the step graph as a model, Mermaid text and HTML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from piton import Context, Event, HumanResponseEvent, StartEvent, StopEvent, Workflow, step
from piton.drawing import graph_model, to_html, to_mermaid

ROOT = Path(__file__).resolve().parents[2]


class Draft(Event):
    text: str


class Review(Workflow):
    @step
    async def write(self, ev: StartEvent) -> Draft:
        return Draft(text="hi")

    @step
    async def approve(self, ev: Draft | HumanResponseEvent, ctx: Context) -> StopEvent | None:
        return StopEvent(result="ok") if isinstance(ev, HumanResponseEvent) else None


def test_the_model_has_every_step_event_and_edge() -> None:
    model = graph_model(Review)
    assert model.workflow == "Review"
    assert [s.name for s in model.steps] == ["approve", "write"]
    kinds = {e.name: e.kind for e in model.events}
    assert kinds == {
        "StartEvent": "start",
        "HumanResponseEvent": "outside",
        "Draft": "internal",
        "StopEvent": "stop",
    }
    edges = {(e.source, e.target) for e in model.edges}
    assert edges == {
        ("event:StartEvent", "step:write"),
        ("step:write", "event:Draft"),
        ("event:Draft", "step:approve"),
        ("event:HumanResponseEvent", "step:approve"),
        ("step:approve", "event:StopEvent"),
    }
    assert json.loads(json.dumps(model.to_dict()))["workflow"] == "Review"


def test_mermaid_and_html_draw_the_same_nodes() -> None:
    model = graph_model(Review())
    text = to_mermaid(model)
    assert text.startswith("flowchart TD\n")
    assert 'e_HumanResponseEvent[/"HumanResponseEvent"/]' in text  # sent from outside
    assert "e_Draft --> s_approve" in text and "s_approve --> e_StopEvent" in text
    page = to_html(model)
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script src" not in page
    assert page.count("<rect") == len(model.steps) + len(model.events)
    assert page.count("<line") == len(model.edges)


def _piton(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT / "src")])}
    return subprocess.run(
        [sys.executable, "-m", "piton", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def test_the_draw_command(tmp_path: Path) -> None:
    here = Path(__file__).resolve().parent
    done = _piton("draw", "test_draw:Review", cwd=here)
    assert done.returncode == 0, done.stderr
    assert done.stdout == to_mermaid(graph_model(Review))
    out = tmp_path / "review.html"
    done = _piton("draw", "test_draw:Review", "--format", "html", "-o", str(out), cwd=here)
    assert done.returncode == 0 and out.read_text().startswith("<!doctype html>")
    done = _piton("draw", "test_draw:Review", "--format", "json", cwd=here)
    assert json.loads(done.stdout)["steps"][1]["name"] == "write"
    bad = _piton("draw", "test_draw:Nope", cwd=here)
    assert bad.returncode == 2 and "has no attribute 'Nope'" in bad.stderr
    assert "Examples" in _piton("draw", "--help", cwd=here).stdout
