"""OpenAPI 3.1 for every route of the app, generated from the pydantic models on the routes.

Each `api_route` carries a `RouteDoc` (body, query, response models, error statuses); this
module walks the app's routes and mounts, so a new service's endpoints appear with no extra
work. Schemas come from pydantic, never from hand-written YAML.
"""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Mount, Route

from gateway.messages import TaskEvent
from gateway.web.errors import ERROR_CODES, ErrorBody
from gateway.web.routing import RouteDoc

# The conventions every endpoint of our API follows (the README's "API conventions").
CONVENTIONS = """\
**Conventions** (the routes kept for the reference system's clients under `/control_plane`
keep their old shapes: `POST /sessions/create`, `GET /sessions`, `GET /sessions/{id}`,
`POST /sessions/{id}/delete`, `/sessions/{id}/tasks`, `/sessions/{id}/current_task`,
`/sessions/{id}/tasks/{task_id}/result`, `/services...`, `/process_message`).

- **Errors**: `{"error": code, "detail": "one readable sentence"}`; validation errors (422)
  add `errors: [{loc, msg, type}]`.
- **Lists**: `{"items": [...], "total": N}`, newest first; query `limit`, `offset`,
  `sort`, `order=desc|asc`.
- **Tasks**: every endpoint that answers a task answers the `Task` shape: `input` as it was
  sent, `result` the output as JSON for every service type, `error` when it did not complete.
- **Names**: `service` names a service (`agent_id` only on the reference routes).
- **Session state** is read and written as `{"state": {...}}` (a POST merges keys).
- **Events** carry their fields in `data` directly; the last one is `result`.
- **Unknown keys** in a request body are a 422 naming them.
"""

PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(:[A-Za-z_]+)?}")
REF = "#/components/schemas/{model}"

_PLAIN_DOCS: dict[str, str] = {
    "/": "Gateway information: name, version, services and their prefixes",
    "/healthz": "Liveness: the process answers",
    "/readyz": "Readiness: 503 while starting or shutting down",
    "/metrics": "Prometheus metrics",
    "/openapi.json": "This document",
    "/docs": "Interactive API documentation",
}

# Plain routes whose success body is not JSON.
_PLAIN_MEDIA: dict[str, str] = {"/metrics": "text/plain", "/docs": "text/html"}


def _other_content(media: str, model: Any, refs: Any) -> dict[str, Any]:
    """A success body in another protocol's shape: SSE frames of `model`, or plain text."""
    if media == "text/event-stream" and model is not None:
        return {
            "schema": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9]+$"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": _schema_for(model, "serialization", refs),
                    },
                },
                "required": ["id", "data"],
            }
        }
    return {"schema": {"type": "string"}}


def _sse_content(event_ref: dict[str, Any]) -> dict[str, Any]:
    """`text/event-stream`: each event is `id: <seq>` + `event: <kind>` + `data: <TaskEvent>`."""
    kinds = list(get_args(TaskEvent.model_fields["kind"].annotation))
    return {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "properties": {
                    "id": {
                        "type": "string",
                        "pattern": "^[0-9]+$",
                        "description": "the event's seq; resume after it with Last-Event-ID",
                    },
                    "event": {"type": "string", "enum": kinds},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": event_ref,
                    },
                },
                "required": ["id", "event", "data"],
            }
        }
    }


_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "resume a stream after this event id (as `after`; the larger wins)",
    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
}


def _may_stream(doc: RouteDoc | None) -> bool:
    """A route whose query has `stream` answers with Server-Sent Events when it is true."""
    return bool(doc and doc.query is not None and "stream" in doc.query.model_fields)


def _may_answer_unfinished(doc: RouteDoc | None) -> bool:
    """A route that waits (`wait` in its body) and answers a `status`: 202 if time runs out."""
    if doc is None or doc.body is None or "wait" not in doc.body.model_fields:
        return False
    response = doc.response
    return (
        isinstance(response, type)
        and issubclass(response, BaseModel)
        and ("status" in response.model_fields)
    )


def _walk(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, Route]]:
    found: list[tuple[str, Route]] = []
    for route in routes:
        if isinstance(route, Mount):
            found.extend(_walk(list(route.routes or []), prefix + route.path))
        elif isinstance(route, Route) and route.include_in_schema:
            found.append((prefix + route.path, route))
    return found


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_of(arg)]


class _Schemas:
    """Collects every model first, then asks pydantic for all schemas at once (unique names)."""

    def __init__(self) -> None:
        self.models: list[tuple[type[BaseModel], str]] = []

    def want(self, annotation: Any, mode: str) -> None:
        for model in _models_of(annotation):
            if (model, mode) not in self.models:
                self.models.append((model, mode))

    def build(self) -> tuple[dict, dict]:
        if not self.models:
            return {}, {}
        refs, top = models_json_schema(self.models, ref_template=REF)  # type: ignore[arg-type]
        return refs, top.get("$defs", {})


