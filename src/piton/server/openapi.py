"""The OpenAPI 3 document of the HTTP API, written by hand (the routes are few)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "The body is not JSON, or not the object expected.",
        401: "No valid `Authorization: Bearer <token>` header.",
        404: "No such run, workflow or event type.",
        409: "The run cannot take this (it has finished, or belongs to another workflow).",
        422: "The input fails validation; `detail` holds pydantic's errors.",
    }
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
_OBJ: dict[str, Any] = {"type": "object"}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_GRAPH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "workflow": {"type": "string"},
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "accepts": _STRINGS,
                    "returns": _STRINGS,
                    "num_workers": {"type": "integer"},
                },
            },
        },
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"enum": ["start", "stop", "outside", "internal"]},
                },
            },
        },
        "edges": {
            "type": "array",
            "items": {
                "type": "object",
                "description": "'step:<name>' or 'event:<name>' to the same",
                "properties": {"source": {"type": "string"}, "target": {"type": "string"}},
            },
        },
        "layers": {"type": "array", "items": _STRINGS},
        "mermaid": {"type": "string"},
    },
}
_RUNS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
        "next": {
            "type": ["string", "null"],
            "description": "`after` for the next page; null when this page is not full",
        },
    },
}
_TIMELINE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "seq": {"type": "integer"},
                    "at": {"type": ["string", "null"], "description": "ISO 8601, UTC"},
                    "after": {
                        "type": ["number", "null"],
                        "description": "seconds since the entry before",
                    },
                    "kind": {"type": "string"},
                    "exec_id": {"type": ["string", "null"]},
                    "step": {"type": ["string", "null"], "description": "the step's name"},
                    "took": {
                        "type": ["number", "null"],
                        "description": "seconds the step's attempt ran, where recorded",
                    },
                    "what": {"type": "string"},
                },
            },
        },
        "next_after": {"type": ["integer", "null"], "description": "null on the last page"},
    },
}


def openapi_document(workflows: list[str]) -> dict[str, Any]:
    """The document; ``workflows`` are the names the server knows."""
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": workflows},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "piton", "version": "1", "description": "Durable workflow runs."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "detail": {}},
                },
                "Run": {
                    "type": "object",
                    "properties": {
                        "run_id": {"type": "string"},
                        "workflow": {"type": "string"},
                        "status": {"type": "string"},
                        "created_at": {"type": "number"},
                        "updated_at": {"type": "number"},
                        "finished_at": {"type": ["number", "null"]},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/workflows": {
                "get": {
                    "summary": "The workflows served, with their start event's JSON schema.",
                    "responses": {"200": _json(_OBJ, "The workflows."), **_errors(401)},
                }
            },
            "/api/workflows/{name}/runs": {
                "post": {
                    "summary": "Queue a run (idempotent by run_id); a worker executes it.",
                    "parameters": [name_param],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "run_id": {"type": "string"},
                                        "input": {"type": "object"},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "201": _json({"$ref": "#/components/schemas/Run"}, "Queued."),
                        "200": _json({"$ref": "#/components/schemas/Run"}, "Existed already."),
                        **_errors(400, 401, 404, 409, 422),
                    },
                }
            },
            "/api/runs": {
                "get": {
                    "summary": "List runs, newest first (by creation time, then run id), a "
                    "page at a time: pass the page's `next` as `after` for the next page.",
                    "parameters": [
                        {"name": "workflow", "in": "query", "schema": {"type": "string"}},
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "description": "The `next` cursor of the page before.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "created_after",
                            "in": "query",
                            "description": "Only runs created at or after (unix seconds).",
                            "schema": {"type": "number"},
                        },
                        {
                            "name": "created_before",
                            "in": "query",
                            "description": "Only runs created before (unix seconds).",
                            "schema": {"type": "number"},
                        },
                    ],
                    "responses": {"200": _json(_RUNS, "A page of runs."), **_errors(400, 401)},
                }
            },
            "/api/runs/{run_id}": {
                "get": {
                    "summary": "A run: its record, status, result or error, and what it waits for.",
                    "parameters": [_RUN_ID],
                    "responses": {"200": _json(_OBJ, "The run."), **_errors(401, 404)},
                }
            },
            "/api/runs/{run_id}/events": {
                "get": {
                    "summary": "The run's event stream as server-sent events; each event's id is "
                    "its index in the stream. Send Last-Event-ID to resume after it.",
                    "parameters": [
                        _RUN_ID,
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "text/event-stream, ending after the StopEvent.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 401, 404),
                    },
                },
                "post": {
                    "summary": "Send an event to the run.",
                    "parameters": [_RUN_ID],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["type"],
                                    "properties": {
                                        "type": {"type": "string"},
                                        "data": {"type": "object"},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "202": _json(_OBJ, "In the run's inbox."),
                        **_errors(400, 401, 404, 409, 422),
                    },
                },
            },
            "/api/workflows/{name}/graph": {
                "get": {
                    "summary": "The workflow's step graph (the model `piton draw` draws): steps, "
                    "event types by kind, edges, the nodes in layers, and Mermaid text.",
                    "parameters": [name_param],
                    "responses": {"200": _json(_GRAPH, "The graph."), **_errors(401, 404)},
                }
            },
            "/api/runs/{run_id}/timeline": {
                "get": {
                    "summary": "The run's journal as a timeline, one row per entry, oldest "
                    "first, paged by seq: pass the page's next_after as `after` for the next.",
                    "parameters": [
                        _RUN_ID,
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],
                    "responses": {
                        "200": _json(_TIMELINE, "A page of rows."),
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "The dashboard (HTML; it asks for the token when the API wants "
                    "one). Its files are under /static/.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/api/runs/{run_id}/cancel": {
                "post": {
                    "summary": "Ask the run to stop; it ends cancelled.",
                    "parameters": [_RUN_ID],
                    "responses": {"202": _json(_OBJ, "Requested."), **_errors(401, 404, 409)},
                }
            },
        },
    }


__all__ = ["openapi_document"]
