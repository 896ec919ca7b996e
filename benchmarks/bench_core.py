"""Core benchmark (issues 2 and 15): POST latency, end-to-end throughput, loop lag.

Starts a real `bulkjobs serve` (demo operations, 4 workers, temp SQLite file, the
loop-lag probe of lagprobe.py loaded as its --app) and reports medians of --runs runs:
  1. seconds from POST to 202 for 10,000 and 100,000 `noop` items;
  2. items/s for a 100,000-item `noop` job, from started_at to completed_at;
  3. items/s for a 100,000-item `update_orders_status` job (mixed statuses over the
     demo's ord_1 ... ord_1000), from the POST to completed_at; the orders are reset
     to `pending` before each run, so every run does the same work;
  4. the event loop's lag (p99, max) while those jobs ran: full processing load;
  5. the server's peak RSS.

    python benchmarks/bench_core.py [--runs 5] [--items 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import tempfile
import time
from typing import Any

import aiohttp
from common import (
    job_body,
    median,
    orders_body,
    percentile,
    post_job,
    rss_mb,
    running_server,
    ts,
    wait_done,
)
from lagprobe import read_lag


async def bench_post(http: aiohttp.ClientSession, url: str, n: int, runs: int) -> list[float]:
    body = job_body("noop", n)
    seconds = []
    for _ in range(runs):
        took, job_id = await post_job(http, url, body)
        seconds.append(took)
        await wait_done(http, url, job_id)  # one job at a time: measure intake alone
    return seconds


async def run_job(
    http: aiohttp.ClientSession, url: str, body: bytes, n: int
) -> tuple[float, float, tuple[float, float]]:
    """(items/s from start to completion, items/s from the POST, the job's window)."""
    posted_at = time.time()  # same machine: comparable with the server's timestamps
    _, job_id = await post_job(http, url, body)
    job = await wait_done(http, url, job_id)
    assert job["status"] == "completed" and job["processed"] == n, job
    started, done = ts(job["started_at"]), ts(job["completed_at"])
    return n / (done - started), n / (done - posted_at), (started, done)


def reset_orders(db: str) -> None:
    """Every demo order back to `pending` (a second connection; WAL, busy timeout)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.execute("UPDATE orders SET status = 'pending'")
        conn.commit()

    return contextlib.closing(conn)


async def core(runs: int, items: int, workers: int = 4) -> dict[str, Any]:
    """Every figure of this script, as lists of per-run values (and lag samples)."""
    out: dict[str, Any] = {"post_s": [], "noop": [], "orders": [], "windows": []}
    with tempfile.TemporaryDirectory(prefix="bulkjobs-lag-") as tmp:
        lag_file = os.path.join(tmp, "lag.txt")
        async with (
            running_server(
                "--app", "lagprobe:registry", workers=workers, env={"BULKJOBS_LAGPROBE": lag_file}
            ) as server,
            aiohttp.ClientSession() as http,
        ):
            out["post_s"] = await bench_post(http, server.url, items, runs)
            noop = job_body("noop", items)
            orders = orders_body(items)
            for _ in range(runs):  # interleaved: the machine's load drifts
                rate, _wall, window = await run_job(http, server.url, noop, items)
                out["noop"].append(rate)
                out["windows"].append(window)
                await asyncio.to_thread(reset_orders, server.db)
                _rate, wall, window = await run_job(http, server.url, orders, items)
                out["orders"].append(wall)
                out["windows"].append(window)
            out["peak_rss_mb"] = rss_mb(server.pid, "VmHWM")
            await asyncio.sleep(1.2)  # the probe's last flush
            out["lag_ms"] = sorted(read_lag(lag_file, out["windows"]))
    return out


def lag_summary(lag: list[float]) -> tuple[float, float]:
    return percentile(lag, 0.99), (max(lag) if lag else float("nan"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    out = await core(args.runs, args.items, args.workers)
    s = out["post_s"]
    print(f"POST {args.items:,} items -> 202: median {median(s):.3f}s (min {min(s):.3f})")
    for key, what in (("noop", "start -> completed"), ("orders", "POST -> completed")):
        r = out[key]
        print(f"{key} {args.items:,} items: median {median(r):,.0f} items/s {what}"
              f" (min {min(r):,.0f}, max {max(r):,.0f})")  # fmt: skip
    p99, worst = lag_summary(out["lag_ms"])
    print(f"loop lag under load: p99 {p99:.1f} ms, max {worst:.1f} ms"
          f" ({len(out['lag_ms'])} samples)")  # fmt: skip
    print(f"server peak RSS: {out['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
