"""Real server processes: kill -9 mid-job and SIGTERM drain, then restart on the same file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from tests.consistency import assert_consistent
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(120)

ITEMS = [{"ms": 4, "id": f"it-{i}"} for i in range(600)]


async def wait_processed(server: ServerProcess, job_id: str, at_least: int) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            status, job = await server.request("GET", f"/bulk-jobs/{job_id}")
            assert status == 200, job
            if job["processed"] >= at_least or job["status"] in ("completed", "failed"):
                return job  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)  # polling another process


async def check_consistent(db_path: str, job_id: str) -> tuple[int, int]:
    """The whole file is consistent (tests/consistency.py); return (succeeded, pending)."""
    await asyncio.to_thread(assert_consistent, db_path)
    sql = (
        "SELECT j.succeeded, (SELECT count(*) FROM items WHERE job_pk = j.pk"
        " AND status = 'pending') FROM jobs j WHERE j.id = ?"
    )
    async with aiosqlite.connect(db_path) as db, db.execute(sql, (job_id,)) as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    proc = ServerProcess(str(tmp_path / "jobs.sqlite3"), "--workers", "2")
    yield proc
    await proc.stop()


async def test_kill_9_mid_job_then_restart_loses_nothing(server: ServerProcess) -> None:
    await server.start()
    status, job = await server.request(
        "POST", "/bulk-jobs", json={"operation": "sleep", "items": ITEMS}
    )
    assert status == 202
    before = await wait_processed(server, job["id"], 100)
    assert before["status"] == "running"
    assert await server.kill() == -9

    succeeded, pending = await check_consistent(server.db_path, job["id"])
    assert succeeded >= 100 and pending == 600 - succeeded  # nothing lost, nothing invented

    await server.start()
    final = await wait_processed(server, job["id"], 600)
    assert (final["status"], final["succeeded"], final["failed"]) == ("completed", 600, 0)
    assert await check_consistent(server.db_path, job["id"]) == (600, 0)
    status, items = await server.request("GET", f"/bulk-jobs/{job['id']}/items?limit=1000")
    assert [i["id"] for i in items["data"]] == [f"it-{i}" for i in range(600)]


async def test_sigterm_drains_and_exits_zero(server: ServerProcess) -> None:
    await server.start()
    status, job = await server.request(
        "POST", "/bulk-jobs", json={"operation": "sleep", "items": ITEMS}
    )
    assert status == 202
    await wait_processed(server, job["id"], 50)
    assert await server.terminate() == 0

    succeeded, pending = await check_consistent(server.db_path, job["id"])
    assert 50 <= succeeded < 600 and succeeded + pending == 600

    await server.start()
    final = await wait_processed(server, job["id"], 600)
    assert (final["status"], final["succeeded"]) == ("completed", 600)
