"""The runtime server's OpenAPI 3.1 document, generated from the effective manifest on each start.

Why generated: the manifest and its bundled schemas are the contract; a hand-written document would drift from them.
Each action is one operation (``POST /actions/{id}``) whose request body carries the action's bundled input schema
as ``inputs`` and whose 200 answer carries its bundled output schema, so a platform (or schemathesis) can call every
action from this document alone. OpenAPI 3.1 schemas are JSON Schema 2020-12, the dialect of ``schemas/``: the
bundled schemas go in as they are, less ``$schema`` and ``$id`` (a document has one base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector.version import __version__

if TYPE_CHECKING:
    from connector.runtime import Runtime

__all__ = ["openapi_document"]

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_ERRORS = {
    "401": "No bearer token and no signed-in session",
    "403": "A cookie-authenticated write without the CSRF token",
    "400": "A sign-in answer that matches no sign-in started here",
    "404": "Not found",
    "409": "The connection is not signed in yet",
    "422": "Invalid input (each problem with its JSON Pointer) or an unknown connection",
    "502": "Dataverse or the identity platform refused the request (dataverse_code, auth_code)",
}


def _problems(*codes: str) -> dict[str, Any]:
    return {
        code: {"description": _ERRORS[code], "content": {"application/problem+json": {"schema": _PROBLEM}}}
        for code in codes
    }


def _json(schema: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: Any) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _clean(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def _path_param(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _action_operations(runtime: Runtime) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for action_id in sorted(runtime.manifest.actions):
        info = runtime.manifest.actions[action_id]
        bundled = runtime.bundled_schemas(action_id)
        request = {
            "type": "object",
            "required": ["connection", "inputs"],
            "properties": {"connection": {"type": "string"}, "inputs": _clean(bundled["input"])},
            "additionalProperties": False,
        }
        answer = {
            "type": "object",
            "required": ["output", "exchange"],
            "properties": {
                "output": _clean(bundled["output"]),
                "exchange": {"type": "array", "items": {"$ref": "#/components/schemas/Exchange"}},
            },
        }
        paths[f"/actions/{action_id}"] = {
            "post": {
                "operationId": f"run_{action_id}",
                "summary": info.label,
                "description": info.description,
                "tags": [info.category or "actions"],
                "requestBody": _body(request),
                "responses": {"200": _json(answer), **_problems("401", "403", "409", "422", "502")},
            }
        }
    return paths


def _fixed_operations(runtime: Runtime) -> dict[str, Any]:
    any_object: dict[str, Any] = {"type": "object"}
    job = {"$ref": "#/components/schemas/Job"}
    name = _path_param("name", "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    sources = sorted(str(d["name"]) for d in runtime.manifest.document.get("data_sources", []))
    return {
        "/healthz": {"get": {"operationId": "healthz", "security": [], "responses": {"200": _json(any_object)}}},
        "/actions": {"get": {"operationId": "list_actions", "responses": {"200": _json(any_object)}}},
        "/data-sources": {"get": {"operationId": "list_data_sources", "responses": {"200": _json(any_object)}}},
        "/data-sources/{id}": {
            "post": {
                "operationId": "data_source",
                "parameters": [{**_path_param("id"), "schema": {"enum": sources}}],
                "requestBody": _body({"$ref": "#/components/schemas/DataSourceRequest"}),
                "responses": {"200": _json(any_object), **_problems("401", "403", "404", "409", "422", "502")},
            }
        },
        "/triggers": {"get": {"operationId": "list_triggers", "responses": {"200": _json(any_object)}}},
        "/events": {
            "get": {
                "operationId": "list_events",
                "parameters": [
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}}
                ],
                "responses": {"200": _json(any_object), **_problems("401", "422")},
            }
        },
        "/connections": {"get": {"operationId": "list_connections", "responses": {"200": _json(any_object)}}},
        "/connections/{name}": {
            "put": {
                "operationId": "put_connection",
                "parameters": [name],
                "requestBody": _body(any_object),
                "responses": {"200": _json(any_object), **_problems("401", "403", "422")},
            },
            "delete": {
                "operationId": "delete_connection",
                "parameters": [name],
                "responses": {"204": {"description": "Deleted"}, **_problems("401", "403", "404", "422")},
            },
        },
        "/jobs": {
            "get": {"operationId": "list_jobs", "responses": {"200": _json(any_object)}},
            "post": {
                "operationId": "start_job",
                "requestBody": _body({"$ref": "#/components/schemas/JobRequest"}),
                "responses": {"202": _json(job, "Started"), **_problems("401", "403", "404", "422")},
            },
        },
        "/jobs/{id}": {
            "get": {
                "operationId": "get_job",
                "parameters": [_path_param("id")],
                "responses": {"200": _json(job), **_problems("401", "404")},
            },
            "delete": {
                "operationId": "cancel_job",
                "parameters": [_path_param("id")],
                "responses": {"202": _json(job, "Cancelling"), **_problems("401", "403", "404")},
            },
        },
    }


_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["path", "message"],
                        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        },
        "Exchange": {
            "type": "object",
            "required": ["method", "url", "status", "elapsed_ms"],
            "properties": {
                "method": {"type": "string"},
                "url": {"type": "string"},
                "status": {"type": "integer"},
                "elapsed_ms": {"type": "number"},
            },
        },
        "JobRequest": {
            "type": "object",
            "required": ["action", "connection", "inputs"],
            "properties": {
                "action": {"type": "string"},
                "connection": {"type": "string"},
                "inputs": {"type": "object"},
            },
        },
        "DataSourceRequest": {
            "type": "object",
            "required": ["connection"],
            "properties": {"connection": {"type": "string"}, "params": {"type": "object"}},
        },
        "Job": {
            "type": "object",
            "required": ["id", "action", "status", "progress"],
            "properties": {
                "id": {"type": "string"},
                "action": {"type": "string"},
                "connection": {"type": "string"},
                "status": {"enum": ["running", "succeeded", "failed", "cancelled"]},
                "progress": {
                    "type": "object",
                    "required": ["done", "total", "message"],
                    "properties": {
                        "done": {"type": "integer"},
                        "total": {"type": ["integer", "null"]},
                        "message": {"type": ["string", "null"]},
                    },
                },
                "output": {},
                "error": {"$ref": "#/components/schemas/Problem"},
            },
        },
    },
}


def openapi_document(runtime: Runtime) -> dict[str, Any]:
    """The whole document: the fixed endpoints, then one operation per action of the effective manifest."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "d365-connector runtime",
            "version": __version__,
            "description": "Run the connector's actions, data sources and jobs over HTTP (d365 serve).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {**_fixed_operations(runtime), **_action_operations(runtime)},
        "components": _COMPONENTS,
    }
