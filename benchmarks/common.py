"""Shared pieces of the benchmark scripts: a real server subprocess and small stats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process from /proc (VmHWM is the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values)


class Server:
    """One `bulkjobs serve` on 127.0.0.1 with a temporary database."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, db: str) -> None:
        self.proc = proc
        self.url = url
        self.db = db

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.asynccontextmanager
async def running_server(*args: str, workers: int = 4) -> AsyncIterator[Server]:
    """Start a server, wait until ready, and always kill it (by PID) at the end."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bulkjobs-bench-") as tmp:
        db = os.path.join(tmp, "bench.sqlite3")
        cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(port), "--db", db]
        cmd += ["--workers", str(workers), "--log-level", "WARNING", *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(*cmd, env=env)
        server = Server(proc, f"http://127.0.0.1:{port}", db)
        try:
            await _wait_ready(server)
            yield server
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def _wait_ready(server: Server, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(server.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)


def job_body(operation: str, n: int, item: dict[str, Any] | None = None) -> bytes:
    """A JSON body of n items, built as bytes once (the client is not being measured)."""
    one = (item and __import__("json").dumps(item)) or "{}"
    return (
        b'{"operation": "'
        + operation.encode()
        + b'", "items": ['
        + b",".join([one.encode()] * n)
        + b"]}"
    )


async def post_job(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, str]:
    """POST a job; return (seconds until the 202, job id)."""
    started = time.perf_counter()
    async with http.post(
        url + "/bulk-jobs", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 202, await resp.text()
        job = await resp.json()
    return time.perf_counter() - started, job["id"]


async def wait_done(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    """Follow the job with the server's own long-poll/Retry-After until it is terminal."""
    while True:
        async with http.get(f"{url}/bulk-jobs/{job_id}") as resp:
            job: dict[str, Any] = await resp.json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