def _schema_for(annotation: Any, mode: str, refs: dict) -> dict[str, Any]:
    if annotation is None:
        return {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return refs[(annotation, mode)]
    origin = get_origin(annotation)
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        return {"type": "array", "items": _schema_for(item, mode, refs)}
    if origin is dict:
        args = get_args(annotation)
        value = _schema_for(args[1], mode, refs) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": value}
    return {}


def build_openapi(
    routes: list[BaseRoute], *, title: str, version: str, auth: bool = False
) -> dict[str, Any]:
    found = _walk(routes)
    schemas = _Schemas()
    schemas.want(ErrorBody, "serialization")
    schemas.want(TaskEvent, "serialization")
    for _, route in found:
        doc: RouteDoc | None = getattr(route, "doc", None)
        if doc is not None:
            schemas.want(doc.body, "validation")
            schemas.want(doc.query, "validation")
            schemas.want(doc.response, "serialization")
            for model in [*doc.responses.values(), *(doc.content or {}).values()]:
                schemas.want(model, "serialization")
    refs, components = schemas.build()
    error_ref = refs[(ErrorBody, "serialization")]
    event_ref = refs[(TaskEvent, "serialization")]

    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for raw_path, route in found:
        path = PARAM.sub(lambda m: "{" + m.group(1) + "}", raw_path)
        doc = getattr(route, "doc", None)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            operation = _operation(path, method, doc, refs, error_ref, event_ref, auth, used_ids)
            paths.setdefault(path, {})[method.lower()] = operation

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": CONVENTIONS},
        "paths": paths,
        "components": {"schemas": components},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        document["paths"].get("/healthz", {}).get("get", {})["security"] = []
    return document


def _operation(
    path: str,
    method: str,
    doc: RouteDoc | None,
    refs: dict,
    error_ref: dict,
    event_ref: dict,
    auth: bool,
    used_ids: set[str],
) -> dict[str, Any]:
    base_id = re.sub(r"[^A-Za-z0-9]+", "_", f"{method}_{path}").strip("_").lower()
    operation_id, n = base_id, 2
    while operation_id in used_ids:
        operation_id, n = f"{base_id}_{n}", n + 1
    used_ids.add(operation_id)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": doc.summary if doc else _PLAIN_DOCS.get(path, path),
        "tags": list(doc.tags) if doc and doc.tags else [_tag(path)],
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in PARAM.findall(path)
        for name in [name[0]]
    ]
    if doc and doc.query is not None:
        query_schema = doc.query.model_json_schema(ref_template=REF)
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            parameters.append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    if (doc and doc.stream) or _may_stream(doc):
        parameters.append(_LAST_EVENT_ID)
    if parameters:
        operation["parameters"] = parameters
    if doc and doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(doc.body, "validation")]}},
        }

    responses: dict[str, Any] = {}
    status = str(doc.status_code if doc else 200)
    if doc and doc.content:
        responses[status] = {
            "description": "Success",
            "content": {
                media: _other_content(media, model, refs) for media, model in doc.content.items()
            },
        }
    elif doc and doc.stream:
        responses[status] = {
            "description": "Server-Sent Events",
            "content": _sse_content(event_ref),
        }
    elif doc is None and path in _PLAIN_MEDIA:
        responses[status] = {
            "description": "Success",
            "content": {_PLAIN_MEDIA[path]: {"schema": {"type": "string"}}},
        }
    else:
        schema = _schema_for(doc.response if doc else None, "serialization", refs)
        content: dict[str, Any] = {"application/json": {"schema": schema}}
        if _may_stream(doc):
            content.update(_sse_content(event_ref))
        responses[status] = {"description": "Success", "content": content}
    extra = dict(doc.responses) if doc else {}
    if _may_answer_unfinished(doc) and status == "200":
        extra.setdefault(202, doc.response)  # type: ignore[union-attr]
    for extra_status, annotation in extra.items():
        if annotation is None:
            responses[str(extra_status)] = {"description": "No Content"}
            continue
        responses[str(extra_status)] = {
            "description": ERROR_CODES.get(extra_status, "Accepted"),
            "content": {
                "application/json": {"schema": _schema_for(annotation, "serialization", refs)}
            },
        }
    errors = set(doc.errors if doc else ())
    if doc and (doc.body is not None or doc.query is not None):
        errors |= {400, 413, 415, 422} if doc.body is not None else {422}
    if path.startswith("/services/") or doc is not None:
        errors |= {503} if method == "POST" else set()
    if auth and path != "/healthz":
        errors.add(401)
    if path == "/readyz":
        errors.add(503)
    for code in sorted(errors):
        responses.setdefault(
            str(code),
            {
                "description": ERROR_CODES.get(code, "error"),
                "content": {"application/json": {"schema": error_ref}},
            },
        )
    operation["responses"] = responses
    return operation


def _tag(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "services":
        return f"service: {parts[1]}"
    return parts[0] if parts else "gateway"
