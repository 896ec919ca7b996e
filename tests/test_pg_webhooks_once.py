"""Three `bulkjobs serve` processes on one PostgreSQL database share one webhook outbox:
each message is sent once per attempt, never once per process (issue 11).

Every process's dispatcher scans the whole outbox whenever its own commits wake it, so
without the take (`WebhookStore.take`) a message still in flight on one process is due
on the others and goes out again; the slow receiver keeps messages in flight.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.pg_servers import PG_ARGS, LoggedServer
from tests.webhook_support import random_secret, verify

pytestmark = pytest.mark.slow

JOBS = 30


class SlowReceiver:
    """Answers the first attempt of every other message 503 (so it is retried), every
    other attempt 200, after `delay_s`; records every request's webhook-id."""

    def __init__(self, secret: str, delay_s: float) -> None:
        self.secret = secret
        self.delay_s = delay_s
        self.seen: collections.Counter[str] = collections.Counter()
        self.refused: set[str] = set()  # messages whose first attempt got a 503
        self.bad_signatures = 0
        self.done = asyncio.Event()  # every message answered 200 once

    def expected(self, msg_id: str) -> int:
        return 2 if msg_id in self.refused else 1

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        self.bad_signatures += not verify(self.secret, request.headers, body)
        self.seen[msg_id] += 1
        if self.seen[msg_id] == 1 and len(self.seen) % 2:
            self.refused.add(msg_id)
        if len(self.seen) == JOBS and all(n >= self.expected(k) for k, n in self.seen.items()):
            self.done.set()
        await asyncio.sleep(self.delay_s)
        return web.Response(
            status=503 if msg_id in self.refused and self.seen[msg_id] == 1 else 200
        )


async def test_each_webhook_attempt_is_sent_by_one_process(
    pg_url: str, tmp_path: Path, aiohttp_server: Any
) -> None:
    secret = random_secret()
    receiver = SlowReceiver(secret, delay_s=0.3)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    hook = str((await aiohttp_server(app)).make_url("/hook"))
    env = {"BULKJOBS_WEBHOOK_SECRETS": secret}
    args = (*PG_ARGS, "--webhook-allow-private", "true", "--webhook-retry-schedule-s", "0.5")
    args = (*args, "--webhook-timeout-s", "1")  # a take lasts max(10, 2 x 1 + 10) = 12 s
    servers = [LoggedServer(pg_url, tmp_path / f"s{i}.log", *args, env=env) for i in range(3)]
    await asyncio.gather(*(s.start() for s in servers))
    try:
        jobs = []
        for n in range(JOBS):
            status, job = await servers[n % 3].request(
                "POST",
                "/bulk-jobs",
                json={"operation": "noop", "items": [{}] * 20, "webhook": {"url": hook}},
            )
            assert status == 202, job
            jobs.append(job["id"])
        async with asyncio.timeout(30):
            await receiver.done.wait()
        # Past every take window (12 s): a message whose take ended without its attempt
        # being recorded would go again now.
        await asyncio.sleep(13)
        assert len(receiver.seen) == JOBS
        wrong = {k: n for k, n in receiver.seen.items() if n != receiver.expected(k)}
        assert not wrong, f"attempts per message (1, or 2 after a 503): {wrong}"
        assert len(receiver.refused) == JOBS // 2
        assert receiver.bad_signatures == 0
        status, deliveries = await servers[1].request(
            "GET", f"/bulk-jobs/{jobs[0]}/webhook-deliveries"
        )
        assert status == 200, deliveries
        [message] = deliveries["data"]
        assert message["status"] == "delivered"
        codes = [503, 200] if message["id"] in receiver.refused else [200]
        assert [a["status_code"] for a in message["attempts"]] == codes
        for server in servers:
            server.assert_clean_log()
    finally:
        await asyncio.gather(*(s.stop() for s in servers))


async def _in_flight(server: LoggedServer) -> bool:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    return "bulkjobs_webhook_in_flight 1.0" in text.splitlines()


async def test_a_message_whose_sender_died_is_sent_again_once(
    pg_url: str, tmp_path: Path, aiohttp_server: Any
) -> None:
    """The process sending a message dies mid-attempt; after the take ends, one of the
    others sends it: at least once (twice here, same webhook-id), never by both
    survivors."""
    secret = random_secret()
    seen: collections.Counter[str] = collections.Counter()
    first = asyncio.Event()
    release = asyncio.Event()
    four = asyncio.Event()  # A's hung attempt, its copy, B's and C's messages

    async def handle(request: web.Request) -> web.Response:
        seen[request.headers["webhook-id"]] += 1
        if sum(seen.values()) >= 4:
            four.set()
        if not first.is_set():
            first.set()
            await release.wait()  # A's attempt hangs until A is gone
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    hook = str((await aiohttp_server(app)).make_url("/hook"))
    env = {"BULKJOBS_WEBHOOK_SECRETS": secret}
    args = (*PG_ARGS, "--webhook-allow-private", "true", "--webhook-timeout-s", "1")
    a, b, c = (LoggedServer(pg_url, tmp_path / f"{n}.log", *args, env=env) for n in "abc")
    await asyncio.gather(a.start(), b.start(), c.start())
    try:
        body = {"operation": "noop", "items": [{}], "webhook": {"url": hook}}
        status, job = await a.request("POST", "/bulk-jobs", json=body)
        assert status == 202, job
        async with asyncio.timeout(10):
            await first.wait()
        # whichever process took it (a NOTIFY may have woken another one first)
        [sender] = [s for s in (a, b, c) if await _in_flight(s)]
        assert (await sender.kill()) != 0
        release.set()
        for server in {a, b, c} - {sender}:  # a commit adding a message wakes dispatchers
            status, other = await server.request("POST", "/bulk-jobs", json=body)
            assert status == 202, other
        async with asyncio.timeout(40):  # the take of A's attempt: max(10, 2 x 1 + 10) s
            await four.wait()
        await asyncio.sleep(2)  # a third copy would come now
        assert sorted(seen.values()) == [1, 1, 2], seen
    finally:
        release.set()
        await asyncio.gather(a.stop(), b.stop(), c.stop())
