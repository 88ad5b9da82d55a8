"""`GET /openapi.json` and `GET /docs`: Swagger UI 5 (it reads OpenAPI 3.1), served offline
from the files the `openapi-ui-bundles` package ships; no CDN is ever contacted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openapi_ui_bundles.swagger_ui import static_path as swagger_ui_path
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true}});
  </script>
</body>
</html>
"""


def docs_routes(title: str, document: Callable[[], dict[str, Any]]) -> list[BaseRoute]:
    cache: dict[str, Any] = {}

    async def openapi_json(request: Request) -> Response:
        if "doc" not in cache:
            cache["doc"] = document()
        return JSONResponse(cache["doc"])

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE.format(title=title))

    return [
        Route("/openapi.json", openapi_json),
        Route("/docs", docs_page),
        Mount("/docs/assets", app=StaticFiles(directory=swagger_ui_path), name="docs-assets"),
    ]
