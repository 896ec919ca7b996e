"""The poll benchmark's reference: a hello-world aiohttp app, polled the same way.

    python benchmarks/hello_app.py PORT

GET /hello answers a JSON body of the size of a job resource with an ETag that moves
every 200 ms (like a running job's), 304 when If-None-Match still matches, and
`Retry-After: 1`. Nothing else runs on its loop: the floor a poll can reach here.
"""

from __future__ import annotations

import sys
import time

import orjson
from aiohttp import web

BODY = {"id": "job_hello", "status": "running", "padding": "x" * 600}


async def hello(request: web.Request) -> web.Response:
    tag = f'"hello-{int(time.monotonic() * 5)}"'
    headers = {"ETag": tag, "Cache-Control": "no-cache", "Retry-After": "1"}
    if request.headers.get("If-None-Match") == tag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=orjson.dumps(BODY), content_type="application/json", headers=headers)


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
