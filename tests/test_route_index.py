"""Routes found through the index are the routes Starlette's full walk finds, for every path."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Match, Mount, Route

from gateway.web.route_index import IndexedRouter, route_shape
from tests.conftest import gateway_client

pytestmark = pytest.mark.anyio

CFG: dict[str, Any] = {
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "other": {"type": "workflow", "source": "examples.echo:workflow"},
    }
}


class _Slashy(Convertor):  # an app's own convertor may match a "/"
    regex = "[a-z/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("slashy", _Slashy())


def _ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


ODD_ROUTES: list[BaseRoute] = [
    Route("/", _ok),
    Route("/files/{rest:path}", _ok),
    Route("/{tenant}/home", _ok),
    Route("/pre{fix}/x", _ok),
    Route("/tree/{branch:slashy}/leaf", _ok),
    Route("/n/{id:int}", _ok, methods=["POST"]),
    Route("/n/{id:int}", _ok, methods=["GET"]),
    Route("/n/{name}", _ok),
    Mount("/m", routes=[Route("/a", _ok)]),
    Route("/m", _ok),
    Mount("", routes=[Route("/caught/{x}", _ok)]),
]


def _scope(method: str, path: str, root_path: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": root_path + path,
        "root_path": root_path,
        "headers": [],
        "query_string": b"",
    }


def _walk(routes: list[BaseRoute], scope: dict[str, Any]) -> BaseRoute | None:
    """Starlette's rule: the first route that fully matches."""
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            return route
    return None


def _paths(routes: list[BaseRoute]) -> list[str]:
    """Each route's path with sample values, and near misses of it."""
    found = {"", "/", "//", "/nowhere", "/NOWHERE/x", "/a/b/c/d/e", "/%2F", "/ünï/cödé"}
    for route in routes:
        path = getattr(route, "path", "")
        for value in ("abc", "12", "a/b", ""):
            filled = path
            while "{" in filled:
                start, end = filled.index("{"), filled.index("}")
                filled = filled[:start] + value + filled[end + 1 :]
            found.update({filled, filled + "/", filled + "/x", filled.rstrip("/"), filled.upper()})
            found.add(filled.rsplit("/", 1)[0])
    return sorted(found)


def _assert_same_as_walk(routes: list[BaseRoute], root_path: str = "") -> int:
    router = IndexedRouter(routes=routes)
    checked = 0
    for method, path in itertools.product(("GET", "POST", "DELETE"), _paths(routes)):
        scope = _scope(method, path, root_path)
        found = router.find(dict(scope))
        assert (found[0] if found else None) is _walk(routes, dict(scope)), (method, path)
        checked += 1
    return checked


def test_odd_routes_are_found_as_the_full_walk_finds_them() -> None:
    assert _assert_same_as_walk(ODD_ROUTES) > 100
    assert _assert_same_as_walk(ODD_ROUTES, root_path="/behind/a/proxy") > 100


def test_shapes() -> None:
    assert route_shape(Route("/tasks/{task_id}/result", _ok)) == ("tasks", 3)
    assert route_shape(Route("/files/{rest:path}", _ok)) == ("files", None)
    assert route_shape(Route("/tree/{b:slashy}/leaf", _ok)) == ("tree", None)
    assert route_shape(Route("/{tenant}/home", _ok)) == (None, 2)
    assert route_shape(Mount("/control_plane", routes=[])) == ("control_plane", None)
    assert route_shape(Mount("", routes=[])) == (None, None)


async def test_the_gateways_routes_are_found_as_the_full_walk_finds_them() -> None:
    apps: list = []
    async with gateway_client(CFG, app_out=apps):
        top = apps[0].router
        (plane,) = [r for r in top.routes if getattr(r, "path", "") == "/control_plane"]
        assert isinstance(plane.app, IndexedRouter)
        assert _assert_same_as_walk(plane.routes, root_path="/control_plane") > 300


async def test_a_long_poll_tries_a_few_routes_not_every_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried: list[str] = []
    route_matches, mount_matches = Route.matches, Mount.matches

    def counting_route(self: Route, scope: Any) -> Any:
        tried.append(self.path)
        return route_matches(self, scope)

    def counting_mount(self: Mount, scope: Any) -> Any:
        tried.append(self.path)
        return mount_matches(self, scope)

    async with gateway_client(CFG) as client:
        task = await client.post(
            "/control_plane/tasks", json={"service": "echo", "input": {"message": "hi"}}
        )
        task_id = task.json()["task_id"]
        monkeypatch.setattr(Route, "matches", counting_route)
        monkeypatch.setattr(Mount, "matches", counting_mount)
        answer = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 5})
        run = await client.post("/services/other/run", json={"kwargs": {"message": "x"}})
    assert answer.json()["result"] == "hi" and run.json()["result"] == "x"
    # the service mounts (first at the top level), then no control-plane route of another
    # first segment or length before the result's; a service's run tries no other route
    assert tried == [
        "/services/echo",
        "/services/other",
        "/control_plane",
        "/tasks/{task_id}/result",
        "/services/echo",
        "/services/other",
        "/run",
    ]


async def test_method_not_allowed_redirects_and_404_are_still_starlettes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with gateway_client(CFG) as client:
        wrong_method = await client.delete("/control_plane/tasks")
        missing = await client.get("/control_plane/no-such-thing")
        slash = await client.get("/control_plane/tasks/", follow_redirects=False)
    assert wrong_method.status_code == 405
    assert missing.status_code == 404
    assert slash.status_code in (307, 404)  # as Router answers it, whichever that is
