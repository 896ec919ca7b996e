"""Live-progress benchmark (issue 3): SSE fan-out and ETag polling during a big job.

Each run starts its own `bulkjobs serve` (demo operations, temp SQLite file) and runs
one 200,000-item `noop` job:
  quiet:   nobody watching (the baseline);
  sse:     1,000 concurrent SSE subscribers on the job;
  polling: 200 concurrent clients polling GET /bulk-jobs/{id} with If-None-Match.
Reported: the job's throughput (items/s from started_at to completed_at), server CPU%
over the job, server peak RSS and its growth over the pre-job RSS, and for polling the
p50/p99 latency. Medians of --runs runs; the machine is shared, so read the ratios.
The client's own CPU% is reported too (it shares the cores with the server).

    python benchmarks/bench_live.py [--runs 3] [--items 200000] [--subscribers 1000]
        [--only quiet,sse,polling] [--profile /tmp/live]  # py-spy raw stacks per run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
from common import (
    cpu_seconds,
    job_body,
    median,
    parse_head,
    post_job,
    rss_mb,
    running_server,
)

TERMINAL = ("completed", "failed", "cancelled")
Scenario = Callable[[aiohttp.ClientSession, str, str, dict[str, Any]], Awaitable[None]]


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def follow_long_poll(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    """Wait for the end with the server's long-poll (one request every change or 30 s)."""
    tag = ""
    while True:
        headers = {"If-None-Match": tag} if tag else {}
        async with http.get(f"{url}/bulk-jobs/{job_id}?wait=30", headers=headers) as resp:
            if resp.status == 200:
                job: dict[str, Any] = await resp.json()
                tag = resp.headers["ETag"]
                if job["status"] in TERMINAL:
                    return job


async def quiet(http: aiohttp.ClientSession, url: str, job_id: str, out: dict[str, Any]) -> None:
    """Nobody watches."""


async def one_subscriber(url: str, job_id: str) -> int:
    """Read one stream to its end over a bare socket, counting events: the client shares
    the machine's two cores with the server, so it must cost as little as possible."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /bulk-jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    events = 0
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    while chunk := await reader.read(65536):
        events += chunk.count(b"\nevent: ")
        if chunk.endswith(b"0\r\n\r\n"):  # the last chunk of a chunked body
            break
    writer.close()
    await writer.wait_closed()
    return events


async def sse(http: aiohttp.ClientSession, url: str, job_id: str, out: dict[str, Any]) -> None:
    started = time.perf_counter()
    counts = await asyncio.gather(*(one_subscriber(url, job_id) for _ in range(out["n"])))
    out["events"] = counts
    out["stream_s"] = time.perf_counter() - started


async def one_poller(
    http: aiohttp.ClientSession, url: str, job_id: str, latencies: list[float], interval_s: float
) -> None:
    """Poll over one keep-alive connection with a bare-socket HTTP/1.1 client: like the
    SSE readers, it must cost the shared cores as little as possible. Latency is from
    the request's write to the last byte of the response (its body when there is one)."""
    host, port = url.removeprefix("http://").split(":")
    await asyncio.sleep(random.uniform(0, interval_s))  # spread the clients out
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /bulk-jobs/{job_id} HTTP/1.1\r\nHost: {host}\r\n"
    tag = ""
    try:
        while True:
            started = time.perf_counter()
            condition = f"If-None-Match: {tag}\r\n" if tag else ""
            writer.write(f"{request}{condition}\r\n".encode())
            status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            latencies.append(time.perf_counter() - started)
            tag = headers["etag"]
            if status == 200 and b'"status":"running"' not in body and b"pending" not in body:
                return
            await asyncio.sleep(interval_s)
    finally:
        writer.close()
        await writer.wait_closed()


