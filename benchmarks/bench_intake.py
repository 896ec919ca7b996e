"""Issue 12's figures: big submits, memory of a server, hostile bodies.

Each figure runs on a fresh `bulkjobs serve` subprocess (a peak, VmHWM, never goes
down), on 127.0.0.1, killed by PID at the end. Medians of --runs.

    python benchmarks/bench_intake.py            # the 1M figures, idle, hostile bodies
    python benchmarks/bench_intake.py --big      # also the 10M-item NDJSON job (minutes)
    python benchmarks/bench_intake.py --items 200000 --runs 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from common import Server, median, rss_mb, running_server, wait_done

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
ITEM = b'{"id": "item-%d"}'
CHUNK = 1 << 20


def json_chunks(n: int) -> AsyncIterator[bytes]:
    """`{"operation": "noop", "items": [...]}` generated as it is sent (the client's
    memory is not being measured)."""

    async def gen() -> AsyncIterator[bytes]:
        yield b'{"operation": "noop", "items": ['
        for start in range(0, n, 20_000):
            part = b",".join(ITEM % i for i in range(start, min(n, start + 20_000)))
            yield (b"," if start else b"") + part
        yield b"]}"

    return gen()


def ndjson_chunks(n: int) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for start in range(0, n, 20_000):
            yield b"\n".join(ITEM % i for i in range(start, min(n, start + 20_000))) + b"\n"

    return gen()


async def submit(server: Server, n: int, ndjson: bool) -> tuple[float, str]:
    url = server.url + ("/bulk-jobs?operation=noop" if ndjson else "/bulk-jobs")
    body = ndjson_chunks(n) if ndjson else json_chunks(n)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.perf_counter()
        async with http.post(url, data=body, headers=NDJSON if ndjson else JSON) as resp:
            job = await resp.json()
            assert resp.status == 202, job
        return time.perf_counter() - started, job["id"]


async def one_submit(n: int, ndjson: bool, args: list[str]) -> dict[str, float]:
    """Submit n items to a fresh server, run the job to the end: seconds to the 202,
    peak RSS during the submit, and during the whole job."""
    async with running_server(*args) as server:
        idle = rss_mb(server.pid)
        seconds, job_id = await submit(server, n, ndjson)
        at_202 = rss_mb(server.pid, "VmHWM")
        started = time.perf_counter()
        async with aiohttp.ClientSession() as http:
            job = await wait_done(http, server.url, job_id)
        assert job["succeeded"] == n, job
        return {
            "submit_s": seconds,
            "idle_mb": idle,
            "peak_submit_mb": at_202,
            "peak_job_mb": rss_mb(server.pid, "VmHWM"),
            "items_per_s": n / (time.perf_counter() - started),
        }


async def commit_gaps(n: int) -> dict[str, float]:
    """While n items upload, the longest pause between progress commits of a job that
    is running (polled every 10 ms)."""
    async with running_server() as server, aiohttp.ClientSession() as http:
        _, running = await submit(server, 300_000, ndjson=True)
        gaps: list[float] = []
        upload = asyncio.create_task(submit(server, n, ndjson=True))
        last_seen, last_t = -1, time.perf_counter()
        while not upload.done():
            async with http.get(f"{server.url}/bulk-jobs/{running}") as resp:
                job = await resp.json()
            now = time.perf_counter()
            if job["processed"] != last_seen:
                if last_seen >= 0:
                    gaps.append(now - last_t)
                last_seen, last_t = job["processed"], now
            if job["status"] == "completed":
                break
            await asyncio.sleep(0.01)
        seconds, _ = await upload
        return {"max_gap_ms": max(gaps, default=float("nan")) * 1000, "upload_s": seconds}


async def hostile(name: str, body: bytes, headers: dict[str, str], args: list[str]) -> str:
    async with running_server(*args) as server, aiohttp.ClientSession() as http:
        before = rss_mb(server.pid, "VmHWM")
        async with http.post(server.url + "/bulk-jobs", data=body, headers=headers) as resp:
            code = (await resp.json(content_type=None)).get("code")
            status = resp.status
        grown = rss_mb(server.pid, "VmHWM") - before
    return f"| {name} | {status} {code} | +{grown:.1f} MB peak RSS |"


def bomb() -> bytes:
    inner = b'{"operation": "noop", "items": [' + b" " * (64 << 20)  # 64 MiB of spaces
    return gzip.compress(inner, compresslevel=9)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="also the 10,000,000-item NDJSON job")
    a = ap.parse_args()
    print(f"| figure ({a.items:,} items, median of {a.runs}) | value |\n|---|---|")
    for ndjson in (False, True):
        runs = [await one_submit(a.items, ndjson, []) for _ in range(a.runs)]
        kind = "NDJSON" if ndjson else "JSON"
        med = {k: median([r[k] for r in runs]) for k in runs[0]}
        print(f"| {kind} submit → 202 | {med['submit_s']:.2f} s |")
        print(f"| {kind} server peak RSS at the 202 | {med['peak_submit_mb']:.0f} MB |")
        print(f"| {kind} server peak RSS, submit and whole job | {med['peak_job_mb']:.0f} MB |")
        print(f"| {kind} job throughput | {med['items_per_s']:,.0f} items/s |")
        print(f"| idle RSS after start | {med['idle_mb']:.0f} MB |")
    gaps = [await commit_gaps(a.items) for _ in range(a.runs)]
    gap = median([g["max_gap_ms"] for g in gaps])
    print(f"| longest pause of a running job's commits during the upload | {gap:.0f} ms |")
    if a.big:
        big = 10_000_000
        args = ["--max-items", str(big), "--max-pending-items", str(2 * big)]
        args += ["--max-body-bytes", str(1 << 30)]
        r = await one_submit(big, True, args)
        print(f"| 10M NDJSON submit → 202 | {r['submit_s']:.1f} s |")
        print(f"| 10M NDJSON server peak RSS, submit and whole job | {r['peak_job_mb']:.0f} MB |")
    await hostile_table()


async def hostile_table() -> None:
    gz = {**JSON, "Content-Encoding": "gzip"}
    packed = bomb()
    empties = b'{"operation": "noop", "items": [' + b",".join([b"{}"] * 2_800_000) + b"]}"
    limited = b"\n".join([b'{"id": "x"}'] * 700_000)  # 8.4 MB of NDJSON
    rows = [
        await hostile(f"{len(packed) >> 10} KB gzip bomb (refused)", packed, gz, []),
        await hostile(
            f"{len(packed) >> 10} KB gzip bomb, --accept-gzip", packed, gz, ["--accept-gzip"]
        ),
        await hostile("2.8M empty items (over --max-items)", empties, JSON, []),
    ]
    print("\n| hostile body | answer | cost |\n|---|---|---|")
    print("\n".join(rows))
    limiter = ("--submit-rate-per-s", "0.001", "--submit-burst", "1")
    async with running_server(*limiter) as s, aiohttp.ClientSession() as http:
        one = {"operation": "noop", "items": [{}]}
        async with http.post(s.url + "/bulk-jobs", json=one) as resp:
            assert resp.status == 202  # the one token goes
        before = rss_mb(s.pid, "VmHWM")
        url = s.url + "/bulk-jobs?operation=noop"
        async with http.post(url, data=limited, headers=NDJSON) as resp:
            code: Any = (await resp.json()).get("code")
            status = resp.status
        grown = rss_mb(s.pid, "VmHWM") - before
    print(f"| 8.4 MB NDJSON while rate-limited | {status} {code} | +{grown:.1f} MB peak RSS |")


if __name__ == "__main__":
    asyncio.run(main())
