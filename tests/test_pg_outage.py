"""PostgreSQL restarts and stops under real `bulkjobs serve` processes (issue 11).

The cluster here is the module's own (an outage must not hit other tests' databases).
Every process reconnects by itself: during the outage `/readyz` answers 503 and
requests 503 `store_unavailable` with Retry-After (never a 500); afterwards jobs
resume and finish with counters equal to their items' outcomes.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.pg_servers import PG_ARGS, LoggedServer
from tests.pg_support import Cluster, create_database, drop_database, start_cluster
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow

_ARGS = (*PG_ARGS, "--lease-s", "5")


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[tuple[Cluster, Path]]:
    cluster, root = start_cluster()
    try:
        yield cluster, root
    finally:
        try:
            cluster.pg_ctl("-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def outage_db(own_cluster: tuple[Cluster, Path]) -> AsyncIterator[str]:
    cluster, _root = own_cluster
    url = await create_database(cluster)
    yield url
    await drop_database(cluster, url)


def _start_again(cluster: Cluster, root: Path, *mode: str) -> None:
    """`pg_ctl restart` (fast mode when running; a plain start with the last options
    when stopped), logging to a file so that pg_ctl does not hold our pipe."""
    cluster.pg_ctl(*mode, "-l", str(root / "server.log"), "-w", "restart")


async def _get(url: str, timeout_s: float = 5) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
        http.get(url) as resp,
    ):
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def _wait_terminal(url: str, job_id: str, timeout_s: float = 60) -> Any:
    """The job row once terminal, read from the database: the authority (a process's
    poll answer for a job another process finished may lag; that is not tested here)."""
    db = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                job = await db.fetchrow(
                    "SELECT status, total_items, succeeded, failed, cancelled FROM jobs"
                    " WHERE id = $1",
                    job_id,
                )
                if job["status"] in ("completed", "failed", "cancelled"):
                    return dict(job)
                await asyncio.sleep(0.1)  # polling a process we do not control
    finally:
        await db.close()


async def _wait_ready(server: ServerProcess, timeout_s: float = 30) -> float:
    """Seconds until `/readyz` answers 200."""
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while True:
            status, _, _ = await _get(server.url + "/readyz")
            if status == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.05)  # polling a process we do not control


async def _wait_progress(url: str, job_id: str, timeout_s: float = 30) -> float:
    """Seconds until the job's stored outcomes grow (or it ends) after now."""
    started = time.monotonic()
    db = await asyncpg.connect(url, timeout=timeout_s)
    try:
        first = None
        async with asyncio.timeout(timeout_s):
            while True:
                row = await db.fetchrow(
                    "SELECT status, succeeded + failed FROM jobs WHERE id = $1", job_id
                )
                if row[0] != "running" or (first is not None and row[1] > first):
                    return time.monotonic() - started
                first = row[1] if first is None else first
                await asyncio.sleep(0.02)  # polling a process we do not control
    finally:
        await db.close()


async def _counts_agree(url: str, job_id: str) -> tuple[int, int, int]:
    """(succeeded, failed, pending) from the items table; asserts the job row agrees."""
    db = await asyncpg.connect(url)
    try:
        job = await db.fetchrow("SELECT pk, succeeded, failed FROM jobs WHERE id = $1", job_id)
        rows = await db.fetch(
            "SELECT status, count(*) FROM items WHERE job_pk = $1 GROUP BY status", job["pk"]
        )
    finally:
        await db.close()
    by = dict(rows)
    assert (job["succeeded"], job["failed"]) == (by.get("succeeded", 0), by.get("failed", 0))
    return by.get("succeeded", 0), by.get("failed", 0), by.get("pending", 0)


