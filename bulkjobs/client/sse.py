"""A small Server-Sent Events parser (the WHATWG event-stream format) over aiohttp.

aiohttp-sse only serves streams; reading one is a line loop, so it lives here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
from aiohttp import ClientResponse


@attrs.define
class RawEvent:
    """One dispatched message: `event` defaults to "message", `data` lines joined."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None


async def read_events(resp: ClientResponse) -> AsyncIterator[RawEvent]:
    """Yield each dispatched event until the stream ends; comments and `retry:` only
    blocks are consumed (a `retry:` value rides on the next event)."""
    data: list[str] = []
    msg = RawEvent()
    async for raw_line in resp.content:
        line = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
        if line:
            _apply(msg, data, line)
            continue
        if data:
            msg.data = "\n".join(data)
            yield msg
            msg, data = RawEvent(retry_ms=None), []


def _apply(msg: RawEvent, data: list[str], line: str) -> None:
    field, _, value = line.partition(":")
    value = value.removeprefix(" ")
    if field == "data":
        data.append(value)
    elif field == "event":
        msg.event = value
    elif field == "id" and "\0" not in value:
        msg.id = value
    elif field == "retry" and value.isdigit():
        msg.retry_ms = int(value)
