"""A workflow's step graph as data, and drawn: Mermaid text, a self-contained HTML page.

``graph_model(workflow)`` is the one model of steps, events and edges that ``piton draw``
and the dashboard both use: steps consume event types and return event types; an event
type that no step returns but one consumes comes from outside the run (a send, a
``wait_for_event`` answer).

    from piton.drawing import graph_model, to_mermaid
    print(to_mermaid(graph_model(MyWorkflow)))
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from typing import Any

from .events import StartEvent, StopEvent
from .workflow import Workflow


@dataclass(frozen=True)
class StepInfo:
    name: str
    accepts: tuple[str, ...]  # event type names
    returns: tuple[str, ...]
    num_workers: int


@dataclass(frozen=True)
class EventInfo:
    name: str
    kind: str  # "start", "stop", "outside" (sent to the run) or "internal"


@dataclass(frozen=True)
class Edge:
    source: str  # "step:<name>" or "event:<name>"
    target: str


@dataclass(frozen=True)
class GraphModel:
    workflow: str
    steps: tuple[StepInfo, ...]
    events: tuple[EventInfo, ...]
    edges: tuple[Edge, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what the dashboard draws."""
        return asdict(self)


def graph_model(workflow: Workflow | type[Workflow]) -> GraphModel:
    """The steps, event types and edges of ``workflow`` (a class or an instance)."""
    w = workflow() if isinstance(workflow, type) else workflow
    graph = w._compiled().graph
    names: dict[type[Any], str] = {}

    def name_of(cls: type[Any]) -> str:
        return names.setdefault(cls, cls.__name__)

    steps = tuple(
        StepInfo(
            name,
            tuple(name_of(t) for t in node.accepted),
            tuple(name_of(t) for t in node.returns),
            node.num_workers,
        )
        for name, node in sorted(graph.steps.items())
    )
    kinds: dict[str, str] = {}
    for node in graph.steps.values():
        for t in (*node.accepted, *node.returns):
            if issubclass(t, StartEvent):
                kinds[name_of(t)] = "start"
            elif issubclass(t, StopEvent):
                kinds[name_of(t)] = "stop"
            elif t in graph.outside:
                kinds[name_of(t)] = "outside"
            else:
                kinds.setdefault(name_of(t), "internal")
    order = {"start": 0, "outside": 1, "internal": 2, "stop": 3}
    events = tuple(
        EventInfo(n, k) for n, k in sorted(kinds.items(), key=lambda nk: (order[nk[1]], nk[0]))
    )
    edges: list[Edge] = []
    for step in steps:
        edges += [Edge(f"event:{e}", f"step:{step.name}") for e in step.accepts]
        edges += [Edge(f"step:{step.name}", f"event:{e}") for e in step.returns]
    return GraphModel(w.workflow_name, steps, events, tuple(edges))


def _node_id(ref: str) -> str:
    kind, _, name = ref.partition(":")
    return f"{kind[0]}_{''.join(c if c.isalnum() else '_' for c in name)}"


def to_mermaid(model: GraphModel) -> str:
    """A Mermaid flowchart: steps as boxes, event types as rounded nodes."""
    lines = ["flowchart TD"]
    shapes = {"start": "([{}])", "stop": "([{}])", "outside": "[/{}/]", "internal": "({})"}
    for ev in model.events:
        shape = shapes[ev.kind].format(json.dumps(ev.name))
        lines.append(f"    {_node_id('event:' + ev.name)}{shape}")
    for step in model.steps:
        lines.append(f"    {_node_id('step:' + step.name)}[{json.dumps(step.name)}]")
    for edge in model.edges:
        lines.append(f"    {_node_id(edge.source)} --> {_node_id(edge.target)}")
    return "\n".join(lines) + "\n"


def _layers(model: GraphModel) -> list[list[str]]:
    """Nodes by distance from the start and outside events (a layered drawing)."""
    refs = [f"event:{e.name}" for e in model.events] + [f"step:{s.name}" for s in model.steps]
    out: dict[str, list[str]] = {r: [] for r in refs}
    for edge in model.edges:
        out[edge.source].append(edge.target)
    roots = [f"event:{e.name}" for e in model.events if e.kind in ("start", "outside")]
    depth = {r: 0 for r in roots}
    frontier = list(roots)
    while frontier:
        nxt = []
        for ref in frontier:
            for target in out[ref]:
                if target not in depth:
                    depth[target] = depth[ref] + 1
                    nxt.append(target)
        frontier = nxt
    last = max(depth.values(), default=0) + 1
    layers: list[list[str]] = [[] for _ in range(last + 1)]
    for ref in refs:
        layers[depth.get(ref, last)].append(ref)
    return [layer for layer in layers if layer]


def to_html(model: GraphModel) -> str:
    """A self-contained HTML page drawing the graph as inline SVG (no script, no network)."""
    box_w, box_h, gap_x, gap_y = 170, 36, 30, 60
    layers = _layers(model)
    kinds = {f"event:{e.name}": e.kind for e in model.events}
    width = max(len(layer) for layer in layers) * (box_w + gap_x) + gap_x
    height = len(layers) * (box_h + gap_y) + gap_y
    pos: dict[str, tuple[float, float]] = {}
    for row, layer in enumerate(layers):
        offset = (width - len(layer) * (box_w + gap_x) + gap_x) / 2
        for col, ref in enumerate(layer):
            pos[ref] = (offset + col * (box_w + gap_x), gap_y + row * (box_h + gap_y))
    fill = {"start": "#d7f5dd", "stop": "#f9d9d9", "outside": "#fff3c4", "internal": "#eef"}
    parts = []
    for edge in model.edges:
        (x1, y1), (x2, y2) = pos[edge.source], pos[edge.target]
        parts.append(
            f'<line x1="{x1 + box_w / 2:.0f}" y1="{y1 + box_h:.0f}" x2="{x2 + box_w / 2:.0f}" '
            f'y2="{y2:.0f}" stroke="#555" marker-end="url(#arrow)"/>'
        )
    for ref, (x, y) in pos.items():
        kind, _, name = ref.partition(":")
        color = "#dde8ff" if kind == "step" else fill[kinds[ref]]
        radius = 4 if kind == "step" else 18
        parts.append(
            f'<g class="{kind}"><rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" '
            f'rx="{radius}" fill="{color}" stroke="#333"/><text x="{x + box_w / 2:.0f}" '
            f'y="{y + box_h / 2 + 5:.0f}" text-anchor="middle" font-family="sans-serif" '
            f'font-size="13">{html.escape(name)}</text></g>'
        )
    title = html.escape(model.workflow)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif">
<h1>{title}</h1>
<p>Boxes are steps; rounded nodes are event types (green: start, red: stop, yellow: sent
from outside the run).</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8"
markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/>
</marker></defs>
{chr(10).join(parts)}
</svg>
<script type="application/json" id="graph">{html.escape(json.dumps(model.to_dict()))}</script>
</body></html>
"""


__all__ = ["Edge", "EventInfo", "GraphModel", "StepInfo", "graph_model", "to_html", "to_mermaid"]
