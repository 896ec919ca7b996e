"""`GET /`: the dashboard, a single page served from the package (no build step, no CDN).

Its script uses relative URLs, so it works under any base path.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .. import paths
from ..errors import BulkJobsError
from .overview import overview

routes = web.RouteTableDef()
#: The dashboard's summary of the caller's own load (web/overview.py).
routes.get(paths.OVERVIEW)(overview)

STATIC_DIR = Path(__file__).parent / "static"
#: The only files served, with their media types (no path from the URL reaches the disk).
ASSETS: dict[str, str] = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


@routes.get("/")
async def dashboard(request: web.Request) -> web.FileResponse:
    """The dashboard page."""
    return _file("index.html", "text/html")


@routes.get("/dashboard/{name}")
async def dashboard_asset(request: web.Request) -> web.FileResponse:
    """The page's stylesheet, script and icon."""
    name = request.match_info["name"]
    if name not in ASSETS:
        raise BulkJobsError("not_found", f"No dashboard asset {name!r}.")
    return _file(name, ASSETS[name])


def _file(name: str, content_type: str) -> web.FileResponse:
    headers = {"Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-cache"}
    return web.FileResponse(STATIC_DIR / name, headers=headers)
