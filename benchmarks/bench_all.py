"""`make bench`: every benchmark of issue 15, one table of medians.

    python benchmarks/bench_all.py [--runs 3] [--quick] [--only core,poll,results,peer]
        [--json out.json]

Each part starts its own real `bulkjobs serve` (temp SQLite file, demo operations):
  core     bench_core.py: POST -> 202, noop and update_orders_status throughput, and
           the loop lag under that load (lagprobe.py, loaded as the server's --app);
  poll     bench_poll.py: 200 ETag pollers paced by Retry-After during a running job,
           against a hello-world aiohttp app polled the same way in the same run;
  results  bench_results.py: results download, NDJSON and CSV, records/s and RSS;
  peer     bench_peer_huey.py: update_orders_status without bulkjobs, one huey task per
           item (SqliteHuey, 4 threads, results stored); needs `pip install -e '.[bench]'`;
  intake   bench_intake.py (issue 12): 1,000,000-item JSON and NDJSON submits -> 202,
           the server's peak RSS over submit and job, idle RSS, the longest pause of a
           running job's commits during an upload (hostile bodies and the 10M job:
           run bench_intake.py itself).
PostgreSQL scale-out (issue 11) has its own script, bench_scale.py (it starts a cluster).
--quick (or BULKJOBS_BENCH_QUICK=1) is a smoke run: one run of each, small sizes; its
figures are not comparable with the targets. The machine is shared: read the medians
and the ratios measured back to back, and re-run on a quiet machine for the record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import bench_core
import bench_intake
import bench_poll
import bench_results
from common import ROOT, median

#: (figure, physical limit here, value format, target, ok?) per row.
Row = tuple[str, str, str, str, bool]


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"core": 20_000, "poll": 200_000, "results": 200_000, "peer": 5_000,
                "intake": 100_000}  # fmt: skip
    return {"core": 100_000, "poll": 1_000_000, "results": 1_000_000, "peer": 100_000,
            "intake": 1_000_000}  # fmt: skip


async def run_core(runs: int, n: int, rows: list[Row], raw: dict[str, Any]) -> None:
    out = await bench_core.core(runs, n)
    noop, orders, post = median(out["noop"]), median(out["orders"]), median(out["post_s"])
    p99, worst = bench_core.lag_summary(out["lag_ms"])
    raw["core"] = {
        **{k: out[k] for k in ("noop", "orders", "post_s", "peak_rss_mb")},
        "lag_p99_ms": p99,
        "lag_max_ms": worst,
    }
    rows += [
        (f"noop {n:,} items, start -> completed", "executemany 1,000 rows/commit ~286k rows/s",
         f"{noop:,.0f} items/s", ">= 150,000 items/s", noop >= 150_000),
        (f"update_orders_status {n:,} items, POST -> completed",
         "its own per-batch read + write on orders", f"{orders:,.0f} items/s",
         ">= 90,000 items/s", orders >= 90_000),
        (f"POST -> 202, {n:,} items", "orjson parse ~0.04 s + insert ~0.2 s",
         f"{post:.3f} s", "<= 0.25 s", post <= 0.25),
        ("event-loop lag under full processing load", "the probe's own timer resolution",
         f"p99 {p99:.1f} ms, max {worst:.1f} ms", "p99 <= 5 ms", p99 <= 5),
    ]  # fmt: skip


async def run_poll(runs: int, n: int, rows: list[Row], raw: dict[str, Any]) -> None:
    m = await bench_poll.bench(runs, n, 200)
    raw["poll"] = m
    ok = m["job_p99_ms"] <= 10 and m["ratio"] <= 2 and m["throughput_pct"] >= 90
    rows.append(
        (f"GET /bulk-jobs/{{id}} p99, 200 ETag pollers, {n:,}-item noop running",
         f"hello world p50 {m['hello_p50_ms']:.1f} / p99 {m['hello_p99_ms']:.1f} ms",
         f"p50 {m['job_p50_ms']:.1f} / p99 {m['job_p99_ms']:.1f} ms (x{m['ratio']:.1f});"
         f" throughput {m['throughput_pct']:.0f}% of unobserved",
         "p99 <= 10 ms and <= 2x hello; >= 90%", ok)
    )  # fmt: skip


async def run_results(runs: int, n: int, rows: list[Row], raw: dict[str, Any]) -> None:
    out = await bench_results.bench(n, runs)
    raw["results"] = out
    for fmt, r in out.items():
        rows.append(
            (f"results download, {n:,} records, {fmt}", "orjson dumps 1M dicts in 0.09 s",
             f"{r['records_s']:,.0f} records/s; RSS {r['before']:.0f} -> {r['after']:.0f}"
             f" MB, peak {r['peak']:.0f}", ">= 600,000 records/s, flat RSS",
             r["records_s"] >= 600_000 and r["growth"] < 50)
        )  # fmt: skip


async def run_peer(runs: int, n: int, rows: list[Row], raw: dict[str, Any]) -> None:
    script = str(ROOT / "benchmarks" / "bench_peer_huey.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, "--items", str(n), "--runs", str(runs),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await proc.communicate()
    if proc.returncode != 0:
        rows.append(("peer: huey", "", "failed (pip install -e '.[bench]'?)", "", False))
        return
    rate = median([json.loads(line)["items_s"] for line in stdout.decode().splitlines()])
    raw["peer"] = {"items_s": rate}
    ours = median(raw["core"]["orders"]) if "core" in raw else float("nan")
    rows.append(
        (f"peer: huey SqliteHuey, 4 threads, {n:,} update_orders_status tasks",
         "one task = one enqueue + one txn + one result", f"{rate:,.0f} items/s;"
         f" bulkjobs is x{ours / rate:,.1f}", "(reference)", True)
    )  # fmt: skip


async def run_intake(runs: int, n: int, rows: list[Row], raw: dict[str, Any]) -> None:
    got = {
        kind: [await bench_intake.one_submit(n, kind == "NDJSON", []) for _ in range(runs)]
        for kind in ("JSON", "NDJSON")
    }
    gaps = [(await bench_intake.commit_gaps(n))["max_gap_ms"] for _ in range(runs)]
    raw["intake"] = {**got, "max_gap_ms": gaps}
    for kind, out in got.items():
        secs = median([r["submit_s"] for r in out])
        peak = median([r["peak_job_mb"] for r in out])
        rows += [
            (f"{n:,}-item {kind} submit -> 202", "parse ~2.5 us/item + insert in batches",
             f"{secs:.2f} s", "<= 3 s", secs <= 3),
            (f"server peak RSS, {kind} submit and the whole job", "idle RSS + batches",
             f"{peak:.0f} MB", "<= 150 MB", peak <= 150),
        ]  # fmt: skip
    idle = median([r["idle_mb"] for out in got.values() for r in out])
    gap = median(gaps)
    rows += [
        ("idle RSS after start", "Python + aiohttp + imports", f"{idle:.0f} MB", "<= 60 MB",
         idle <= 60),
        ("longest pause of a running job's commits during an upload", "one staged batch",
         f"{gap:.0f} ms", "<= 250 ms", gap <= 250),
    ]  # fmt: skip


def print_table(rows: list[Row]) -> None:
    head = ("figure", "limit here", "value (median)", "target", "ok?")
    table = [head, *[(f, lim, v, t, "yes" if ok else "NO") for f, lim, v, t, ok in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    for i, r in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--peer-runs", type=int, default=1, help="huey runs (~100 s each)")
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get(
        "BULKJOBS_BENCH_QUICK")), help="smoke run: 1 run, small sizes")  # fmt: skip
    parser.add_argument("--only", default="core,poll,results,peer,intake")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    sizes = _sizes(args.quick)
    rows: list[Row] = []
    raw: dict[str, Any] = {"quick": args.quick, "runs": runs}
    parts = {
        "core": run_core,
        "poll": run_poll,
        "results": run_results,
        "peer": run_peer,
        "intake": run_intake,
    }
    for name in args.only.split(","):
        n_runs = args.peer_runs if name == "peer" else runs
        print(f"... {name}", file=sys.stderr, flush=True)
        await parts[name](n_runs, sizes[name], rows, raw)
    print_table(rows)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(raw, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
