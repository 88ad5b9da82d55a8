"""`/ui`: the web console (an inbox for human tasks, live runs, a run form), served offline from
the package. The page is static; everything it shows comes from the public API and its streams,
with the same auth as any client."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parent / "ui"
PREFIX = "/ui"


def ui_routes() -> list[BaseRoute]:
    async def page(request: Request) -> Response:
        return FileResponse(ASSETS / "index.html", headers={"Cache-Control": "no-cache"})

    async def to_page(request: Request) -> Response:
        return RedirectResponse(PREFIX + "/")

    return [
        Route(PREFIX, to_page, include_in_schema=False),
        Route(PREFIX + "/", page, include_in_schema=False),
        Mount(PREFIX, app=StaticFiles(directory=ASSETS), name="ui-assets"),
    ]


def is_ui_path(path: str) -> bool:
    """The console's own files need no token: the page asks for one before calling the API."""
    return path == PREFIX or path.startswith(PREFIX + "/")
