"""Issue 13 item 1: a hostile webhook receiver cannot put the dispatcher into a hot loop.

Whatever the receiver answers (odd `Retry-After` values, garbage, resets, a slow drip,
a 100 MB body), every attempt is recorded and the next one follows the schedule.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from bulkjobs.service.webhooks import dispatcher as dispatcher_module
from bulkjobs.service.webhooks.policy import MAX_RETRY_AFTER_S, retry_after_s
from tests.support import submit, wait_terminal
from tests.webhook_support import deliveries, random_secret, start_receiver, wait_quiet

SCHEDULE_S = 0.2
RETRIES = 3
SETTINGS = {
    "webhook_secrets": random_secret(),
    "webhook_allow_private": True,
    "webhook_retry_schedule_s": ",".join([str(SCHEDULE_S)] * RETRIES),
    "webhook_timeout_s": 0.5,
}
HOSTILE_RETRY_AFTER = [
    "²",
    "١٢",  # Arabic-Indic digits: isdigit() is true, float() accepts them
    "1e3",
    "-5",
    "Wed, 21 Oct 2015 07:28:00 +9999999999999",  # OverflowError in email.utils
    "Fri, 31 Dec 9999 23:59:59 -9999",
    "Mon, 99 Foo 2020 99:99:99 GMT",
    "x" * 4000,
]


@pytest.mark.parametrize("value", [*HOSTILE_RETRY_AFTER, "9" * 5000, "\x00", "", None])
def test_retry_after_never_raises(value: str | None) -> None:
    got = retry_after_s(value, datetime.now(UTC))
    assert got is None or got >= 0


def test_retry_after_reads_ascii_delta_seconds_and_dates() -> None:
    now = datetime(2015, 10, 21, 7, 0, tzinfo=UTC)
    assert retry_after_s(" 120 ", now) == 120.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now) == 28 * 60
    assert retry_after_s("9" * 5000, now) == MAX_RETRY_AFTER_S  # no 5,000-digit int()
    assert retry_after_s("²", now) is None


class Hits(list[float]):
    """Arrival times of attempts; `wait_for(n)` returns once n have arrived."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def hit(self) -> None:
        self.append(asyncio.get_running_loop().time())
        self._changed.set()

    async def wait_for(self, n: int, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self) < n:
                self._changed.clear()
                await self._changed.wait()


async def _finished_message(client: Any, job_id: str, attempts: int) -> dict[str, Any]:
    await wait_quiet(client, timeout_s=5)
    [msg] = (await deliveries(client, job_id))["data"]
    assert msg["attempt_count"] == attempts, msg
    return msg  # type: ignore[no-any-return]


def _assert_follows_schedule(times: list[float]) -> None:
    assert len(times) == RETRIES + 1, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= SCHEDULE_S * 0.75 for gap in gaps), gaps  # jitter is ±20 %


@pytest.mark.parametrize("value", HOSTILE_RETRY_AFTER)
async def test_odd_retry_after_follows_the_schedule(
    make_client: Any, aiohttp_server: Any, value: str
) -> None:
    receiver = await start_receiver(aiohttp_server)
    receiver.always = (503, {"Retry-After": value})
    client = await make_client(**SETTINGS)
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    await wait_terminal(client, job["id"])
    for _ in range(RETRIES + 1):
        await receiver.next(timeout_s=5)
    msg = await _finished_message(client, job["id"], RETRIES + 1)
    assert msg["status"] == "failed"
    assert [a["status_code"] for a in msg["attempts"]] == [503] * (RETRIES + 1)
    _assert_follows_schedule([r.at for r in receiver.log])


