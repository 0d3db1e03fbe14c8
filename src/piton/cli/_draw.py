"""``piton draw``: a workflow's step graph as Mermaid text, an HTML page, or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from piton.cli._common import load_workflows
from piton.drawing import graph_model, to_html, to_mermaid


@click.command(
    epilog="""\b
Examples:
  piton draw myapp.flows:Convert                     # Mermaid text on stdout
  piton draw myapp.flows:Convert --format html -o convert.html
  piton draw myapp.flows:Convert --format json"""
)
@click.argument("workflow", metavar="MODULE:ATTR")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "html", "json"]),
    default="mermaid",
    show_default=True,
    help="Mermaid flowchart text, a self-contained HTML page (inline SVG), or the graph model.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None)
def draw(workflow: str, fmt: str, output: Path | None) -> None:
    """Draw the step graph of WORKFLOW: steps, the event types they take and return."""
    found = load_workflows([workflow])
    if len(found) != 1:
        raise click.BadParameter(
            f"{workflow!r} names {len(found)} workflows; draw one at a time.",
            param_hint="MODULE:ATTR",
        )
    model = graph_model(found[0])
    if fmt == "mermaid":
        text = to_mermaid(model)
    elif fmt == "html":
        text = to_html(model)
    else:
        text = json.dumps(model.to_dict(), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


__all__ = ["draw"]
