"""The HTTP API: routes over a store and the workflows it serves.

Every answer is JSON; an error is ``{"error": "...", "detail": ...}`` with its status
code. Runs are queued (``Workflow.start``) and executed by a ``piton.Worker``, which the
app runs in its own event loop unless ``worker=False``; the event stream is read from
the store, so the server never drives a run itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from piton._core.status import STATUSES
from piton.drawing import _layers, graph_model, to_mermaid
from piton.errors import (
    EventNotAccepted,
    InvalidCursor,
    RunNotFound,
    StoreError,
    WorkflowRuntimeError,
)
from piton.events import Event, StopEvent
from piton.history import timeline
from piton.serde import JsonSerializer, TypeResolver
from piton.stores.base import RunRecord, Store, open_store, run_cursor
from piton.views import RunView
from piton.worker import Worker
from piton.workflow import Workflow

from .openapi import openapi_document

Handler = Callable[[Request], Awaitable[Response]]
POLL = 0.1  # seconds between reads of a followed run's stream
MAX_LIMIT = 1000
KEEPALIVE = 15.0  # seconds of silence before a comment line on an event stream
STATIC = Path(__file__).resolve().parent / "static"  # the dashboard: plain HTML, JS, CSS
PAGE_HEADERS = {  # the dashboard loads nothing from elsewhere, and no page frames it
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=repr)


def _error(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": _jsonable(detail)}, status_code=status)


def _int_param(text: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ApiError(400, f"'{name}' must be an integer {bound}, got {text!r}.")
    return value


def _time_param(text: str | None, name: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a time in unix seconds, got {text!r}.")
    return value


def _record(r: RunRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "workflow": r.workflow,
        "status": r.status,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "finished_at": r.finished_at,
        "seq": r.seq,
        "owner": r.owner,
    }


def _view(v: RunView) -> dict[str, Any]:
    return {
        "status": v.status,
        "result": _jsonable(v.result),
        "error": None if v.error is None else f"{type(v.error).__name__}: {v.error}",
        "state": _jsonable(v.state),
        "waiting_for": [_jsonable(asdict(w)) for w in v.waiting],
        "running_steps": v.running_steps,
    }


def _event_json(event: Event) -> dict[str, Any]:
    data = event.model_dump(mode="python") if isinstance(event, BaseModel) else {}
    return {"type": type(event).__name__, "data": _jsonable(data)}


def _validation(exc: ValidationError) -> Any:
    return json.loads(exc.json(include_url=False))


def _event_class(name: str, module: str) -> type[Event] | None:
    """The loaded Event subclass called ``name``: the one defined in ``module`` (the
    workflow's), else the only one loaded; None if none, or several and none of them
    in ``module`` (another application's class of that name must not be taken)."""
    found: list[type[Event]] = []
    todo: list[type[Event]] = [Event]
    seen: set[type[Event]] = set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if cls.__name__ == name:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    ours = [cls for cls in found if cls.__module__ == module]
    if len(ours) == 1:
        return ours[0]
    return found[0] if len(found) == 1 else None


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"The request body is not JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"The request body must be a JSON object, got {type(body).__name__}.")
    return body


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"'{key}' must be a JSON object, got {type(value).__name__}.")
    return value


class Api:
    """The routes' shared state: the store, the workflows by name, the token."""

    def __init__(self, store: Store, workflows: list[Workflow], token: str | None) -> None:
        self.store = store
        self.token = token
        self.workflows: dict[str, Workflow] = {}
        for w in workflows:
            bound = copy.copy(w)  # the server's store, whatever store the instance had
            bound._store_arg = store
            self.workflows[w.workflow_name] = bound

    def workflow(self, name: str) -> Workflow:
        w = self.workflows.get(name)
        if w is None:
            raise ApiError(
                404,
                f"No workflow '{name}' is served here.",
                {"workflows": sorted(self.workflows)},
            )
        return w

    async def run_record(self, run_id: str) -> RunRecord:
        record = await self.store.get(run_id)
        if record is None:
            raise ApiError(404, f"No run '{run_id}'.")
        return record

    def guarded(self, handler: Handler) -> Handler:
        async def route(request: Request) -> Response:
            if self.token is not None:
                header = request.headers.get("authorization", "")
                scheme, _, given = header.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), self.token.encode()
                ):
                    return _error(401, "Send the header 'Authorization: Bearer <token>'.")
            try:
                return await handler(request)
            except ApiError as exc:
                return _error(exc.status, exc.error, exc.detail)
            except RunNotFound as exc:
                return _error(404, str(exc))
            except WorkflowRuntimeError as exc:
                return _error(409, str(exc))
            except StoreError as exc:
                return _error(503, str(exc))

        return route

    # -- routes -----------------------------------------------------------------------

    async def list_workflows(self, request: Request) -> Response:
        out = []
        for name, w in sorted(self.workflows.items()):
            graph = w._compiled().graph
            out.append(
                {
                    "name": name,
                    "start_event": graph.start_event.__name__,
                    "input_schema": graph.start_event.model_json_schema(),
                    "accepts": sorted(t.__name__ for t in graph.outside),
                    "events": {t.__name__: t.model_json_schema() for t in graph.outside},
                }
            )
        return JSONResponse({"workflows": out})

    async def start_run(self, request: Request) -> Response:
        w = self.workflow(request.path_params["name"])
        body = await _body(request)
        run_id = body.get("run_id")
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise ApiError(400, "'run_id' must be a non-empty string.")
        cls = w._compiled().graph.start_event
        try:
            start = cls.model_validate(_object(body, "input"))
        except ValidationError as exc:
            raise ApiError(
                422, f"The input fails {cls.__name__}'s validation.", _validation(exc)
            ) from None
        existed = run_id is not None and await self.store.get(run_id) is not None
        run_id = await w.start(run_id, start_event=start)
        record = await self.run_record(run_id)
        if record.workflow != w.workflow_name:
            raise ApiError(409, f"Run '{run_id}' belongs to workflow '{record.workflow}'.")
        return JSONResponse(_record(record), status_code=200 if existed else 201)

    async def list_runs(self, request: Request) -> Response:
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in STATUSES:
            raise ApiError(400, f"Unknown status '{status}'.", {"statuses": sorted(STATUSES)})
        limit = _int_param(q.get("limit"), "limit", 100, 1, MAX_LIMIT)
        window = [_time_param(q.get(k), k) for k in ("created_after", "created_before")]
        try:
            runs = await self.store.list_runs(
                status=status,
                workflow=q.get("workflow") or None,
                limit=limit,
                after=q.get("after") or None,
                created_after=window[0],
                created_before=window[1],
            )
        except InvalidCursor as exc:
            raise ApiError(400, str(exc)) from None
        return JSONResponse(
            {
                "runs": [_record(r) for r in runs],
                "next": run_cursor(runs[-1]) if len(runs) == limit else None,
            }
        )

    async def get_run(self, request: Request) -> Response:
        record = await self.run_record(request.path_params["run_id"])
        out = _record(record)
        w = self.workflows.get(record.workflow)
        if w is not None:
            view = await w.get_run(record.run_id)
            out.update(_view(view))
            if not view.finished:  # what the dashboard's answer form offers
                out["sendable"] = {
                    name: cls.model_json_schema()
                    for name, cls in self.waited_types(w, view).items()
                }
        return JSONResponse(out)

    async def graph(self, request: Request) -> Response:
        w = self.workflow(request.path_params["name"])
        model = graph_model(w)
        return JSONResponse(
            {**model.to_dict(), "layers": _layers(model), "mermaid": to_mermaid(model)}
        )

    async def timeline(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await self.run_record(run_id)
        q = request.query_params
        after = _int_param(q.get("after"), "after", 0, 0, 2**62)
        limit = _int_param(q.get("limit"), "limit", 100, 1, MAX_LIMIT)
        # one entry more before the page: the first row's time since the one before it
        start = max(after - 1, 0)
        want = limit + (after - start)
        entries = await self.store.journal(run_id, after=start, limit=want)  # a keyset read
        rows = [row for row in timeline(entries) if row["seq"] > after][:limit]
        return JSONResponse(
            {"rows": rows, "next_after": rows[-1]["seq"] if len(rows) == limit else None}
        )

    def waited_types(self, w: Workflow, view: RunView) -> dict[str, type[Event]]:
        """The event types the run waits for (``wait_for_event`` types need not be in the
        graph) and those its graph takes from outside, by class name."""
        out: dict[str, type[Event]] = {}
        for waiting in view.waiting:
            if waiting.event_type is not None and waiting.event_type not in out:
                found = _event_class(waiting.event_type, type(w).__module__)
                if found is not None:
                    out[waiting.event_type] = found
        for t in sorted(w._compiled().graph.outside, key=lambda t: t.__name__):
            out.setdefault(t.__name__, t)
        return out

    async def send_event(self, request: Request) -> Response:
        record = await self.run_record(request.path_params["run_id"])
        w = self.workflow(record.workflow)
        body = await _body(request)
        name = body.get("type")
        by_name = {t.__name__: t for t in w._compiled().graph.event_types.values()}
        view = await w.get_run(record.run_id)
        for key, cls in self.waited_types(w, view).items():
            by_name.setdefault(key, cls)
        if isinstance(name, str) and name not in by_name:
            found = _event_class(name, type(w).__module__)
            if found is not None:
                by_name[name] = found
        if not isinstance(name, str) or name not in by_name:
            raise ApiError(
                422,
                f"'type' must name an event class of workflow '{w.workflow_name}', got {name!r}.",
                {"types": sorted(by_name)},
            )
        try:
            event = by_name[name].model_validate(_object(body, "data"))
        except ValidationError as exc:
            raise ApiError(422, f"The data fails {name}'s validation.", _validation(exc)) from None
        try:
            await w.send_event(record.run_id, event)
        except EventNotAccepted as exc:
            raise ApiError(422, str(exc), {"types": sorted(by_name)}) from None
        return JSONResponse({"run_id": record.run_id, "sent": name}, status_code=202)

    async def cancel_run(self, request: Request) -> Response:
        record = await self.run_record(request.path_params["run_id"])
        await self.workflow(record.workflow).cancel_run(record.run_id)
        return JSONResponse({"run_id": record.run_id, "cancelling": True}, status_code=202)

    async def stream(self, request: Request) -> Response:
        record = await self.run_record(request.path_params["run_id"])
        w = self.workflow(record.workflow)
        last = request.headers.get("last-event-id")
        try:
            cursor = int(last) + 1 if last else int(request.query_params.get("cursor", "0"))
        except ValueError:
            raise ApiError(400, f"Last-Event-ID must be an event's id, got {last!r}.") from None
        if cursor < 0:
            raise ApiError(400, "The cursor counts events: it is >= 0.")
        resolver = TypeResolver(w._compiled().graph.event_types)
        return StreamingResponse(
            self._follow(record.run_id, cursor, resolver),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _follow(self, run_id: str, cursor: int, types: TypeResolver) -> AsyncIterator[str]:
        """The stream from ``cursor`` on; the run is loaded again only when its ``seq``
        moved (stream events come with journal commits), so a quiet run costs one row
        read per poll."""
        ser = JsonSerializer()
        quiet_since = time.monotonic()
        seen_seq = -1
        while True:
            record = await self.store.get(run_id)
            if record is None:  # pruned meanwhile
                return
            if record.seq != seen_seq or record.finished:
                seen_seq = record.seq
                loaded = await self.store.load(run_id)
                for text in loaded.stream[cursor:]:
                    value = ser.loads(text, types)
                    event = value if isinstance(value, Event) else Event(unreadable=value)
                    yield f"id: {cursor}\nevent: {type(event).__name__}\n"
                    yield f"data: {json.dumps(_event_json(event))}\n\n"
                    cursor += 1
                    quiet_since = time.monotonic()
                    if isinstance(event, StopEvent):
                        return
                if loaded.record.finished:
                    return
            if time.monotonic() - quiet_since > KEEPALIVE:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"  # a comment: proxies keep an idle stream open
            await asyncio.sleep(POLL)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(sorted(self.workflows)))


def create_app(
    store: Store | str,
    workflows: list[Workflow],
    token: str | None = None,
    *,
    worker: bool = True,
    concurrency: int = 100,
) -> Starlette:
    """The HTTP API over ``store`` for ``workflows``; with ``token``, every /api request
    needs ``Authorization: Bearer <token>``. With ``worker``, the app runs a
    ``piton.Worker`` for the workflows while it serves."""
    st = open_store(store) if isinstance(store, str) else store
    api = Api(st, workflows, token or None)
    g = api.guarded

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await st.open()
        runner = None
        if worker:
            runner = Worker(st, list(api.workflows.values()), concurrency=concurrency)
            await runner.start()
        try:
            yield
        finally:
            if runner is not None:
                await runner.drain()  # running steps finish (up to its grace), runs go back
            await st.close()

    async def dashboard(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    routes = [
        Route("/api/workflows", g(api.list_workflows), methods=["GET"]),
        Route("/api/workflows/{name}/runs", g(api.start_run), methods=["POST"]),
        Route("/api/runs", g(api.list_runs), methods=["GET"]),
        Route("/api/runs/{run_id}", g(api.get_run), methods=["GET"]),
        Route("/api/runs/{run_id}/events", g(api.stream), methods=["GET"]),
        Route("/api/runs/{run_id}/events", g(api.send_event), methods=["POST"]),
        Route("/api/runs/{run_id}/cancel", g(api.cancel_run), methods=["POST"]),
        Route("/api/workflows/{name}/graph", g(api.graph), methods=["GET"]),
        Route("/api/runs/{run_id}/timeline", g(api.timeline), methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        # the dashboard: open (it holds no data); its /api calls send the token
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"No route {request.method} {request.url.path}; see /openapi.json.")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}.")

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_allowed},
    )


__all__ = ["create_app"]