async def test_a_restart_mid_job_loses_nothing(
    own_cluster: tuple[Cluster, Path], outage_db: str, tmp_path: Path
) -> None:
    cluster, root = own_cluster
    a = LoggedServer(outage_db, tmp_path / "a.log", *_ARGS)
    b = LoggedServer(outage_db, tmp_path / "b.log", *_ARGS)
    await asyncio.gather(a.start(), b.start())
    try:
        items = [{"ms": 5} for _ in range(1500)]
        status, job = await a.request(
            "POST", "/bulk-jobs", json={"operation": "sleep", "items": items}
        )
        assert status == 202, job
        status, small = await b.request(
            "POST", "/bulk-jobs", json={"operation": "noop", "items": [{}] * 300}
        )
        assert status == 202, small
        async with asyncio.timeout(20):
            while True:
                if (await a.request("GET", f"/bulk-jobs/{job['id']}"))[1]["processed"] >= 100:
                    break
                await asyncio.sleep(0.05)  # polling a process we do not control
        started = time.monotonic()
        _start_again(cluster, root, "-m", "fast")
        restarted = time.monotonic() - started
        recovered = await asyncio.gather(_wait_ready(a), _wait_ready(b))
        moving = await _wait_progress(outage_db, job["id"])
        print(
            f"\npg_ctl restart took {restarted:.2f}s; ready again after {max(recovered):.2f}s;"
            f" the job moved again after {moving:.2f}s"
        )
        for job_id in (job["id"], small["id"]):
            done = await _wait_terminal(outage_db, job_id)
            assert done["status"] == "completed", done
            assert done["succeeded"] + done["failed"] == done["total_items"], done
            assert (done["failed"], done["cancelled"]) == (0, 0), done
            succeeded, failed, pending = await _counts_agree(outage_db, job_id)
            assert (succeeded, failed, pending) == (done["total_items"], 0, 0)
        a.assert_clean_log()
        b.assert_clean_log()
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_while_stopped_requests_get_503_store_unavailable(
    own_cluster: tuple[Cluster, Path], outage_db: str, tmp_path: Path
) -> None:
    cluster, root = own_cluster
    server = LoggedServer(outage_db, tmp_path / "s.log", *_ARGS)
    await server.start()
    try:
        status, job = await server.request(
            "POST", "/bulk-jobs", json={"operation": "sleep", "items": [{"ms": 5}] * 600}
        )
        assert status == 202, job
        cluster.pg_ctl("-m", "fast", "-w", "stop")
        stopped = time.monotonic()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    server.url + "/bulk-jobs", json={"operation": "noop", "items": [{}]}
                ) as resp:
                    problem = await resp.json(content_type=None)
                    assert resp.status == 503, problem
                    assert problem["code"] == "store_unavailable", problem
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert resp.content_type == "application/problem+json"
                async with http.get(f"{server.url}/bulk-jobs/{job['id']}") as resp:
                    problem = await resp.json(content_type=None)
                    assert (resp.status, problem["code"]) == (503, "store_unavailable")
            async with asyncio.timeout(5):  # its answer is cached for about a second
                while True:
                    status, ready, _ = await _get(server.url + "/readyz")
                    if status == 503:
                        break
                    await asyncio.sleep(0.1)  # polling a process we do not control
            assert ready["store"].startswith("error"), ready
            assert time.monotonic() - stopped < 5  # the answers come fast, not after timeouts
            # longer than --lease-s: leases expire meanwhile; loops back off, the writer
            # keeps its group commit
            await asyncio.sleep(6)
            status, _, _ = await _get(f"{server.url}/bulk-jobs/{job['id']}")
            assert status == 503
        finally:
            _start_again(cluster, root)
        recovered = await _wait_ready(server)
        print(f"\nready again {recovered:.2f}s after the start")
        status, after = await server.request(
            "POST", "/bulk-jobs", json={"operation": "noop", "items": [{}] * 10}
        )
        assert status == 202, after
        for job_id in (job["id"], after["id"]):
            done = await _wait_terminal(outage_db, job_id)
            assert done["status"] == "completed", done
            assert done["succeeded"] == done["total_items"], done
            await _counts_agree(outage_db, job_id)
        server.assert_clean_log()
    finally:
        await server.stop()
