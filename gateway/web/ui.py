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
# Every file is revalidated (ETag -> 304), so after an upgrade a page never runs new HTML with
# old cached modules. The policy allows only this origin's own files (no inline script, no
# other hosts) and no framing, so a hostile page cannot overlay the inbox's answer forms.
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}


class _Assets(StaticFiles):
    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        return response


def ui_routes() -> list[BaseRoute]:
    async def page(request: Request) -> Response:
        return FileResponse(ASSETS / "index.html", headers=HEADERS)

    async def to_page(request: Request) -> Response:
        return RedirectResponse(PREFIX + "/")

    return [
        Route(PREFIX, to_page, include_in_schema=False),
        Route(PREFIX + "/", page, include_in_schema=False),
        Mount(PREFIX, app=_Assets(directory=ASSETS), name="ui-assets"),
    ]


def is_ui_path(path: str) -> bool:
    """The console's own files need no token: the page asks for one before calling the API."""
    return path == PREFIX or path.startswith(PREFIX + "/")
