"""A loop-lag probe for benchmarks: the demo registry plus one lifespan hook.

    bulkjobs serve --app lagprobe:registry   (with benchmarks/ on PYTHONPATH)

The hook starts one task on the server's own event loop that sleeps 10 ms again and
again and records by how much each sleep overshot: the time the loop was busy with
something else (a handler, a commit's Python side, a render) when the timer was due.
Every second it appends `epoch_seconds overshoot_ms` lines to the file named by
BULKJOBS_LAGPROBE, so a benchmark can read the samples of the window it cares about
(a job's started_at .. completed_at) while the server runs, even if it is killed.

Why here and not in the server: a lifespan hook is the service's public extension
point, so the probe needs no code in bulkjobs and costs nothing when it is not loaded;
py-spy cannot measure lag (it samples stacks, not timers), and a client-side ping
measures the network path and the client's own loop as well. Its own cost: 100 timer
wake-ups a second and one small file append a second (< 0.1 % of a core).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

from bulkjobs.demo import registry as demo_registry
from bulkjobs.registry import LifespanInfo, Registry

PERIOD_S = 0.010
FLUSH_S = 1.0


async def _probe(path: str) -> None:
    samples: list[str] = []
    last_flush = time.monotonic()
    try:
        while True:
            due = time.monotonic() + PERIOD_S
            await asyncio.sleep(PERIOD_S)
            now = time.monotonic()
            samples.append(f"{time.time():.4f} {1000 * (now - due):.3f}\n")
            if now - last_flush >= FLUSH_S:
                _append(path, samples)
                samples.clear()
                last_flush = now
    finally:
        _append(path, samples)


def _append(path: str, lines: list[str]) -> None:
    # ~100 short lines a second to a local file: microseconds, not worth a thread hop
    with open(path, "a", encoding="ascii") as out:
        out.writelines(lines)


@contextlib.asynccontextmanager
async def _lifespan(_info: LifespanInfo) -> AsyncIterator[None]:
    path = os.environ.get("BULKJOBS_LAGPROBE")
    if not path:
        yield
        return
    task = asyncio.create_task(_probe(path), name="lagprobe")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def registry() -> Registry:
    reg = demo_registry()
    reg.lifespan(_lifespan)
    return reg


def read_lag(path: str, windows: list[tuple[float, float]]) -> list[float]:
    """Overshoots (ms) of the samples inside any of the (start, end) epoch windows."""
    out: list[float] = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="ascii") as f:
        for line in f:
            ts, _, ms = line.partition(" ")
            t = float(ts)
            if any(a <= t <= b for a, b in windows):
                out.append(float(ms))
    return out