async def polling(http: aiohttp.ClientSession, url: str, job_id: str, out: dict[str, Any]) -> None:
    latencies: list[float] = []
    await asyncio.gather(
        *(one_poller(http, url, job_id, latencies, out["interval_s"]) for _ in range(out["n"]))
    )
    latencies.sort()
    out["requests"] = len(latencies)
    out["p50_ms"] = 1000 * latencies[len(latencies) // 2]
    out["p99_ms"] = 1000 * latencies[int(len(latencies) * 0.99)]


async def start_profiler(pid: int, path: str | None) -> asyncio.subprocess.Process | None:
    """py-spy sampling the server (raw folded stacks), when asked for."""
    if path is None:
        return None
    exe = os.path.join(os.path.dirname(sys.executable), "py-spy")  # pip install py-spy
    cmd = [exe, "record", "--pid", str(pid), "-r", "200", "-f", "raw", "-o", path]
    return await asyncio.create_subprocess_exec(
        *cmd, "--nonblocking", stdout=asyncio.subprocess.DEVNULL
    )


async def stop_profiler(proc: asyncio.subprocess.Process | None) -> None:
    if proc is not None and proc.returncode is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        async with asyncio.timeout(30):
            await proc.wait()


async def run_once(
    scenario: Scenario, items: int, extra: dict[str, Any], profile: str | None = None
) -> dict[str, Any]:
    body = job_body("noop", items)
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        running_server("--sse-max-streams", "5000") as server,
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as http,
    ):
        rss_before = rss_mb(server.pid)
        _, job_id = await post_job(http, server.url, body)
        profiler = await start_profiler(server.pid, profile)
        cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
        client0 = cpu_seconds(os.getpid())
        out = dict(extra)
        watchers = asyncio.create_task(scenario(http, server.url, job_id, out))
        job = await follow_long_poll(http, server.url, job_id)
        await watchers
        wall = time.perf_counter() - t0
        out["cpu_pct"] = 100 * (cpu_seconds(server.pid) - cpu0) / wall
        out["client_cpu_pct"] = 100 * (cpu_seconds(os.getpid()) - client0) / wall
        await stop_profiler(profiler)
        out["peak_rss_mb"] = rss_mb(server.pid, "VmHWM")
        out["rss_growth_mb"] = out["peak_rss_mb"] - rss_before
        seconds = (_ts(job["completed_at"]) - _ts(job["started_at"])).total_seconds()
        assert job["succeeded"] == items, job
        out["items_per_s"] = items / seconds
        return out


def profile_path(prefix: str | None, scenario: str, run: int) -> str | None:
    return None if prefix is None else f"{prefix}-{scenario}-{run}.txt"


def summary(name: str, runs: list[dict[str, Any]], keys: list[str]) -> dict[str, float]:
    med = {k: median([r[k] for r in runs]) for k in keys}
    text = ", ".join(f"{k} {v:,.1f}" for k, v in med.items())
    print(f"{name:8s} median of {len(runs)}: {text}", flush=True)
    return med


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--poll-interval-s", type=float, default=0.5)
    parser.add_argument(
        "--only", default="quiet,sse,polling", help="comma-separated scenarios to run"
    )
    parser.add_argument("--profile", help="py-spy each run's server to PROFILE-<scenario>-<n>")
    args = parser.parse_args()
    base = ["items_per_s", "cpu_pct", "client_cpu_pct", "peak_rss_mb", "rss_growth_mb"]
    results: dict[str, dict[str, float]] = {}
    plans: list[tuple[str, Scenario, dict[str, Any], list[str]]] = [
        ("quiet", quiet, {}, base),
        ("sse", sse, {"n": args.subscribers}, [*base, "stream_s"]),
        ("polling", polling, {"n": args.pollers, "interval_s": args.poll_interval_s},
         [*base, "requests", "p50_ms", "p99_ms"]),
    ]  # fmt: skip
    chosen = [plan for plan in plans if plan[0] in args.only.split(",")]
    # Runs are interleaved (quiet, sse, polling, quiet, ...): the machine is shared and
    # its load drifts, so each comparison is made back to back.
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in chosen}
    for i in range(args.runs):
        for name, scenario, extra, _ in chosen:
            profile = profile_path(args.profile, name, i)
            runs[name].append(await run_once(scenario, args.items, extra, profile))
    for name, _, _, keys in chosen:
        if name == "sse":
            events = [median(r["events"]) for r in runs[name]]
            print(f"sse      events per subscriber (median): {median(events):.0f}", flush=True)
        results[name] = summary(name, runs[name], keys)
    if set(results) != {"quiet", "sse", "polling"}:
        return
    q, s, p = results["quiet"], results["sse"], results["polling"]
    print(f"throughput with {args.subscribers} SSE subscribers: "
          f"{100 * s['items_per_s'] / q['items_per_s']:.0f}% of unobserved (target >= 80%); "
          f"peak RSS +{s['peak_rss_mb'] - q['peak_rss_mb']:.1f} MB over unobserved "
          f"(target < 100 MB)")  # fmt: skip
    print(
        f"throughput with {args.pollers} pollers: "
        f"{100 * p['items_per_s'] / q['items_per_s']:.0f}% of unobserved; "
        f"poll latency p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms (target p99 < 20 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
