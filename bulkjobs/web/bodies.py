"""Reading a request body against a deadline, so a slow client cannot hold a worker of
the server (slowloris).

A body gets `body_timeout_s` plus one second per `body_min_rate_bytes_s` bytes that
arrive: a client that stalls, or drips bytes slower than the minimum rate, gets `408
request_timeout` and the connection is closed. aiohttp has no public timeout for
request headers; put a reverse proxy in front for that (README, Security).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import BulkJobsError
from .keys import SETTINGS


async def read_body(request: web.Request) -> bytes:
    """The whole body, at most `max_body_bytes`, arriving at the minimum rate or better."""
    s = request.app[SETTINGS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + s.body_timeout_s
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                part = await request.content.readany()
        except TimeoutError:
            raise _give_up(request, size) from None
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > s.max_body_bytes:
            raise BulkJobsError(
                "payload_too_large", f"The body exceeds the limit of {s.max_body_bytes} bytes."
            )
        parts.append(part)
        deadline += len(part) / max(1, s.body_min_rate_bytes_s)


def _give_up(request: web.Request, received: int) -> BulkJobsError:
    """Stop reading this connection and close it once the 408 is sent.

    Reading is paused first, so nothing more is fed to the body we end here; ending it
    keeps aiohttp from lingering (up to 10 s) to drain what the client never sends.
    """
    if request.transport is not None:
        request.transport.pause_reading()
    request.content.feed_eof()
    request.protocol.close()
    s = request.app[SETTINGS]
    return BulkJobsError(
        "request_timeout",
        f"The request body did not arrive in time ({received} bytes received; allowed:"
        f" {s.body_timeout_s:g} s plus 1 s per {s.body_min_rate_bytes_s} bytes).",
        headers={"Connection": "close"},
    )
