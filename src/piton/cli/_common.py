"""What the commands share: the store option, loading workflows, durations, logging."""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from piton.workflow import Workflow

DEFAULT_STORE = "sqlite:///.piton/piton.db"
EXIT_USAGE = 2  # a bad argument or option: click's own code for usage errors

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def store_url(given: str | None) -> str:
    """``--store``, else ``$PITON_STORE``, else the embedded SQLite database."""
    if given:
        return given
    return os.environ.get("PITON_STORE") or DEFAULT_STORE


store_option = click.option(
    "--store",
    "store",
    metavar="URL",
    default=None,
    help=f"Where runs are kept. Default: $PITON_STORE, else {DEFAULT_STORE}.",
)


log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)


class Duration(click.ParamType):  # type: ignore[type-arg]
    """Seconds, written ``30``, ``30s``, ``500ms``, ``2m``, ``1h`` or ``7d``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
        if match is None:
            self.fail(
                f"{value!r} is not a duration: write seconds (30), or a number with a unit "
                "(500ms, 30s, 2m, 1h, 7d).",
                param,
                ctx,
            )
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]


DURATION = Duration()


def load_workflows(specs: Iterable[str]) -> list[Workflow]:
    """The workflows ``module:attr`` names: a Workflow class, an instance, or a list of them.

    The current directory is importable, as it is for ``python -m``.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from piton.workflow import Workflow  # here: `piton runs` and `show` never need it

    found: list[Workflow] = []
    for spec in specs:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise click.BadParameter(
                f"{spec!r}: name a workflow as module:attribute, e.g. myapp.flows:Convert "
                "(a Workflow class, an instance, or a list of them).",
                param_hint="WORKFLOW",
            )
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                raise click.BadParameter(
                    f"{spec!r}: no module named {exc.name!r} (from {os.getcwd()}). Run the "
                    "command where the module is importable, or set PYTHONPATH.",
                    param_hint="WORKFLOW",
                ) from exc
            raise
        value: Any = module
        for part in attr.split("."):
            if not hasattr(value, part):
                raise click.BadParameter(
                    f"{spec!r}: module {module_name!r} has no attribute {attr!r}.",
                    param_hint="WORKFLOW",
                )
            value = getattr(value, part)
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, type) and issubclass(item, Workflow):
                item = item()
            if not isinstance(item, Workflow):
                raise click.BadParameter(
                    f"{spec!r} is a {type(item).__name__}, not a Workflow class or "
                    "instance (or a list of them).",
                    param_hint="WORKFLOW",
                )
            found.append(item)
    return found


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
