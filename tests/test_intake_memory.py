"""Hostile bodies cost a real server little memory, and an upload cut by kill -9 leaves
nothing behind. Each case gets a fresh subprocess server: its peak RSS (VmHWM, from
/proc) never goes down."""

from __future__ import annotations

import asyncio
import gzip
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
BUDGET_MB = 20


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def costs(
    tmp_path: Path, body: bytes, headers: dict[str, str], *args: str, warm: bool = False
) -> tuple[int, str, float]:
    """(status, code, MB of peak RSS the request added) on a fresh server."""
    server = ServerProcess(str(tmp_path / "jobs.sqlite3"), *args)
    await server.start()
    try:
        assert server.proc is not None
        async with aiohttp.ClientSession() as http:
            if warm:  # the rate limiter's one token goes to a first tiny job
                one = {"operation": "noop", "items": [{}]}
                async with http.post(server.url + "/bulk-jobs", json=one) as resp:
                    assert resp.status == 202
            before = peak_mb(server.proc.pid)
            data = io.BytesIO(body)
            async with http.post(server.url + "/bulk-jobs", data=data, headers=headers) as resp:
                problem: dict[str, Any] = await resp.json()
                status = resp.status
            return status, problem["code"], peak_mb(server.proc.pid) - before
    finally:
        await server.kill()


def gzip_bomb() -> bytes:
    bomb = gzip.compress(b'{"operation": "noop", "items": [' + b" " * (64 << 20), 9)
    assert len(bomb) <= 64 * 1024
    return bomb


async def test_a_gzip_bomb_is_refused_without_inflating(tmp_path: Path) -> None:
    headers = {**JSON, "Content-Encoding": "gzip"}
    status, code, mb = await costs(tmp_path, gzip_bomb(), headers)
    assert (status, code) == (415, "unsupported_content_encoding")
    assert mb < BUDGET_MB


async def test_an_accepted_gzip_bomb_stops_at_its_ratio(tmp_path: Path) -> None:
    headers = {**JSON, "Content-Encoding": "gzip"}
    status, code, mb = await costs(tmp_path, gzip_bomb(), headers, "--accept-gzip")
    assert (status, code) == (413, "payload_too_large")
    assert mb < BUDGET_MB


async def test_millions_of_empty_items_stop_at_the_cap(tmp_path: Path) -> None:
    body = b'{"operation": "noop", "items": [' + b",".join([b"{}"] * 2_800_000) + b"]}"
    status, code, mb = await costs(tmp_path, body, JSON)
    assert (status, code) == (413, "too_many_items")
    assert mb < BUDGET_MB


async def test_a_rate_limited_ndjson_body_is_not_parsed(tmp_path: Path) -> None:
    body = b"\n".join([b'{"id": "x"}'] * 700_000)  # 8.4 MB
    args = ("--submit-rate-per-s", "0.001", "--submit-burst", "1")
    status, code, mb = await costs(tmp_path, body, NDJSON, *args, warm=True)
    assert (status, code) == (429, "rate_limited")
    assert mb < BUDGET_MB


async def test_an_upload_cut_by_kill_9_is_gone_after_the_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.sqlite3")
    server = ServerProcess(db)
    await server.start()
    staged = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'{"operation": "noop", "items": ['
        for start in range(0, 40_000, 10_000):
            yield b",".join(b'{"id": "i%d"}' % i for i in range(start, start + 10_000)) + b","
        staged.set()
        await asyncio.sleep(30)  # never finishes: the server dies first
        yield b"{}]}"

    async with aiohttp.ClientSession() as http:
        post = asyncio.create_task(http.post(server.url + "/bulk-jobs", data=body(), headers=JSON))
        await staged.wait()
        with sqlite3.connect(db) as conn:
            async with asyncio.timeout(10):
                # another process writes: no event to wait on
                while conn.execute("SELECT count(*) FROM items").fetchone()[0] < 20_000:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        await server.kill()
        with pytest.raises(aiohttp.ClientError):
            await post
    await server.start()
    try:
        status, page = await server.request("GET", "/bulk-jobs")
        assert status == 200 and page["data"] == []
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM staging").fetchone() == (0,)
            async with asyncio.timeout(20):  # the purger removes the items in batches
                while conn.execute("SELECT count(*) FROM items").fetchone()[0]:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
    finally:
        await server.terminate()
