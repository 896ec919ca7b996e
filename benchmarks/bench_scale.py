"""Scale-out on PostgreSQL (issue 11): items/s with 1, 2 and 4 `bulkjobs serve`
processes on one local PostgreSQL, against SQLite and against procrastinate.

It starts its own throwaway cluster (benchmarks/pg_cluster.py) and, per run, a fresh
database and fresh server processes (4 workers each) on 127.0.0.1:

- a `noop` job of `--items` (1,000,000) items with each of `--procs` (1,2,4) processes;
- an `update_orders_status` job of `--orders-items` (200,000) items with 1 process (the
  demo's read-modify-write of `orders`, one batch at a time: `concurrency=1` counts
  leases in the database, so it holds across processes);
- the same two jobs on SQLite (1 process);
- the peer: procrastinate (psycopg 3, async worker) doing the same `update_orders_status`
  work, the same SQL effect on the same `orders` table, as one task per item, on a fixed
  sample of `--peer-items` (3,000) items, at each of `--peer-concurrency` (best kept).

A job's rate is total / (completed_at - started_at) of the stored job; the PostgreSQL
CPU share is the cluster's CPU time (utime + stime of its processes, from /proc) over
that interval, divided by wall time and cores. Each figure is the median of `--runs`.

    cd benchmarks && ../.venv/bin/python bench_scale.py                 # full size
    cd benchmarks && ../.venv/bin/python bench_scale.py --items 100000 --orders-items 20000

Needs PostgreSQL's binaries (apt-get install postgresql) and the bench extra
(`pip install -e '.[bench]'`: procrastinate, psycopg).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from common import ROOT, free_port, median
from pg_cluster import Cluster, start_cluster

CORES = os.cpu_count() or 1
WORKERS = 4


# -- servers -----------------------------------------------------------------------


class Proc:
    """One `bulkjobs serve`; its log goes to a file."""

    def __init__(self, db: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(self.port)]
        cmd += ["--db", self.db, "--workers", str(WORKERS), "--log-level", "WARNING"]
        cmd += ["--min-free-disk-bytes", "0", "--max-pending-items", "5000000"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log
            )
        async with asyncio.timeout(60), aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def servers(db: str, n: int, logs: Path) -> AsyncIterator[list[Proc]]:
    procs = [Proc(db, logs / f"server-{uuid.uuid4().hex[:6]}.log") for _ in range(n)]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        yield procs
    finally:
        await asyncio.gather(*(p.stop() for p in procs))


# -- jobs --------------------------------------------------------------------------


def noop_body(n: int) -> bytes:
    return b'{"operation": "noop", "items": [' + b",".join([b"{}"] * n) + b"]}"


def orders_body(n: int) -> bytes:
    items = (f'{{"id": "ord_{i % 1000 + 1}", "status": "paid"}}'.encode() for i in range(n))
    return b'{"operation": "update_orders_status", "items": [' + b",".join(items) + b"]}"


async def submit(url: str, body: bytes) -> str:
    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(
            url + "/bulk-jobs", data=body, headers={"Content-Type": "application/json"}
        ) as resp,
    ):
        job = await resp.json()
        assert resp.status == 202, job
        return str(job["id"])


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def wait_http(url: str, job_id: str) -> dict[str, Any]:
    """SQLite: one process, so its answer is the job's."""
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/bulk-jobs/{job_id}?wait=5") as resp:
                job: dict[str, Any] = await resp.json()
            if job["status"] in ("completed", "failed", "cancelled"):
                return {
                    "status": job["status"],
                    "total": job["total_items"],
                    "succeeded": job["succeeded"],
                    "failed": job["failed"],
                    "seconds": _ts(job["completed_at"]) - _ts(job["started_at"]),
                }


