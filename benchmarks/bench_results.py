"""Result download benchmark: a 1,000,000-item job downloaded as NDJSON and as CSV.

Starts a real `bulkjobs serve` (temp db), POSTs one noop job of N items, waits for it,
then downloads its results several times per format, reporting the median seconds,
records/s and the server's RSS growth during the download (sampled from /proc).
Targets (issue 4): > 200,000 records/s and < 50 MB RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
from common import job_body, median, post_job, rss_mb, running_server, wait_done


async def sample_peak_rss(pid: int, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb(pid))
        await asyncio.sleep(0.02)


async def download(
    http: aiohttp.ClientSession, url: str, pid: int, fmt: str
) -> tuple[float, int, float]:
    """(seconds, records, RSS growth MB) for one full download."""
    base = rss_mb(pid)
    peak, stop = [base], asyncio.Event()
    sampler = asyncio.create_task(sample_peak_rss(pid, stop, peak))
    started = time.perf_counter()
    lines = 0
    async with http.get(url, params={"format": fmt}) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_chunked(1 << 16):
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    stop.set()
    await sampler
    records = lines - 1 if fmt == "csv" else lines  # the CSV header row
    return elapsed, records, peak[0] - base


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    timeout = aiohttp.ClientTimeout(total=600)
    async with running_server() as server, aiohttp.ClientSession(timeout=timeout) as http:
        _, job_id = await post_job(http, server.url, job_body("noop", args.items, {"value": 1}))
        await wait_done(http, server.url, job_id)
        url = f"{server.url}/bulk-jobs/{job_id}/results"
        for fmt in ("ndjson", "csv"):
            runs = [await download(http, url, server.pid, fmt) for _ in range(args.runs)]
            assert all(r[1] == args.items for r in runs), [r[1] for r in runs]
            secs = median([r[0] for r in runs])
            growth = median([r[2] for r in runs])
            print(
                f"{fmt:>6}: {args.items:,} records, median {secs:.2f}s"
                f" = {args.items / secs:,.0f} records/s;"
                f" RSS growth median {growth:.1f} MB (max {max(r[2] for r in runs):.1f})"
            )


if __name__ == "__main__":
    asyncio.run(main())
