"""py-spy against a real `bulkjobs serve` under one workload; prints top-N tables.

    python benchmarks/profile_server.py noop|orders|post|poll|results [--items N]
        [--top 25] [--out /tmp/prof]   # keeps PREFIX-<workload>.txt (raw folded stacks)

The server runs the workload while py-spy samples it (200 Hz, --nonblocking, every
thread, idle frames dropped), from the POST to the job's completion (or the download's
end). The tables: the functions where samples end (self) and the ones on the stack
(inclusive), in % of the non-idle samples, with the thread split (loop / sqlite / other).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys
import time

import aiohttp
from bench_poll import poller
from common import job_body, orders_body, post_job, running_server, wait_done


async def workload(name: str, http: aiohttp.ClientSession, url: str, items: int) -> None:
    if name in ("noop", "post"):
        _, job_id = await post_job(http, url, job_body("noop", items))
        if name == "noop":
            await wait_done(http, url, job_id)
    elif name == "orders":
        _, job_id = await post_job(http, url, orders_body(items))
        await wait_done(http, url, job_id)
    elif name == "poll":
        _, job_id = await post_job(http, url, job_body("noop", items))
        stop, lat = asyncio.Event(), []
        tasks = [asyncio.create_task(poller(url, f"/bulk-jobs/{job_id}", lat, stop))
                 for _ in range(200)]  # fmt: skip
        await wait_done(http, url, job_id)
        stop.set()
        await asyncio.gather(*tasks)
    elif name == "results":
        for fmt in ("ndjson", "csv"):
            async with http.get(f"{url}/bulk-jobs/{JOB[0]}/results?format={fmt}") as resp:
                async for _ in resp.content.iter_chunked(1 << 18):
                    pass


JOB: list[str] = []


def tables(path: str, top: int) -> str:
    self_: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            _thread, *frames = stack.split(";")
            if not frames:
                continue
            kind = (
                "loop"
                if any("run_forever" in f for f in frames)
                else (
                    "sqlite" if any("_connection_worker_thread" in f for f in frames) else "other"
                )
            )
            threads[kind] += n
            total += n
            self_[_short(frames[-1])] += n
            for fr in set(map(_short, frames[1:])):
                incl[fr] += n
    split = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in threads.most_common())
    out = [f"{total} samples ({split})"]
    for title, counter in (("self", self_), ("inclusive", incl)):
        out.append(f"-- top {top} {title} --")
        for frame, n in counter.most_common(top):
            out.append(f"{100 * n / total:5.1f}%  {frame}")
    return "\n".join(out)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit("/", 1)[-1].split(":")[0]
    return f"{name} ({file})" if where else name


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["noop", "orders", "post", "poll", "results"])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="/tmp/bulkjobs-prof")
    args = parser.parse_args()
    path = f"{args.out}-{args.workload}.txt"
    exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
    timeout = aiohttp.ClientTimeout(total=None)
    async with running_server() as server, aiohttp.ClientSession(timeout=timeout) as http:
        if args.workload == "results":
            _, job_id = await post_job(http, server.url, job_body("noop", args.items, {"value": 1}))
            await wait_done(http, server.url, job_id)
            JOB.append(job_id)
        spy = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(server.pid), "-r", "200", "-f", "raw", "-o", path, "-t",
            "--nonblocking", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        await workload(args.workload, http, server.url, args.items)
        took = time.perf_counter() - started
        spy.send_signal(signal.SIGINT)
        await spy.wait()
    print(f"{args.workload}: {took:.2f}s under py-spy")
    print(tables(path, args.top))


if __name__ == "__main__":
    asyncio.run(main())