async def wait_db(db_url: str, job_id: str) -> dict[str, Any]:
    """PostgreSQL: the stored job (any process may have finished it), and its items."""
    db = await asyncpg.connect(db_url)
    try:
        while True:
            row = await db.fetchrow(
                "SELECT pk, status, total_items, succeeded, failed, started_at, completed_at"
                " FROM jobs WHERE id = $1",
                job_id,
            )
            if row["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.05)
        items = dict(
            await db.fetch(
                "SELECT status, count(*) FROM items WHERE job_pk = $1 GROUP BY status", row["pk"]
            )
        )
    finally:
        await db.close()
    return {
        "status": row["status"],
        "total": row["total_items"],
        "succeeded": row["succeeded"],
        "failed": row["failed"],
        "items_succeeded": items.get("succeeded", 0),
        "seconds": (row["completed_at"] - row["started_at"]) / 1000,
    }


def check(result: dict[str, Any], what: str) -> None:
    ok = result["status"] == "completed" and result["succeeded"] == result["total"]
    ok = ok and result["failed"] == 0
    ok = ok and result.get("items_succeeded", result["total"]) == result["total"]
    if not ok:
        raise SystemExit(f"{what}: items lost or failed: {result}")


# -- one measurement ------------------------------------------------------------------


async def run_sqlite(body: bytes, logs: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bulkjobs-bench-") as tmp:
        async with servers(os.path.join(tmp, "bench.sqlite3"), 1, logs) as [proc]:
            job_id = await submit(proc.url, body)
            result = await wait_http(proc.url, job_id)
    return result


async def run_pg(cluster: Cluster, body: bytes, n: int, logs: Path) -> dict[str, Any]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(cluster.url())
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        async with servers(cluster.url(name), n, logs) as procs:
            job_id = await submit(procs[0].url, body)
            cpu0, t0 = cluster.cpu_seconds(), time.monotonic()
            result = await wait_db(cluster.url(name), job_id)
            cpu1, t1 = cluster.cpu_seconds(), time.monotonic()
        result["pg_cpu_share"] = (cpu1 - cpu0) / (t1 - t0) / CORES
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return result


# -- the peer: procrastinate -------------------------------------------------------------


async def run_procrastinate(cluster: Cluster, n: int, concurrency: list[int]) -> dict[int, float]:
    """items/s of procrastinate per worker concurrency, on a database of its own with
    the demo's `orders` table (same DDL and seed)."""
    try:
        import procrastinate
        import psycopg_pool
    except ImportError:
        raise SystemExit("the peer needs the bench extra: pip install -e '.[bench]'") from None
    from bulkjobs.demo import SEEDED_ORDERS, TRANSITIONS

    logging.getLogger("procrastinate").setLevel(logging.ERROR)  # its notes on app setup

    name = f"bench_peer_{uuid.uuid4().hex[:8]}"
    url = cluster.url(name)
    admin = await asyncpg.connect(cluster.url())
    await admin.execute(f'CREATE DATABASE "{name}"')
    db = await asyncpg.connect(url)
    rates: dict[int, float] = {}
    try:
        await db.execute(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL,"
            " updated_at TIMESTAMPTZ);"
            " INSERT INTO orders (id, status) SELECT 'ord_' || g, 'pending'"
            f" FROM generate_series(1, {SEEDED_ORDERS}) AS g"
        )
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
        pool = psycopg_pool.AsyncConnectionPool(url, min_size=1, max_size=64, open=False)

        @app.task(name="update_order_status")
        async def update_order_status(order_id: str, status: str) -> None:
            # the demo's handler for one item: read the order, check the move, write it
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "SELECT status FROM orders WHERE id = %s FOR UPDATE", (order_id,)
                )
                row = await cur.fetchone()
                if row is None:
                    raise LookupError(order_id)
                if row[0] != status and status not in TRANSITIONS[row[0]]:
                    raise ValueError(f"{row[0]} -> {status}")
                await conn.execute(
                    "UPDATE orders SET status = %s, updated_at = now() WHERE id = %s",
                    (status, order_id),
                )

        await pool.open()
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            for c in concurrency:
                await db.execute("UPDATE orders SET status = 'pending', updated_at = NULL")
                args = [{"order_id": f"ord_{i % 1000 + 1}", "status": "paid"} for i in range(n)]
                await update_order_status.batch_defer_async(*args)
                started = time.monotonic()
                await app.run_worker_async(
                    concurrency=c,
                    wait=False,
                    listen_notify=False,
                    install_signal_handlers=False,
                )
                elapsed = time.monotonic() - started
                left = await db.fetchval(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status != 'succeeded'"
                )
                await db.execute("DELETE FROM procrastinate_jobs")  # the next run starts empty
                paid = await db.fetchval("SELECT count(*) FROM orders WHERE status = 'paid'")
                if left or paid != min(n, SEEDED_ORDERS):
                    raise SystemExit(f"procrastinate: {left} jobs not succeeded, {paid} paid")
                rates[c] = n / elapsed
        await pool.close()
    finally:
        await db.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return rates


# -- the report --------------------------------------------------------------------------


async def measure(what: str, runs: int, once: Callable[[], Any]) -> dict[str, Any]:
    results = []
    for i in range(runs):
        result = await once()
        check(result, what)
        rate = result["total"] / result["seconds"]
        share = result.get("pg_cpu_share")
        extra = f", PostgreSQL CPU {share:.0%}" if share is not None else ""
        print(f"  {what} run {i + 1}: {rate:,.0f} items/s{extra}", flush=True)
        results.append({**result, "rate": rate})
    out = {"rate": median([r["rate"] for r in results])}
    if results[0].get("pg_cpu_share") is not None:
        out["pg_cpu_share"] = median([r["pg_cpu_share"] for r in results])
    return out


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f} items/s"


