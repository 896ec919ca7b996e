"""Core benchmark (issue 2): POST latency, end-to-end throughput, peak RSS.

Starts a real `bulkjobs serve` (demo operations, 4 workers, temp SQLite file) and
reports medians of several runs:
  1. seconds from POST to 202 for 10,000 and 100,000 items;
  2. items/s for a 100,000-item `noop` job with durable per-item outcomes;
  3. the server's peak RSS.

    python benchmarks/bench_core.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime

import aiohttp
from common import job_body, median, post_job, rss_mb, running_server, wait_done


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def bench_post(http: aiohttp.ClientSession, url: str, n: int, runs: int) -> list[float]:
    body = job_body("noop", n)
    seconds = []
    for _ in range(runs):
        took, job_id = await post_job(http, url, body)
        seconds.append(took)
        await wait_done(http, url, job_id)  # one job at a time: measure intake alone
    return seconds


async def bench_throughput(
    http: aiohttp.ClientSession, url: str, n: int, runs: int
) -> list[tuple[float, float]]:
    body = job_body("noop", n)
    rates = []
    for _ in range(runs):
        posted_at = time.time()  # same machine: comparable with the server's timestamps
        _, job_id = await post_job(http, url, body)
        job = await wait_done(http, url, job_id)
        done = _ts(job["completed_at"]).timestamp()
        processing = done - _ts(job["started_at"]).timestamp()
        wall = done - posted_at
        assert job["succeeded"] == n, job
        rates.append((n / processing, n / wall))
    return rates


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    async with running_server(workers=args.workers) as server, aiohttp.ClientSession() as http:
        for n in (10_000, 100_000):
            s = await bench_post(http, server.url, n, args.runs)
            print(
                f"POST {n:>7,} items -> 202: median {median(s):.3f}s"
                f"  (min {min(s):.3f}, max {max(s):.3f})"
            )
        rates = await bench_throughput(http, server.url, 100_000, max(3, args.runs - 2))
        proc = [r[0] for r in rates]
        wall = [r[1] for r in rates]
        print(
            f"noop 100,000 items: median {median(proc):,.0f} items/s from start to completion "
            f"(min {min(proc):,.0f}); {median(wall):,.0f} items/s including the POST"
        )
        print(f"server peak RSS: {rss_mb(server.pid, 'VmHWM'):.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
