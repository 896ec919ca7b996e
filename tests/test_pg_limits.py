"""Which admission limits hold across processes on one PostgreSQL database (issue 11).

Global: the active-job cap and the backlog caps are checked against counts in the
database (plus the checking process's own submits in flight). Per process: the submit
rate (a token bucket in memory), so N processes admit up to N times the burst.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.pg_servers import PG_ARGS, LoggedServer

pytestmark = pytest.mark.slow

_SLOW = {"operation": "sleep", "items": [{"ms": 1000}] * 8}


async def _two(pg_url: str, tmp_path: Path, *args: str) -> tuple[LoggedServer, LoggedServer]:
    a = LoggedServer(pg_url, tmp_path / "a.log", *PG_ARGS, *args)
    b = LoggedServer(pg_url, tmp_path / "b.log", *PG_ARGS, *args)
    await asyncio.gather(a.start(), b.start())
    return a, b


async def test_the_active_job_cap_counts_every_process(pg_url: str, tmp_path: Path) -> None:
    a, b = await _two(pg_url, tmp_path, "--max-active-jobs", "2", "--max-pending-items", "30")
    try:
        for server in (a, b):  # one active job on each process
            status, job = await server.request("POST", "/bulk-jobs", json=_SLOW)
            assert status == 202, job
        status, problem = await b.request("POST", "/bulk-jobs", json=_SLOW)
        assert (status, problem["code"]) == (429, "too_many_active_jobs"), problem
        status, problem = await a.request("POST", "/bulk-jobs", json=_SLOW)
        assert (status, problem["code"]) == (429, "too_many_active_jobs"), problem
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_the_backlog_cap_counts_every_process(pg_url: str, tmp_path: Path) -> None:
    a, b = await _two(pg_url, tmp_path, "--max-pending-items", "20")
    try:
        status, job = await a.request("POST", "/bulk-jobs", json=_SLOW)  # 8 waiting
        assert status == 202, job
        status, job = await b.request("POST", "/bulk-jobs", json=_SLOW)  # 16 waiting
        assert status == 202, job
        status, problem = await b.request("POST", "/bulk-jobs", json=_SLOW)  # 24 > 20
        assert (status, problem["code"]) == (503, "server_busy"), problem
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_the_submit_rate_is_per_process(pg_url: str, tmp_path: Path) -> None:
    """As the README says: each process has its own bucket (N processes, N x burst)."""
    a, b = await _two(pg_url, tmp_path, "--submit-rate-per-s", "0.01", "--submit-burst", "1")
    noop = {"operation": "noop", "items": [{}]}
    try:
        assert (await a.request("POST", "/bulk-jobs", json=noop))[0] == 202
        status, problem = await a.request("POST", "/bulk-jobs", json=noop)
        assert (status, problem["code"]) == (429, "rate_limited"), problem
        assert (await b.request("POST", "/bulk-jobs", json=noop))[0] == 202
    finally:
        await asyncio.gather(a.stop(), b.stop())
