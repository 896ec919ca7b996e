"""`/metrics` on PostgreSQL: the pool, the leases, and leases taken over (issue 11)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.pg_servers import PG_ARGS, LoggedServer

pytestmark = pytest.mark.slow


async def _metrics(server: LoggedServer) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_pool_and_lease_metrics_and_a_reclaimed_lease(pg_url: str, tmp_path: Path) -> None:
    a = LoggedServer(pg_url, tmp_path / "a.log", *PG_ARGS, "--lease-s", "2")
    b = LoggedServer(pg_url, tmp_path / "b.log", *PG_ARGS, "--lease-s", "2")
    await a.start()
    try:
        status, job = await a.request(
            "POST", "/bulk-jobs", json={"operation": "sleep", "items": [{"ms": 50}] * 400}
        )
        assert status == 202, job
        await asyncio.sleep(0.5)  # A works it: its leases are out
        seen = await _metrics(a)
        assert seen["bulkjobs_db_pool_max"] == 10
        in_use = seen['bulkjobs_db_pool_connections{state="in_use"}']
        assert 1 <= in_use + seen['bulkjobs_db_pool_connections{state="idle"}'] <= 10
        assert seen['bulkjobs_leases{state="held"}'] >= 1
        assert seen['bulkjobs_leases{state="expired"}'] == 0
        assert 0 < seen["bulkjobs_lease_oldest_age_seconds"] < 30
        assert seen["bulkjobs_leases_reclaimed_total"] == 0
        assert (await a.kill()) != 0  # its leases stay behind until they expire
        await b.start()
        async with asyncio.timeout(20):
            while True:
                seen = await _metrics(b)
                if seen["bulkjobs_leases_reclaimed_total"] >= 1:
                    break
                await asyncio.sleep(0.2)  # polling a process we do not control
        assert seen['bulkjobs_leases{state="held"}'] >= 1
        b.assert_clean_log()
    finally:
        await asyncio.gather(a.stop(), b.stop())
