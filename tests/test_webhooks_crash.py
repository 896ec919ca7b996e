"""The outbox survives kill -9: a real server process dies with a delivery in flight,
restarts on the same file, and sends the same message (same webhook-id) again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from tests.serverproc import ServerProcess
from tests.webhook_support import HANG, random_secret, start_receiver, verify

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SECRET = random_secret()


async def outbox(db_path: str) -> list[tuple[str, str, int]]:
    """(id, status, attempts) of every stored message, read straight from the file."""
    sql = "SELECT id, status, attempts FROM webhook_messages ORDER BY pk"
    async with aiosqlite.connect(db_path) as db, db.execute(sql) as cur:
        return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


async def wait_delivered(server: ServerProcess, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            status, body = await server.request("GET", f"/bulk-jobs/{job_id}/webhook-deliveries")
            assert status == 200, body
            if body["data"] and body["data"][0]["status"] != "pending":
                return body  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)  # polling another process


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    env = {"BULKJOBS_WEBHOOK_SECRETS": SECRET, "BULKJOBS_WEBHOOK_ALLOW_PRIVATE": "1"}
    proc = ServerProcess(str(tmp_path / "jobs.sqlite3"), "--workers", "2", env=env)
    yield proc
    await proc.stop()


async def test_kill_9_with_a_delivery_in_flight(server: ServerProcess, aiohttp_server: Any) -> None:
    receiver = await start_receiver(aiohttp_server)
    receiver.script = [HANG]  # the first attempt never gets an answer
    try:
        await server.start()
        status, job = await server.request(
            "POST",
            "/bulk-jobs",
            json={"operation": "sleep", "items": [{"ms": 1}], "webhook": {"url": receiver.url}},
        )
        assert status == 202, job
        first = await receiver.next(timeout_s=30)
        assert await server.kill() == -9
        [(msg_id, state, attempts)] = await outbox(server.db_path)
        assert (msg_id, state, attempts) == (first.id, "pending", 0)  # the attempt never ended

        await server.start()
        second = await receiver.next(timeout_s=30)
        assert second.id == first.id and second.body == first.body
        assert verify(SECRET, second.headers, second.body)
        assert second.json["type"] == "job.completed"
        assert second.json["data"]["id"] == job["id"]
        listing = await wait_delivered(server, job["id"])
    finally:
        receiver.release.set()
    [msg] = listing["data"]
    assert msg["id"] == first.id and msg["status"] == "delivered"
    assert {r.id for r in receiver.log} == {first.id}  # one logical message
