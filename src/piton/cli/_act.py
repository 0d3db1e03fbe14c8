"""``piton send``, ``piton cancel``, ``piton resume``: act on a run, through its workflow.

These import the workflow (``--workflow module:attr``): it knows the run's event types,
and ``resume`` executes its steps in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from piton.cli._common import EXIT_USAGE, load_workflows, store_option, store_url
from piton.cli._runs import fail
from piton.errors import EventNotAccepted, PitonError, RunNotFound
from piton.events import Event
from piton.stores.base import redact_url
from piton.workflow import Workflow

T = TypeVar("T")

workflow_option = click.option(
    "--workflow",
    "-w",
    "spec",
    metavar="MODULE:ATTR",
    required=True,
    help="The run's workflow, e.g. myapp.flows:Approve (a Workflow class or instance).",
)


def one_workflow(spec: str, url: str) -> Workflow:
    """The workflow ``spec`` names, reading and writing runs in the store ``url``."""
    os.environ["PITON_STORE"] = url  # the store of a workflow made without store=
    found = load_workflows([spec])
    if len(found) != 1:
        fail(f"{spec!r} names {len(found)} workflows; name one.", EXIT_USAGE)
    w = found[0]
    if w.store is None or w.store.url != url:
        fail(
            f"{spec!r} is a workflow instance with its own store "
            f"({redact_url(w.store.url) if w.store else 'none'}); name its class instead, "
            "or leave out --store.",
            EXIT_USAGE,
        )
    return w


async def existing(w: Workflow, run_id: str) -> None:
    """Fail with exit 1 unless run ``run_id`` is in the workflow's store, and is its run."""
    store = w.store
    assert store is not None
    await store.open()
    record = await store.get(run_id)
    if record is None:
        raise RunNotFound(
            f"No run '{run_id}' in {redact_url(store.url)}. List the runs with: piton runs"
        )
    if record.workflow != w.workflow_name:
        raise RunNotFound(
            f"Run '{run_id}' belongs to workflow '{record.workflow}', not "
            f"'{w.workflow_name}'; pass --workflow naming {record.workflow}."
        )


def acting(w: Workflow, run_id: str, act: Callable[[], Awaitable[T]]) -> T:
    """``act()`` once the run is known to exist; piton errors exit 1 with their message."""

    async def main() -> T:
        try:
            await existing(w, run_id)
            return await act()
        finally:
            if w.store is not None:
                await w.store.close()

    try:
        return asyncio.run(main())
    except EventNotAccepted as exc:
        fail(str(exc), EXIT_USAGE)
    except PitonError as exc:
        fail(str(exc))


def loaded_events() -> list[type[Event]]:
    """Every Event subclass defined in this process (the workflow's module is imported)."""
    seen: list[type[Event]] = []
    todo: list[type[Event]] = [Event]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


def event_class(w: Workflow, name: str) -> type[Event]:
    """The event class ``name`` (a class name, or module.QualName): one of the workflow's
    declared event types, else one defined by its code (a type only ``wait_for_event``
    names)."""

    def named(classes: list[type[Any]]) -> list[type[Event]]:
        return [
            cls
            for cls in classes
            if issubclass(cls, Event)
            and name in (f"{cls.__module__}.{cls.__qualname__}", cls.__name__, cls.__qualname__)
        ]

    declared = list(w._engine().graph.event_types.values())
    found = named(declared) or named(loaded_events())
    if len(found) != 1:
        module = type(w).__module__
        ours = [cls for cls in loaded_events() if cls.__module__ == module]
        known = ", ".join(sorted({cls.__name__ for cls in declared + ours}))
        why = "is not one of" if not found else "names several of"
        fail(
            f"Event type {name!r} {why} the event types of workflow '{w.workflow_name}' and "
            f"its module ({known}). Give a class name, or module.QualName when two "
            "share a name.",
            EXIT_USAGE,
        )
    return found[0]


@click.command(
    epilog="""\b
Examples:
  piton send approve-1 Answer --data '{"text": "yes"}' --workflow myapp.flows:Approve
  piton send approve-1 myapp.events.Answer --data @answer.json -w myapp.flows:Approve

The event lands in the run's inbox; the process running the run (a worker, or whoever
awaits it) takes it. Exit 1: no such run, or it has finished. Exit 2: a bad argument."""
)
@click.argument("run_id", metavar="RUN")
@click.argument("event_type", metavar="EVENT_TYPE")
@click.option(
    "--data",
    default="{}",
    show_default=True,
    help="The event's fields as a JSON object, or @FILE holding one.",
)
@click.option("--step", default=None, help="The one step that may take the event.")
@workflow_option
@store_option
def send(
    run_id: str, event_type: str, data: str, step: str | None, spec: str, store: str | None
) -> None:
    """Send an EVENT_TYPE event to run RUN (answer a run that waits for it)."""
    w = one_workflow(spec, store_url(store))
    cls = event_class(w, event_type)
    try:
        text = open(data[1:], encoding="utf-8").read() if data.startswith("@") else data
        fields = json.loads(text)
    except (OSError, ValueError) as exc:
        fail(f"--data {data[:80]!r}: not a JSON object ({exc}).", EXIT_USAGE)
    if not isinstance(fields, dict):
        fail(f"--data must be a JSON object of {cls.__name__}'s fields.", EXIT_USAGE)
    try:
        event = cls(**fields)
    except ValidationError as exc:
        fail(f"--data does not make a {cls.__name__}: {exc}", EXIT_USAGE)
    acting(w, run_id, lambda: w.send_event(run_id, event, step))
    click.echo(f"Sent {cls.__name__} to run '{run_id}'.")


@click.command(
    epilog="""\b
Examples:
  piton cancel approve-1 --workflow myapp.flows:Approve

The run ends 'cancelled' once the process running it (or the next worker) takes the
request. Exit 1: no such run, or it has finished."""
)
@click.argument("run_id", metavar="RUN")
@workflow_option
@store_option
def cancel(run_id: str, spec: str, store: str | None) -> None:
    """Ask run RUN to stop."""
    w = one_workflow(spec, store_url(store))
    acting(w, run_id, lambda: w.cancel_run(run_id))
    click.echo(f"Asked run '{run_id}' to stop.")


def shown(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return repr(result)


@click.command(
    epilog="""\b
Examples:
  piton resume approve-1 --workflow myapp.flows:Approve

Runs RUN's remaining steps in this process until it finishes, and prints its result
(a finished run's result at once). A run waiting for an event waits here; Ctrl-C leaves
it resumable. Exit 1: no such run, or the run failed."""
)
@click.argument("run_id", metavar="RUN")
@workflow_option
@store_option
def resume(run_id: str, spec: str, store: str | None) -> None:
    """Attach to run RUN, execute it here, and print its result."""
    w = one_workflow(spec, store_url(store))

    async def attach() -> Any:
        try:
            return await w.run(run_id=run_id)
        except PitonError:
            raise
        except Exception as exc:  # noqa: BLE001 - the run's own error: report it
            fail(f"Run '{run_id}' failed: {type(exc).__name__}: {exc}")

    try:
        result = acting(w, run_id, attach)
    except KeyboardInterrupt:
        fail(f"Interrupted; run '{run_id}' is resumable: piton resume {run_id} -w {spec}", 130)
    click.echo(shown(result))


__all__ = ["cancel", "resume", "send"]
