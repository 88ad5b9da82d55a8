"""`GET /openapi.json` (OpenAPI 3.1 generated from the route models) and `GET /docs` (offline)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from pydantic import BaseModel
from starlette.routing import Mount, Route

from gateway import __version__
from gateway.messages import TaskEvent
from gateway.web.errors import ErrorBody
from tests.conftest import gateway_client
from tests.fixtures_faults import demo_services

pytestmark = pytest.mark.anyio

CONFIG: dict[str, Any] = {
    "name": "openapi-test",
    "default_service": "echo",
    "services": {
        **demo_services(),
        # A custom service type under its own prefix is documented with no extra work.
        "mute": {
            "type": "custom",
            "source": "tests.fixtures_faults:MuteService",
            "prefix": "/custom/mute",
        },
    },
}
PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?}")


def app_routes(routes, prefix: str = "") -> list[tuple[str, str, Route]]:
    """(METHOD, path template, route) of every HTTP route the app serves, mounts included."""
    found = []
    for route in routes:
        if isinstance(route, Mount):
            if route.path in ("/docs/assets", "/ui"):  # static files, not API routes
                continue
            found += app_routes(route.routes, prefix + route.path)
        elif isinstance(route, Route) and route.include_in_schema:  # the console's page is not
            path = PARAM.sub(lambda m: "{" + m.group(1) + "}", prefix + route.path)
            found += [(m, path, route) for m in sorted(route.methods or {"GET"}) if m != "HEAD"]
    return found


async def load() -> tuple[dict[str, Any], Any]:
    apps: list = []
    async with gateway_client(CONFIG, app_out=apps) as client:
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        services = (await client.get("/control_plane/services")).json()
        again = (await client.get("/openapi.json")).json()
    assert again == response.json()
    return response.json(), (apps[0], services)


def resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs_in(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs_in(value)]
    return []


def component_of(schema: dict[str, Any]) -> str:
    ref = schema["$ref"]
    assert ref.startswith("#/components/schemas/"), ref
    return ref.rsplit("/", 1)[1]


async def test_the_document_is_openapi_3_1_and_loads_in_schemathesis() -> None:
    document, _ = await load()
    assert document["openapi"] == "3.1.0"
    info = document["info"]
    assert (info["title"], info["version"]) == ("openapi-test", __version__)
    assert "**Lists**" in info["description"] and "**Errors**" in info["description"]
    operations = [(p, m) for p, ops in document["paths"].items() for m in ops]
    loaded = schemathesis.openapi.from_dict(document)
    assert len(list(loaded.get_all_operations())) == len(operations)
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    # Every reference resolves, and every component is a valid JSON Schema (2020-12).
    for ref in refs_in(document):
        resolve(document, ref)
    for schema in document["components"]["schemas"].values():
        jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


async def test_every_route_of_the_control_plane_and_every_service_is_documented() -> None:
    document, (app, services) = await load()
    served = {(method, path) for method, path, _ in app_routes(app.routes)}
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert documented == served
    assert any(p.startswith("/control_plane/") for _, p in served)
    # Every endpoint each service announces for discovery is in the document.
    assert set(services) == set(CONFIG["services"])
    for name, definition in services.items():
        assert definition["endpoints"], name
        for endpoint in definition["endpoints"]:
            method, path = endpoint.split(" ", 1)
            assert (method, path) in documented, (name, endpoint)
    assert ("POST", "/custom/mute/process_message") in documented
    for path, operations in document["paths"].items():
        for operation in operations.values():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(PARAM.findall(path)), (path, declared)
            assert operation["summary"] and operation["tags"]


async def test_paths_are_listed_in_the_order_the_app_lists_its_routes() -> None:
    # Services, then the gateway's own (`/`, `/healthz`, `/readyz`, `/metrics`), then the
    # control plane: the order routing tries them in is not the order they are documented in.
    document, _ = await load()
    paths = list(document["paths"])
    own = [paths.index(p) for p in ("/", "/healthz", "/readyz", "/metrics")]
    control_plane = [i for i, p in enumerate(paths) if p.startswith("/control_plane/")]
    services = [i for i, p in enumerate(paths) if p.startswith(("/services/", "/custom/"))]
    assert own == sorted(own)
    assert max(services) < min(own) and max(own) < min(control_plane)


async def test_request_and_response_schemas_come_from_the_pydantic_models() -> None:
    document, (app, _) = await load()
    components = document["components"]["schemas"]
    checked_bodies = checked_queries = 0
    for method, path, route in app_routes(app.routes):
        doc = getattr(route, "doc", None)
        operation = document["paths"][path][method.lower()]
        if doc is None:
            continue
        if doc.body is not None:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            name = component_of(schema)
            assert name == doc.body.__name__
            model_schema = doc.body.model_json_schema()
            assert set(components[name].get("properties", {})) == set(
                model_schema.get("properties", {})
            )
            assert set(components[name].get("required", [])) == set(
                model_schema.get("required", [])
            )
            for status in ("400", "413", "415", "422"):
                assert status in operation["responses"], (method, path, status)
            checked_bodies += 1
        else:
            assert "requestBody" not in operation
        if doc.query is not None:
            names = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
            assert names == set(doc.query.model_fields), (method, path)
            checked_queries += 1
        if isinstance(doc.response, type) and issubclass(doc.response, BaseModel):
            success = operation["responses"][str(doc.status_code)]
            schema = success["content"]["application/json"]["schema"]
            assert component_of(schema) == doc.response.__name__
        for status, response in operation["responses"].items():
            if int(status) in doc.responses:  # a documented non-error body (another protocol's)
                continue
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert component_of(schema) == "ErrorBody", (method, path, status)
    assert checked_bodies >= 10 and checked_queries >= 4
    assert components["ErrorBody"]["required"] == list(ErrorBody.model_json_schema()["required"])

    paths = document["paths"]

    def ok_schema(path: str, method: str, status: str) -> str:
        content = paths[path][method]["responses"][status]["content"]["application/json"]
        return component_of(content["schema"])

    assert ok_schema("/control_plane/tasks", "post", "202") == "TaskAccepted"
    # one task shape everywhere a task is answered
    assert ok_schema("/control_plane/tasks/{task_id}", "get", "200") == "Task"
    assert ok_schema("/control_plane/tasks/{task_id}/result", "get", "202") == "Task"
    assert ok_schema("/control_plane/tasks/{task_id}/cancel", "post", "200") == "Task"
    assert ok_schema("/control_plane/sessions", "post", "201") == "SessionCreated"
    assert ok_schema("/services/echo/run", "post", "200") == "Task"
    assert ok_schema("/services/echo/run", "post", "202") == "Task"  # wait ran out
    # one page shape for every list
    for path, page in [
        ("/control_plane/tasks", "TaskPage"),
        ("/control_plane/sessions/list", "SessionPage"),
    ]:
        assert ok_schema(path, "get", "200") == page
        assert set(components[page]["required"]) == {"items", "total"}
        names = {p["name"] for p in paths[path]["get"]["parameters"]}
        assert {"limit", "offset", "sort", "order", "after"} <= names
        assert "next" in components[page]["properties"]  # the cursor of the following page
    assert set(components["ErrorBody"]["properties"]) == {"error", "detail", "errors"}
    assert components["ErrorBody"]["properties"]["detail"]["type"] == "string"
    assert "TaskCreate" in components and "WorkflowRunRequest" in components
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert "503" in paths["/control_plane/tasks"]["post"]["responses"]


async def test_streams_document_their_events() -> None:
    document, _ = await load()
    event_schema = TaskEvent.model_json_schema()
    for path, method in (
        ("/control_plane/tasks/{task_id}/events", "get"),
        ("/services/echo/run", "post"),  # with ?stream=true
    ):
        content = document["paths"][path][method]["responses"]["200"]["content"]
        stream = content["text/event-stream"]["schema"]
        assert stream["required"] == ["id", "event", "data"]
        kinds = set(stream["properties"]["event"]["enum"])
        assert kinds == {"status", "event", "result", "error", "gap", "human"}
        params = document["paths"][path][method]["parameters"]
        assert {"name": "after", "in": "query"}.items() <= next(
            p for p in params if p["name"] == "after"
        ).items()
        assert any(p["name"] == "Last-Event-ID" and p["in"] == "header" for p in params)
        data = stream["properties"]["data"]
        assert data["contentMediaType"] == "application/json"
        name = component_of(data["contentSchema"])
        assert name == "TaskEvent"
        assert set(document["components"]["schemas"][name]["properties"]) == set(
            event_schema["properties"]
        )
    feed = document["paths"]["/control_plane/events"]["get"]
    assert "text/event-stream" in feed["responses"]["200"]["content"]
    assert {p["name"] for p in feed["parameters"]} == {"after", "service", "Last-Event-ID"}
    plain = document["paths"]
    assert "text/html" in plain["/docs"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in plain["/metrics"]["get"]["responses"]["200"]["content"]


async def test_the_docs_page_works_offline_from_packaged_assets() -> None:
    async with gateway_client(CONFIG) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        assert "openapi-test" in html and '"/openapi.json"' in html
        # Nothing is fetched from elsewhere: no absolute or protocol-relative URL at all.
        assert not re.search(r"(https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", html), html
        links = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert len(links) >= 2
        kinds = set()
        for link in links:
            assert link.startswith("/docs/assets/"), link
            asset = await client.get(link)
            assert asset.status_code == 200, link
            assert len(asset.content) > 10_000, link
            kinds.add(asset.headers["content-type"].split(";")[0])
        assert kinds == {"text/css", "text/javascript"} or kinds == {
            "text/css",
            "application/javascript",
        }
        bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert "SwaggerUIBundle" in bundle.text
