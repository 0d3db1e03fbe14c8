"""``piton serve``: the JSON HTTP API (and a worker) over a store's runs."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from piton.cli._common import (
    EXIT_USAGE,
    load_workflows,
    log_level_option,
    setup_logging,
    store_option,
    store_url,
)


@click.command(
    epilog="""\b
Examples:
  piton serve myapp.flows:Convert --store postgresql://app@db/app --port 8000
  PITON_TOKEN=s3cret piton serve myapp.flows:workflows --host 0.0.0.0
  piton serve myapp.flows:Convert --no-worker   # workers run elsewhere

The API is described at /openapi.json. With a token (--token or $PITON_TOKEN) every
/api request needs the header 'Authorization: Bearer <token>'."""
)
@click.argument("workflows", nargs=-1, required=True, metavar="MODULE:ATTR...")
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--token",
    default=None,
    metavar="TOKEN",
    help="Require 'Authorization: Bearer TOKEN' on /api. Default: $PITON_TOKEN, else none.",
)
@click.option(
    "--worker/--no-worker",
    default=True,
    show_default=True,
    help="Also execute the queued runs in this process (a piton.Worker).",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Most runs the built-in worker executes at once.",
)
@log_level_option
def serve(
    workflows: tuple[str, ...],
    store: str | None,
    host: str,
    port: int,
    token: str | None,
    worker: bool,
    concurrency: int,
    log_level: str,
) -> None:
    """Serve WORKFLOWS over HTTP: start runs, list and show them, stream their events,
    send events to them, cancel them.

    Each WORKFLOW is module:attribute naming a Workflow class, an instance, or a list of
    them. Needs the server extra: pip install 'piton[server]'.
    """
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        click.echo(
            f"piton serve needs {' and '.join(missing)}: pip install 'piton[server]'",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    import uvicorn

    from piton.server import create_app

    setup_logging(log_level)
    found = load_workflows(workflows)
    app = create_app(
        store_url(store),
        found,
        token or os.environ.get("PITON_TOKEN") or None,
        worker=worker,
        concurrency=concurrency,
    )
    server = _graceful_server()(
        uvicorn.Config(app, host=host, port=port, log_level=log_level.lower())
    )
    server.run()


def _graceful_server() -> type[Any]:
    import uvicorn

    class Graceful(uvicorn.Server):
        """Exits 0 after a graceful shutdown on SIGTERM or Ctrl-C, as piton worker does
        (uvicorn re-raises the signal once it has shut down, so the process would die of
        it: exit 143)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()

    return Graceful


__all__ = ["serve"]
