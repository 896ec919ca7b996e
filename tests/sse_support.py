"""A small Server-Sent Events reader for the tests (real parsing of the wire format)."""

from __future__ import annotations

from typing import Any

import attrs
from aiohttp import ClientResponse

from bulkjobs import jsonutil


@attrs.define
class Message:
    """One dispatched event, or a comment / retry-only block."""

    id: int | None = None
    event: str | None = None
    data: Any = None
    retry_ms: int | None = None
    comment: str | None = None


async def read_message(resp: ClientResponse) -> Message | None:
    """The next block up to a blank line; None at the end of the stream."""
    msg = Message()
    seen = False
    while line := await resp.content.readline():
        text = line.decode().rstrip("\r\n")
        if text == "":
            if seen:
                return msg
            continue
        seen = True
        _apply(msg, text)
    return msg if seen else None


def _apply(msg: Message, text: str) -> None:
    field, _, value = text.partition(":")
    value = value.removeprefix(" ")
    if field == "":
        msg.comment = value
    elif field == "id":
        msg.id = int(value)
    elif field == "event":
        msg.event = value
    elif field == "data":
        msg.data = jsonutil.loads(value)
    elif field == "retry":
        msg.retry_ms = int(value)


async def read_events(resp: ClientResponse) -> list[Message]:
    """Every event until the server closes the stream (comments and retry skipped)."""
    events = []
    while (msg := await read_message(resp)) is not None:
        if msg.event is not None:
            events.append(msg)
    return events


async def next_event(resp: ClientResponse) -> Message:
    """The next dispatched event (skipping retry and heartbeat blocks)."""
    while (msg := await read_message(resp)) is not None:
        if msg.event is not None:
            return msg
    raise AssertionError("the stream ended")
