"""Poll latency benchmark (issue 15): GET /bulk-jobs/{id} p99 during a running job,
against a hello-world aiohttp app polled the same way in the same run.

Each round runs two `noop` jobs of --items on one real `bulkjobs serve`, back to back:
  A: while it runs, --pollers clients poll the hello-world app (hello_app.py, its own
     process): the job is unobserved, the machine carries the same polling load;
  B: while it runs, --pollers clients poll the job itself.
Every poller keeps one keep-alive connection (a bare-socket HTTP/1.1 client, so the
client costs the two shared cores as little as possible), sends If-None-Match with
the last ETag and sleeps what `Retry-After` says (its first poll at a random point of
the first interval, so the clients spread out). Latency is from writing the request
to reading the last byte of the response.

Reported (medians over --runs rounds): p50/p99 of both, the ratio of the p99s, and the
job's throughput in B against A (started_at -> completed_at).

    python benchmarks/bench_poll.py [--runs 3] [--items 1000000] [--pollers 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from common import (
    ROOT,
    free_port,
    job_body,
    median,
    parse_head,
    percentile,
    post_job,
    running_server,
    ts,
    wait_done,
)


@contextlib.asynccontextmanager
async def hello_server() -> AsyncIterator[str]:
    port = free_port()
    script = str(ROOT / "benchmarks" / "hello_app.py")
    proc = await asyncio.create_subprocess_exec(sys.executable, script, str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(20), aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(url + "/readyz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield url
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def poller(url: str, path: str, latencies: list[float], stop: asyncio.Event) -> None:
    """Poll `path` until `stop`, paced by Retry-After, with If-None-Match."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
    tag, pause = "", random.uniform(0, 1.0)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
            if stop.is_set():
                return
            started = time.perf_counter()
            condition = f"If-None-Match: {tag}\r\n" if tag else ""
            writer.write(f"{request}{condition}\r\n".encode())
            status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            await reader.readexactly(int(headers.get("content-length", "0")))
            latencies.append(time.perf_counter() - started)
            tag = headers.get("etag", "")
            pause = float(headers.get("retry-after", "1"))
            if status == 200 and "retry-after" not in headers:
                return  # a terminal job carries no Retry-After
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def one_job(
    http: aiohttp.ClientSession, url: str, body: bytes, n: int, poll_url: str | None, pollers: int
) -> tuple[float, list[float]]:
    """(items/s started -> completed, sorted poll latencies) of one job."""
    _, job_id = await post_job(http, url, body)
    latencies: list[float] = []
    stop = asyncio.Event()
    target = (poll_url, "/hello") if poll_url else (url, f"/bulk-jobs/{job_id}")
    tasks = [asyncio.create_task(poller(*target, latencies, stop)) for _ in range(pollers)]
    try:
        job = await wait_done(http, url, job_id)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert job["processed"] == n, job
    return n / (ts(job["completed_at"]) - ts(job["started_at"])), sorted(latencies)


async def bench(runs: int, items: int, pollers: int) -> dict[str, Any]:
    body = job_body("noop", items)
    rounds: list[dict[str, float]] = []
    timeout = aiohttp.ClientTimeout(total=None)
    async with (
        hello_server() as hello,
        running_server() as server,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        for _ in range(runs):
            quiet_rate, hello_lat = await one_job(http, server.url, body, items, hello, pollers)
            seen_rate, job_lat = await one_job(http, server.url, body, items, None, pollers)
            rounds.append(
                {
                    "hello_p50_ms": 1000 * percentile(hello_lat, 0.5),
                    "hello_p99_ms": 1000 * percentile(hello_lat, 0.99),
                    "job_p50_ms": 1000 * percentile(job_lat, 0.5),
                    "job_p99_ms": 1000 * percentile(job_lat, 0.99),
                    "requests": len(job_lat),
                    "unobserved_items_s": quiet_rate,
                    "observed_items_s": seen_rate,
                }
            )
    med = {k: median([r[k] for r in rounds]) for k in rounds[0]}
    med["ratio"] = med["job_p99_ms"] / med["hello_p99_ms"]
    med["throughput_pct"] = 100 * med["observed_items_s"] / med["unobserved_items_s"]
    return med


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--pollers", type=int, default=200)
    args = parser.parse_args()
    m = await bench(args.runs, args.items, args.pollers)
    print(
        f"GET /bulk-jobs/{{id}} with {args.pollers} pollers: p50 {m['job_p50_ms']:.1f} ms,"
        f" p99 {m['job_p99_ms']:.1f} ms ({m['requests']:.0f} requests);"
        f" hello world p50 {m['hello_p50_ms']:.1f} ms, p99 {m['hello_p99_ms']:.1f} ms;"
        f" ratio {m['ratio']:.2f}; throughput observed {m['observed_items_s']:,.0f}"
        f" vs unobserved {m['unobserved_items_s']:,.0f} items/s ({m['throughput_pct']:.0f}%)"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main())
