"""The peer: the `update_orders_status` workload without bulkjobs, one huey task per item.

huey's `SqliteHuey` (queue and results in one SQLite file), a consumer of 4 worker
threads in this process, results stored. Each task does what the demo's batch handler
does for one item, in its own transaction on its own thread's connection to a fresh
`orders` table (ord_1 ... ord_1000, all pending): read the order, check the move
(pending -> paid -> shipped -> delivered, or -> cancelled), write it; the outcome
(or the error code) is the task's result. Timed from the first enqueue to the last
stored result: the same span as bulkjobs' POST -> completed.

    python benchmarks/bench_peer_huey.py [--items 100000] [--runs 1]   # needs `.[bench]`

Prints one line of JSON per run: {"items": N, "seconds": S, "items_s": R}.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from typing import Any

from huey import SqliteHuey  # type: ignore[import-not-found]

sys.path.insert(0, os.path.dirname(__file__))
from common import order_updates

TRANSITIONS = {
    "pending": {"paid", "shipped", "cancelled"},
    "paid": {"shipped", "cancelled"},
    "shipped": {"delivered"},
    "delivered": set(),
    "cancelled": set(),
}


def run_once(items: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bulkjobs-huey-") as tmp:
        orders_db = os.path.join(tmp, "orders.sqlite3")
        with sqlite3.connect(orders_db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL, updated_at TEXT)"
            )
            conn.executemany(
                "INSERT INTO orders (id, status) VALUES (?, 'pending')",
                [(f"ord_{i}",) for i in range(1, 1001)],
            )
        huey = SqliteHuey(filename=os.path.join(tmp, "huey.sqlite3"), results=True)
        local = threading.local()

        def orders() -> sqlite3.Connection:
            if not hasattr(local, "conn"):
                local.conn = sqlite3.connect(orders_db, timeout=30, isolation_level=None)
            return local.conn  # type: ignore[no-any-return]

        @huey.task()  # type: ignore[misc]
        def update_order(order_id: str, status: str) -> dict[str, Any]:
            db = orders()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()
                if row is None:
                    return {"error": "order_not_found"}
                before = row[0]
                if before != status and status not in TRANSITIONS[before]:
                    return {"error": "invalid_transition"}
                db.execute(
                    "UPDATE orders SET status = ?, updated_at = datetime('now') WHERE id = ?",
                    (status, order_id),
                )
                return {"id": order_id, "previous_status": before, "status": status}
            finally:
                db.execute("COMMIT")

        work = order_updates(items)
        consumer = huey.create_consumer(
            workers=4, worker_type="thread", periodic=False, initial_delay=0.001,
            backoff=1.0, max_delay=0.01, check_worker_health=False,
        )  # fmt: skip
        started = time.perf_counter()
        consumer.start()
        try:
            for order_id, status in work:
                update_order(order_id, status)
            while huey.result_count() < items:
                time.sleep(0.01)
            return time.perf_counter() - started
        finally:
            consumer.stop(graceful=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        s = run_once(args.items)
        print(json.dumps({"items": args.items, "seconds": s, "items_s": args.items / s}))


if __name__ == "__main__":
    main()