async def test_huge_retry_after_waits_the_maximum(make_client: Any, aiohttp_server: Any) -> None:
    receiver = await start_receiver(aiohttp_server)
    receiver.always = (503, {"Retry-After": "9" * 5000})
    client = await make_client(**SETTINGS)
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    await wait_terminal(client, job["id"])
    await receiver.next(timeout_s=5)
    msg = await _finished_message(client, job["id"], 1)
    assert msg["status"] == "pending"
    due = datetime.fromisoformat(msg["next_attempt_at"].replace("Z", "+00:00"))
    assert (due - datetime.now(UTC)).total_seconds() > MAX_RETRY_AFTER_S - 60
    assert len(receiver.log) == 1


# -- a raw TCP peer, for answers aiohttp's server would never send -------------------

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawPeer:
    """Accepts connections on 127.0.0.1 and answers each one with `behaviour`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.times = Hits()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.times.hit()
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self.behaviour(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def garbage_status_line(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
    await w.drain()


async def bad_status_code(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write("HTTP/1.1 ²00 OK\r\nContent-Length: 0\r\n\r\n".encode())
    await w.drain()


async def reset(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def slow_drip(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        w.write(bytes([byte]))
        await w.drain()
        await asyncio.sleep(0.1)  # the receiver's pace, not a wait for the code under test


async def huge_body(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    size = 100 * 1024 * 1024
    w.write(f"HTTP/1.1 503 Busy\r\nRetry-After: ²\r\nContent-Length: {size}\r\n\r\n".encode())
    chunk = b"x" * (1024 * 1024)
    for _ in range(100):
        w.write(chunk)
        await w.drain()


@pytest.mark.parametrize(
    "behaviour", [garbage_status_line, bad_status_code, reset, slow_drip, huge_body]
)
async def test_hostile_peer_follows_the_schedule(make_client: Any, behaviour: Behaviour) -> None:
    peer = RawPeer(behaviour)
    url = await peer.start()
    try:
        client = await make_client(**SETTINGS)
        job = await submit(client, "echo", [{"n": 1}], webhook={"url": url})
        await wait_terminal(client, job["id"])
        await peer.times.wait_for(RETRIES + 1)
        msg = await _finished_message(client, job["id"], RETRIES + 1)
        assert msg["status"] == "failed"
        assert all(a["status_code"] is None or a["status_code"] >= 500 for a in msg["attempts"])
        _assert_follows_schedule(peer.times)
    finally:
        await peer.stop()


async def test_a_crashing_attempt_is_recorded_and_retried_on_schedule(
    make_client: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the delivery path is an attempt with an error, never a message left due."""
    calls = Hits()

    async def broken_check(url: str, allow_private: bool) -> None:
        calls.hit()
        raise RuntimeError("a bug")

    monkeypatch.setattr(dispatcher_module, "check_target", broken_check)
    receiver = await start_receiver(aiohttp_server)
    client = await make_client(**SETTINGS)
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    await wait_terminal(client, job["id"])
    await calls.wait_for(RETRIES + 1)
    msg = await _finished_message(client, job["id"], RETRIES + 1)
    assert msg["status"] == "failed"
    assert all(a["error"].startswith("internal_error") for a in msg["attempts"])
    _assert_follows_schedule(calls)
    assert not receiver.log


async def test_receiver_app_with_big_body_is_delivered_once(
    make_client: Any, aiohttp_server: Any
) -> None:
    """A 200 with a 100 MB body counts as delivered; the body is never read."""
    hits = Hits()

    async def handle(request: web.Request) -> web.StreamResponse:
        hits.hit()
        await request.read()
        resp = web.StreamResponse(headers={"Content-Length": str(100 * 1024 * 1024)})
        await resp.prepare(request)
        chunk = b"y" * (1024 * 1024)
        try:
            for _ in range(100):
                await resp.write(chunk)
        except ConnectionError:
            pass
        return resp

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app)
    client = await make_client(**SETTINGS)
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": str(server.make_url("/hook"))})
    await wait_terminal(client, job["id"])
    await hits.wait_for(1)
    msg = await _finished_message(client, job["id"], 1)
    assert msg["status"] == "delivered"
    assert len(hits) == 1
