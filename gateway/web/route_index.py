"""Find a request's route among the few that could match it, not by trying every route.

Starlette's Router tries each route's regex in order until one matches. The control plane has
~30 routes, so `GET /control_plane/tasks/{id}/result` tried 9 of them (after 5 at the top
level): a task submitted and long-polled spent 3% of its instructions finding its routes
(bench.instructions, 4.12 M -> 3.98 M with this and the top level's order in gateway.app).

A route whose path starts with a literal segment (`/tasks/...`) can only match a path with that
first segment, and one whose parameters never span a `/` only a path with its number of
segments. `IndexedRouter` tries, in their order, only the routes left by those two facts, and
takes the first full match. That is the route the full walk would take: every route it skips
could not have matched. Anything else (a method not allowed, the trailing-slash redirect, 404, a
websocket, the lifespan) goes through Router's own walk unchanged.

Used where a router has many routes (the control plane). A router of a few routes tried in a
good order (the top level: services first, then the control plane) walks them faster than it
would look them up.
"""

from __future__ import annotations

from starlette._utils import get_route_path
from starlette.convertors import FloatConvertor, IntegerConvertor, StringConvertor, UUIDConvertor
from starlette.routing import BaseRoute, Match, Mount, Route, Router, WebSocketRoute
from starlette.types import Receive, Scope, Send

# Convertors whose match never holds a "/" (a `path` one, or one registered by an app, may).
_ONE_SEGMENT = (StringConvertor, IntegerConvertor, FloatConvertor, UUIDConvertor)

Candidates = tuple[tuple[BaseRoute, int | None], ...]  # (route, segments it needs, None: any)


def route_shape(route: BaseRoute) -> tuple[str | None, int | None]:
    """(the literal first segment a path needs to match `route`, None if any will do;
    the number of segments it needs, None if it varies)."""
    if isinstance(route, Mount):
        path = route.path
        if not path.startswith("/"):  # a root mount: everything
            return None, None
        first = path[1:].split("/", 1)[0]
        return (None if "{" in first else first), None
    if not isinstance(route, (Route, WebSocketRoute)) or not route.path.startswith("/"):
        return None, None
    segments = route.path[1:].split("/")
    first = None if "{" in segments[0] else segments[0]
    fixed = all(isinstance(c, _ONE_SEGMENT) for c in route.param_convertors.values())
    return first, (len(segments) if fixed else None)


class RouteIndex:
    """The candidates of each literal first segment, built from a list of routes."""

    __slots__ = ("by_first", "anywhere", "routes", "count")

    def __init__(self, routes: list[BaseRoute]) -> None:
        shapes = [(route, *route_shape(route)) for route in routes]
        firsts = {first for _, first, _ in shapes if first is not None}
        self.by_first: dict[str, Candidates] = {
            name: tuple((r, n) for r, first, n in shapes if first is None or first == name)
            for name in firsts
        }
        self.anywhere: Candidates = tuple((r, n) for r, first, n in shapes if first is None)
        self.routes, self.count = routes, len(routes)  # what it was built from

    def candidates(self, route_path: str) -> tuple[Candidates, int]:
        rest = route_path[1:]
        return self.by_first.get(rest.split("/", 1)[0], self.anywhere), rest.count("/") + 1


class IndexedRouter(Router):
    """A Router that tries only the routes that could match an HTTP request (see the module)."""

    _index: RouteIndex | None = None

    def route_index(self) -> RouteIndex:
        index = self._index
        # Rebuilt if routes were added or the list replaced after the first request.
        if index is None or index.routes is not self.routes or index.count != len(self.routes):
            index = self._index = RouteIndex(self.routes)
        return index

    def find(self, scope: Scope) -> tuple[BaseRoute, Scope] | None:
        """The first route that fully matches, tried among the candidates only."""
        candidates, segments = self.route_index().candidates(get_route_path(scope))
        for route, needs in candidates:
            if needs is not None and needs != segments:
                continue
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return route, child_scope
        return None

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.find(scope) if scope["type"] == "http" else None
        if found is None:  # 405, redirect, 404, websocket, lifespan: Router's own walk
            await super().app(scope, receive, send)
            return
        route, child_scope = found
        if "router" not in scope:
            scope["router"] = self
        scope["route"] = route
        scope.update(child_scope)
        await route.handle(scope, receive, send)


def indexed_mount(path: str, routes: list[BaseRoute], name: str | None = None) -> Mount:
    """`Mount(path, routes=routes, name=name)` whose routes are found through an index."""
    return Mount(path, app=IndexedRouter(routes=routes), name=name)
