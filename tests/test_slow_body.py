"""Slowloris: a request body that stalls or drips gets 408 and its connection closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp.test_utils import TestClient

from tests.test_auth import ACME, KEYS

TIMEOUT_S = 0.5


async def open_post(client: TestClient, length: int) -> tuple[asyncio.StreamReader, Any]:
    """A raw connection that sent the headers of a POST announcing `length` bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    head = (
        "POST /bulk-jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ACME}\r\nContent-Length: {length}\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def read_until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """The response, and the seconds until the server closed the connection."""
    t0 = time.monotonic()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        data = head + await reader.readexactly(length)
        # then the server hangs up (a reset when our drip was left unread)
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
    return data, time.monotonic() - t0


def problem_of(data: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


async def test_a_stalled_body_gets_408_and_the_connection_closes(make_client: Any) -> None:
    client: TestClient = await make_client(api_keys=KEYS, body_timeout_s=TIMEOUT_S)
    reader, writer = await open_post(client, 100)  # ... and sends nothing more
    data, elapsed = await read_until_closed(reader)
    writer.close()
    status, headers, problem = problem_of(data)
    assert (status, problem["code"]) == (408, "request_timeout")
    assert headers["Connection"] == "close"
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.0, elapsed


async def drip_until_cancelled(writer: Any) -> None:
    """1 byte per 50 ms (20 B/s) until cancelled or the server hangs up."""
    try:
        for _ in range(99):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)  # the drip's pace, not a wait for a condition
    except ConnectionError:
        pass


async def test_a_body_dripping_below_the_minimum_rate_gets_408(make_client: Any) -> None:
    client: TestClient = await make_client(
        api_keys=KEYS, body_timeout_s=TIMEOUT_S, body_min_rate_bytes_s=1000
    )
    reader, writer = await open_post(client, 100)
    t0 = time.monotonic()
    drip = asyncio.create_task(drip_until_cancelled(writer))
    try:
        data, _ = await read_until_closed(reader)
    finally:
        drip.cancel()
        await asyncio.gather(drip, return_exceptions=True)
    elapsed = time.monotonic() - t0
    writer.close()
    status, _, problem = problem_of(data)
    assert (status, problem["code"]) == (408, "request_timeout")
    assert elapsed < TIMEOUT_S + 1.0, elapsed


async def test_a_body_at_the_minimum_rate_is_accepted(make_client: Any) -> None:
    client: TestClient = await make_client(
        api_keys=KEYS, body_timeout_s=TIMEOUT_S, body_min_rate_bytes_s=100
    )
    body = json.dumps({"operation": "echo", "items": [{"n": i} for i in range(10)]}).encode()
    reader, writer = await open_post(client, len(body))
    for i in range(0, len(body), 40):  # 40 bytes per 0.1 s: 400 B/s
        writer.write(body[i : i + 40])
        await asyncio.sleep(0.1)
    async with asyncio.timeout(5):
        status_line = await reader.readline()
    writer.close()
    assert b" 202 " in status_line, status_line
