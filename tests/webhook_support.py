"""A real webhook receiver for the tests, and a signature check written independently
of bulkjobs (plain hmac/hashlib/base64, as a client would write it)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import attrs
from aiohttp import web
from aiohttp.test_utils import TestClient

from bulkjobs import jsonutil
from bulkjobs.web.keys import ENGINE

HANG = "hang"


def random_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, from the specification, not from bulkjobs."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


@attrs.define
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # the receiver's loop.time()

    @property
    def json(self) -> Any:
        return jsonutil.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """Records every request; answers from a script of (status, headers) or HANG."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Received] = asyncio.Queue()
        self.log: list[Received] = []
        self.script: list[tuple[int, dict[str, str]] | str] = []
        self.always: tuple[int, dict[str, str]] | str = (200, {})
        self.release = asyncio.Event()
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        rec = Received(
            dict(request.headers), await request.read(), asyncio.get_running_loop().time()
        )
        self.log.append(rec)
        self.queue.put_nowait(rec)
        action = self.script.pop(0) if self.script else self.always
        if action == HANG:
            await self.release.wait()
            return web.Response(status=200)
        assert isinstance(action, tuple)
        return web.Response(status=action[0], headers=action[1])

    async def next(self, timeout_s: float = 10) -> Received:
        async with asyncio.timeout(timeout_s):
            return await self.queue.get()


async def start_receiver(aiohttp_server: Any) -> Receiver:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    receiver.url = str(server.make_url("/hook"))
    return receiver


async def wait_quiet(client: TestClient, timeout_s: float = 10) -> None:
    """Until the dispatcher has nothing in flight and nothing due (after the change that
    enqueues the message was committed, e.g. once the job is terminal)."""
    async with asyncio.timeout(timeout_s):
        await client.app[ENGINE].webhooks.wait_quiet()


async def deliveries(client: TestClient, job_id: str) -> dict[str, Any]:
    resp = await client.get(f"/bulk-jobs/{job_id}/webhook-deliveries")
    body = await resp.json()
    assert resp.status == 200, body
    return body  # type: ignore[no-any-return]
