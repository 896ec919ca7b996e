"""The API describes itself: `GET /openapi.json` and the problem catalog under `/errors`,
where every problem's `type` URI resolves to a page about that code."""

from __future__ import annotations

import html

from aiohttp import web

from .. import jsonutil
from ..errors import CATALOG, ITEM_ERROR_CODES, BulkJobsError, ProblemType
from .keys import ENGINE, SETTINGS
from .openapi import build_document, mounted_routes
from .results import media_ranges

routes = web.RouteTableDef()


def _json(body: object) -> web.Response:
    return web.Response(body=jsonutil.dumps(body), content_type="application/json")


@routes.get("/openapi.json")
async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this app."""
    app = request.app
    mounted = mounted_routes(app.router.routes(), app[SETTINGS].base_path)
    return _json(build_document(app[SETTINGS], app[ENGINE].registry, mounted))


@routes.get("/errors")
async def list_error_types(request: web.Request) -> web.Response:
    """Every problem code, plus the codes the framework gives failed items."""
    base = request.app[SETTINGS].base_path
    data = [error_type_json(p, base) for p in CATALOG.values()]
    return _json({"data": data, "item_error_codes": ITEM_ERROR_CODES})


@routes.get("/errors/{code}")
async def get_error_type(request: web.Request) -> web.Response:
    """A human page about one problem code (JSON when the client prefers it)."""
    code = request.match_info["code"]
    ptype = CATALOG.get(code)
    if ptype is None:
        raise BulkJobsError("not_found", f"No problem type {code[:100]!r}.")
    base = request.app[SETTINGS].base_path
    if _wants_json(request.headers.get("Accept", "")):
        return _json(error_type_json(ptype, base))
    return web.Response(text=error_page(ptype, base), content_type="text/html")


def _wants_json(accept: str) -> bool:
    best = sorted(
        (("json" in m, q) for m, q in media_ranges(accept) if "json" in m or "html" in m),
        key=lambda r: -r[1],
    )
    return bool(best) and best[0][0] and best[0][1] > 0


def error_type_json(p: ProblemType, base: str) -> dict[str, object]:
    return {
        "type": f"{base}/errors/{p.code}",
        "code": p.code,
        "status": p.status,
        "title": p.title,
        "description": p.description,
    }


def error_page(p: ProblemType, base: str) -> str:
    e = html.escape
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>{e(p.code)} — bulkjobs</title>"
        f"<h1>{e(p.title)}</h1>"
        f"<p><code>{e(p.code)}</code> · HTTP {p.status}</p>"
        f"<p>{e(p.description)}</p>"
        f'<p><a href="{e(base)}/errors">All problem types</a></p></html>'
    )
