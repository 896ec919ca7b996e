"""Janitor benchmark: processing throughput while expired jobs are being deleted.

A real `bulkjobs serve` (temp db, janitor every 0.2 s, minimum TTL 0). Each round:
(a) a 100,000-item noop job alone; (b) a 500,000-item job with `ttl_seconds: 0` is run
to completion, so the janitor removes it at once and the purger deletes its items in
batches, while a second 100,000-item job runs. Reports the median rates and their ratio
(target, issue 4: with deletion >= 80% of normal) and whether the purge overlapped.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time

import aiohttp
from common import median, post_job, running_server, wait_done


def body(n: int, ttl_s: int | None = None) -> bytes:
    ttl = b"" if ttl_s is None else b', "ttl_seconds": ' + str(ttl_s).encode()
    return b'{"operation": "noop"' + ttl + b', "items": [' + b",".join([b"{}"] * n) + b"]}"


def purge_pending(db: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM purge_queue").fetchone()[0])


async def timed_job(http: aiohttp.ClientSession, url: str, n: int) -> float:
    """Items per second from submit to completion."""
    started = time.perf_counter()
    _, job_id = await post_job(http, url, body(n))
    await wait_done(http, url, job_id)
    return n / (time.perf_counter() - started)


async def expired_job_started(http: aiohttp.ClientSession, url: str, db: str, n: int) -> None:
    """Run an n-item job with TTL 0 and return once the janitor has queued its purge."""
    _, job_id = await post_job(http, url, body(n, ttl_s=0))
    await wait_done(http, url, job_id)
    for _ in range(1000):  # polling another process's database; it sweeps every 0.2 s
        if purge_pending(db):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the janitor did not remove the expired job")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--delete-items", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env_args = ("--janitor-interval-s", "0.2", "--min-ttl-s", "0")
    normal, during, overlapped = [], [], 0
    async with running_server(*env_args) as server, aiohttp.ClientSession() as http:
        for _ in range(args.runs):
            normal.append(await timed_job(http, server.url, args.items))
            await expired_job_started(http, server.url, server.db, args.delete_items)
            during.append(await timed_job(http, server.url, args.items))
            overlapped += purge_pending(server.db) > 0
    n, d = median(normal), median(during)
    print(f"normal: median {n:,.0f} items/s over {args.runs} runs")
    print(f"while deleting a {args.delete_items:,}-item job: median {d:,.0f} items/s")
    print(f"ratio {d / n:.0%} (target >= 80%)")
    print(f"purge still running when the job finished: {overlapped}/{args.runs} runs")


if __name__ == "__main__":
    asyncio.run(main())
