"""Real `bulkjobs serve` processes on one PostgreSQL database (the session's cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow

# DiskGuard reads free space next to a SQLite file; a URL has none (see the report).
_ARGS = ("--min-free-disk-bytes", "0", "--workers", "4")


async def wait_terminal(server: ServerProcess, job_id: str, timeout_s: float = 30) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            status, job = await server.request("GET", f"/bulk-jobs/{job_id}?wait=5")
            assert status == 200, job
            if job["status"] in ("completed", "failed", "cancelled"):
                return job


async def test_serve_on_postgres_from_submit_to_completed(pg_url: str) -> None:
    server = ServerProcess(pg_url, *_ARGS)
    await server.start()
    try:
        orders = [{"id": "ord_123", "status": "cancelled"}, {"id": "ord_124", "status": "shipped"}]
        orders.append({"id": "nope", "status": "paid"})
        status, job = await server.request(
            "POST", "/bulk-jobs", json={"operation": "update_orders_status", "items": orders}
        )
        assert status == 202, job
        noop = [{"value": i} for i in range(5000)]
        status, big = await server.request(
            "POST", "/bulk-jobs", json={"operation": "noop", "items": noop}
        )
        assert status == 202, big
        done = await wait_terminal(server, job["id"])
        assert (done["status"], done["succeeded"], done["failed"]) == ("completed", 2, 1)
        done = await wait_terminal(server, big["id"])
        assert (done["status"], done["succeeded"]) == ("completed", 5000)
        status, page = await server.request("GET", f"/bulk-jobs/{job['id']}/items?status=failed")
        assert status == 200 and [i["index"] for i in page["data"]] == [2]
        assert (await server.terminate()) == 0
    finally:
        if server.proc is not None and server.proc.returncode is None:
            await server.kill()
    db = await asyncpg.connect(pg_url)
    try:
        rows = await db.fetch("SELECT id, status FROM orders WHERE id IN ('ord_123', 'ord_124')")
    finally:
        await db.close()
    assert dict(rows) == {"ord_123": "cancelled", "ord_124": "shipped"}


async def test_two_processes_share_jobs_and_survive_a_kill_9(pg_url: str) -> None:
    """Submit on A, poll on B; A dies mid-job, B finishes its items after the lease."""
    a = ServerProcess(pg_url, *_ARGS, "--lease-s", "2")
    b = ServerProcess(pg_url, *_ARGS, "--lease-s", "2")
    await asyncio.gather(a.start(), b.start())
    try:
        items = [{"ms": 20} for _ in range(400)]
        status, job = await a.request(
            "POST", "/bulk-jobs", json={"operation": "sleep", "items": items}
        )
        assert status == 202, job
        async with asyncio.timeout(20):
            while True:  # B answers for a job A accepted
                status, seen = await b.request("GET", f"/bulk-jobs/{job['id']}")
                assert status == 200, seen
                if seen["processed"] >= 40:
                    break
                await asyncio.sleep(0.05)  # polling processes we do not control
        assert (await a.kill()) != 0
        done = await wait_terminal(b, job["id"], timeout_s=60)
        assert (done["status"], done["succeeded"], done["failed"]) == ("completed", 400, 0)
    finally:
        for server in (a, b):
            if server.proc is not None and server.proc.returncode is None:
                await server.kill()
