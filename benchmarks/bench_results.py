"""Result download benchmark: a 1,000,000-item job downloaded as NDJSON and as CSV.

Starts a real `bulkjobs serve` (temp db), POSTs one noop job of N items, waits for it,
then downloads its results --runs times per format, reporting the median records/s
and the server's RSS before the download, after it, and its peak during it (VmRSS of
/proc/PID/status sampled every 20 ms; VmHWM would hold the processing's peak).
Targets (issue 15): >= 600,000 records/s each, flat RSS.

    python benchmarks/bench_results.py [--items 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
from common import job_body, median, post_job, rss_mb, running_server, wait_done


async def sample_peak_rss(pid: int, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb(pid))
        await asyncio.sleep(0.02)


async def download(http: aiohttp.ClientSession, url: str, pid: int, fmt: str) -> dict[str, float]:
    """Seconds, records and RSS (before, after, peak) of one full download."""
    before = rss_mb(pid)
    peak, stop = [before], asyncio.Event()
    sampler = asyncio.create_task(sample_peak_rss(pid, stop, peak))
    started = time.perf_counter()
    lines = 0
    async with http.get(url, params={"format": fmt}) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_chunked(1 << 18):
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    stop.set()
    await sampler
    records = lines - 1 if fmt == "csv" else lines  # the CSV header row
    after = rss_mb(pid)
    return {"s": elapsed, "records": records, "before": before, "after": after,
            "peak": max(peak[0], after)}  # fmt: skip


async def bench(items: int, runs: int) -> dict[str, dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=600)
    out: dict[str, dict[str, Any]] = {}
    async with running_server() as server, aiohttp.ClientSession(timeout=timeout) as http:
        _, job_id = await post_job(http, server.url, job_body("noop", items, {"value": 1}))
        await wait_done(http, server.url, job_id)
        url = f"{server.url}/bulk-jobs/{job_id}/results"
        for fmt in ("ndjson", "csv"):
            runs_ = [await download(http, url, server.pid, fmt) for _ in range(runs)]
            assert all(r["records"] == items for r in runs_), [r["records"] for r in runs_]
            out[fmt] = {
                "records_s": median([items / r["s"] for r in runs_]),
                "before": median([r["before"] for r in runs_]),
                "after": median([r["after"] for r in runs_]),
                "peak": max(r["peak"] for r in runs_),
                "growth": max(r["peak"] - r["before"] for r in runs_),
            }
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for fmt, r in (await bench(args.items, args.runs)).items():
        print(
            f"{fmt:>6}: {args.items:,} records, median {r['records_s']:,.0f} records/s;"
            f" server RSS before {r['before']:.0f} MB, after {r['after']:.0f} MB,"
            f" peak {r['peak']:.0f} MB (growth {r['growth']:.1f} MB)"
        )


if __name__ == "__main__":
    asyncio.run(main())
