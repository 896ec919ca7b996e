"""Security headers on every response the application prepares.

All responses: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and a
`Server` header without a version. HTML (the dashboard, the error pages) gets a
Content-Security-Policy that allows only the page's own script and stylesheet.
Responses to authenticated requests are `Cache-Control: private`, so a shared cache
never hands one tenant's answer to another.
"""

from __future__ import annotations

from aiohttp import web

from .keys import AUTHENTICATED

SERVER = "bulkjobs"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Server": SERVER,
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: runs for every response, errors and streams too."""
    response.headers.update(_ALWAYS)
    if response.headers.get("Content-Type", "").startswith("text/html"):
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    if request.get(AUTHENTICATED):
        cache = response.headers.get("Cache-Control")
        if cache is None:
            response.headers["Cache-Control"] = "private"
        elif "private" not in cache and "no-store" not in cache:
            response.headers["Cache-Control"] = f"private, {cache}"
