"""Shared pieces of the benchmark scripts: a real server subprocess and small stats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
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


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """(status, lower-cased headers) of a raw HTTP/1.1 response head."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


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
async def running_server(
    *args: str, workers: int = 4, env: dict[str, str] | None = None
) -> AsyncIterator[Server]:
    """Start a server, wait until ready, and always kill it (by PID) at the end.

    benchmarks/ is on its PYTHONPATH, so `--app lagprobe:registry` loads the probe."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bulkjobs-bench-") as tmp:
        db = os.path.join(tmp, "bench.sqlite3")
        cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(port), "--db", db]
        cmd += ["--workers", str(workers), "--log-level", "WARNING", *args]
        path = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])
        proc = await asyncio.create_subprocess_exec(
            *cmd, env={**os.environ, **(env or {}), "PYTHONPATH": path}
        )
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
    one = (item and json.dumps(item)) or "{}"
    return items_body(operation, [one.encode()] * n)


def items_body(operation: str, items: list[bytes]) -> bytes:
    """A JSON body of already-encoded items."""
    return b'{"operation": "' + operation.encode() + b'", "items": [' + b",".join(items) + b"]}"


ORDER_STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled")


def order_updates(n: int, seed: int = 15) -> list[tuple[str, str]]:
    """The `update_orders_status` workload: n (order id, status) pairs, mixed statuses
    over the demo's ord_1 ... ord_1000 (so some moves are legal, some are not)."""
    rng = random.Random(seed)
    return [(f"ord_{rng.randint(1, 1000)}", rng.choice(ORDER_STATUSES)) for _ in range(n)]


def orders_body(n: int) -> bytes:
    return items_body(
        "update_orders_status",
        [json.dumps({"id": i, "status": s}).encode() for i, s in order_updates(n)],
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of an already sorted list (nearest rank)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def ts(value: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp of the API."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


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