async def main(args: argparse.Namespace) -> int:
    procs = [int(p) for p in args.procs.split(",")]
    peer_c = [int(c) for c in args.peer_concurrency.split(",")]
    noop, orders = noop_body(args.items), orders_body(args.orders_items)
    rows: list[tuple[str, str, str]] = []
    failures: list[str] = []
    print(f"{CORES} cores; {args.items:,} noop items, {args.orders_items:,} order updates")
    with tempfile.TemporaryDirectory(prefix="bulkjobs-bench-logs-") as logs_dir:
        logs = Path(logs_dir)
        cluster = start_cluster()
        try:
            lite_noop = await measure("sqlite noop", args.runs, lambda: run_sqlite(noop, logs))
            pg_noop: dict[int, dict[str, Any]] = {}
            for n in procs:
                pg_noop[n] = await measure(
                    f"postgres noop x{n}",
                    args.runs,
                    lambda n=n: run_pg(cluster, noop, n, logs),  # type: ignore[misc]
                )
            lite_orders = await measure(
                "sqlite orders", args.runs, lambda: run_sqlite(orders, logs)
            )
            pg_orders = await measure(
                "postgres orders x1", args.runs, lambda: run_pg(cluster, orders, 1, logs)
            )
            peer = await run_procrastinate(cluster, args.peer_items, peer_c)
            for c, rate in peer.items():
                print(f"  procrastinate concurrency {c}: {rate:,.0f} items/s", flush=True)
        finally:
            cluster.stop()

    base = pg_noop[procs[0]]["rate"]
    rows.append(("sqlite, noop, 1 process", fmt_rate(lite_noop["rate"]), "1.00 (reference)"))
    for n in procs:
        r = pg_noop[n]
        rows.append(
            (
                f"postgres, noop, {n} process{'es' if n > 1 else ''}",
                fmt_rate(r["rate"]),
                f"{r['rate'] / lite_noop['rate']:.2f} of sqlite; {r['rate'] / base:.2f}x"
                f" {procs[0]} proc; PostgreSQL CPU {r['pg_cpu_share']:.0%}",
            )
        )
    rows.append(("sqlite, update_orders_status", fmt_rate(lite_orders["rate"]), "1.00 (reference)"))
    rows.append(
        (
            "postgres, update_orders_status, 1 process",
            fmt_rate(pg_orders["rate"]),
            f"{pg_orders['rate'] / lite_orders['rate']:.2f} of sqlite;"
            f" PostgreSQL CPU {pg_orders['pg_cpu_share']:.0%}",
        )
    )
    best_c = max(peer, key=lambda c: peer[c])
    rows.append(
        (
            f"procrastinate, one task per item, concurrency {best_c} (best)",
            fmt_rate(peer[best_c]),
            f"bulkjobs/procrastinate = {pg_orders['rate'] / peer[best_c]:.0f}x",
        )
    )

    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'value':>18}  ratio")
    for figure, value, ratio in rows:
        print(f"{figure:<{width}}  {value:>18}  {ratio}")

    if 1 in pg_noop and pg_noop[1]["rate"] < 0.5 * lite_noop["rate"]:
        failures.append("postgres noop x1 < 50 % of sqlite")
    if pg_orders["rate"] < 0.5 * lite_orders["rate"]:
        failures.append("postgres update_orders_status x1 < 50 % of sqlite")
    if pg_orders["rate"] < 50 * peer[best_c]:
        failures.append("postgres update_orders_status < 50x procrastinate")
    if 1 in pg_noop and 2 in pg_noop and pg_noop[2]["rate"] <= pg_noop[1]["rate"]:
        failures.append("2 processes do not beat 1 on noop")
    print("\ntargets:", "all met" if not failures else "MISSED: " + "; ".join(failures))
    print("(every job: counters == total, no failed item, items table agrees on PostgreSQL)")
    return 0


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000, help="noop job size")
    p.add_argument("--orders-items", type=int, default=200_000, help="update_orders job size")
    p.add_argument("--procs", default="1,2,4", help="process counts for noop on PostgreSQL")
    p.add_argument("--runs", type=int, default=1, help="runs per figure (median)")
    p.add_argument("--peer-items", type=int, default=3000, help="procrastinate tasks")
    p.add_argument("--peer-concurrency", default="1,4,16", help="procrastinate worker concurrency")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
