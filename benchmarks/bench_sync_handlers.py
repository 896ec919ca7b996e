"""Sync handlers benchmark (issue 10): µs per item of a plain `def` no-op operation.

In process, no server or database: the executor alone, chunks of `--chunk` items.
  before: one `asyncio.to_thread` hop per item (the executor before issue 10);
  after:  one hop per chunk to the handler pool (no per-item timeout);
  timeout path: one hop per item to the handler pool under `asyncio.timeout`.
Prints the median of `--runs` runs of `--items` items each.

    python benchmarks/bench_sync_handlers.py [--runs 5] [--items 20000] [--chunk 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from bulkjobs import ItemContext, Registry
from bulkjobs.models import WorkItem
from bulkjobs.registry import Operation, call_handler
from bulkjobs.service import executor
from bulkjobs.service.dispatcher import LeaseRun
from bulkjobs.service.metrics import Metrics

RunChunk = Callable[[LeaseRun, Sequence[WorkItem]], Awaitable[list[Any]]]


@attrs.frozen
class Noop:
    n: int


def operations() -> tuple[Operation, Operation]:
    reg = Registry()

    @reg.operation("noop", item_type=Noop)
    def noop(item: Noop, ctx: ItemContext) -> None:
        return None

    @reg.operation("noop_timeout", item_type=Noop, timeout_s=60)
    def noop_timeout(item: Noop, ctx: ItemContext) -> None:
        return None

    plain, timed = reg.get("noop"), reg.get("noop_timeout")
    assert plain is not None and timed is not None
    return plain, timed


async def per_item_to_thread(run: LeaseRun, chunk: Sequence[WorkItem]) -> list[Any]:
    """The executor's loop before issue 10: structure, one thread hop, one row per item."""
    op = run.operation
    rows = []
    for item in chunk:
        if run.stopping:
            break
        value = op.validator.structure(executor.jsonutil.loads(item.payload_json))
        ctx = ItemContext(run.job_id, item.index, 1)
        result = await call_handler(op.handler, op.is_async, value, ctx)  # asyncio.to_thread
        rows.append(executor._row(run, item, ("ok", result), 1))
    return rows


async def us_per_item(run_chunk: RunChunk, op: Operation, items: int, chunk: int) -> float:
    run = LeaseRun(1, "job_bench", 1, "default", op)
    work = [WorkItem(i, None, f'{{"n": {i}}}') for i in range(items)]
    chunks = [work[i : i + chunk] for i in range(0, items, chunk)]
    started = time.perf_counter()
    for part in chunks:
        rows = await run_chunk(run, part)
        assert len(rows) == len(part)
    return (time.perf_counter() - started) / items * 1e6


async def main(runs: int, items: int, chunk: int) -> None:
    plain, timed = operations()
    with ThreadPoolExecutor(8, thread_name_prefix="bench-handler") as pool:
        after = executor.Executor(pool, Metrics())
        cases: list[tuple[str, RunChunk, Operation]] = [
            ("before: to_thread per item", per_item_to_thread, plain),
            ("after: one hop per chunk", after.run_chunk, plain),
            ("timeout path: hop per item", after.run_chunk, timed),
        ]
        for name, run_chunk, op in cases:
            await us_per_item(run_chunk, op, min(items, 2000), chunk)  # warm up
            samples = [await us_per_item(run_chunk, op, items, chunk) for _ in range(runs)]
            spread = ", ".join(f"{s:.2f}" for s in samples)
            print(f"{name:30} {statistics.median(samples):8.2f} µs/item  (runs: {spread})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=100)
    args = parser.parse_args()
    print(f"{args.items} items in chunks of {args.chunk}, median of {args.runs} runs")
    asyncio.run(main(args.runs, args.items, args.chunk))
