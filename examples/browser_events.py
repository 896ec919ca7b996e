"""Serve browser_events.html next to the bulkjobs API, on one origin.

A browser page may only call an API of its own origin (no CORS here), so this small
aiohttp app serves the page and forwards `/bulk-jobs...` to the bulkjobs server,
streaming responses (the event stream too). It adds the API key on the server side,
so the key never reaches the browser.

    make serve   # in another shell
    python examples/browser_events.py --port 8081   # then open http://127.0.0.1:8081/
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

PAGE = Path(__file__).with_name("browser_events.html")
FORWARDED = ("Content-Type", "Accept", "Last-Event-ID", "If-None-Match")
API = web.AppKey("api", str)
HTTP = web.AppKey("http", aiohttp.ClientSession)


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE)


async def forward(request: web.Request) -> web.StreamResponse:
    """Pass the request to the API and stream its answer back."""
    headers = {k: request.headers[k] for k in FORWARDED if k in request.headers}
    if key := os.environ.get("BULKJOBS_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    url = request.app[API] + request.rel_url.path_qs
    body = await request.read()
    async with request.app[HTTP].request(
        request.method, url, data=body or None, headers=headers
    ) as upstream:
        resp = web.StreamResponse(status=upstream.status)
        resp.content_type = upstream.content_type
        await resp.prepare(request)
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def _session(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        app[HTTP] = http
        yield


def create_app(api_url: str) -> web.Application:
    app = web.Application()
    app[API] = api_url.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_get("/", page)
    app.router.add_route("*", "/bulk-jobs{tail:.*}", forward)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--api", default=os.environ.get("BULKJOBS_URL", "http://127.0.0.1:8080"))
    args = parser.parse_args()
    web.run_app(create_app(args.api), host="127.0.0.1", port=args.port)
