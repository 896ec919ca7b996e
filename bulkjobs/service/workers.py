"""Workers: take a chunk, run it through the executor, queue the outcomes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable

from ..models import ItemOutcome, WorkItem
from .dispatcher import Chunk, Dispatcher, LeaseRun
from .executor import Executor
from .metrics import Metrics
from .writer import ChunkDone, ResultWriter

logger = logging.getLogger(__name__)

#: Called when a chunk failed for a reason of ours: the job must not end `completed`.
OnBroken = Callable[[LeaseRun], Awaitable[None]]


class WorkerPool:
    """N worker coroutines draining the work queue."""

    def __init__(
        self,
        queue: asyncio.Queue[Chunk],
        dispatcher: Dispatcher,
        writer: ResultWriter,
        size: int,
        metrics: Metrics,
        handler_threads: concurrent.futures.Executor,
        on_broken: OnBroken,
    ) -> None:
        self._queue = queue
        self._dispatcher = dispatcher
        self._writer = writer
        self._executor = Executor(handler_threads, metrics)
        self._metrics = metrics
        self._on_broken = on_broken
        self.size = size
        self.busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no worker is in the middle of a chunk."""
        await self._idle.wait()

    async def run_worker(self) -> None:
        """One worker: loop until cancelled."""
        while True:
            run, chunk = await self._queue.get()
            self._dispatcher.took(run)
            self.busy += 1
            self._idle.clear()
            try:
                size = run.operation.options.batch_size
                # An entry is one chunk, or a whole lease of an operation with a
                # concurrency limit: its chunks one after another (dispatcher.py).
                for i in range(0, max(1, len(chunk)), size):
                    await self._work_safely(run, chunk[i : i + size])
            finally:
                self.busy -= 1
                if not self.busy:
                    self._idle.set()
                self._queue.task_done()

    async def _work_safely(self, run: LeaseRun, chunk: list[WorkItem]) -> None:
        try:
            await self._work(run, chunk)
        except Exception:
            # A bug of ours, not a handler's (those become item outcomes): the
            # chunk's outcomes are unknown, so the job must not end `completed`.
            logger.exception("worker failed on a chunk of %s", run.job_id)
            run.stopping = True
            await self._writer.put(ChunkDone(run, []))
            await self._on_broken(run)

    async def _work(self, run: LeaseRun, chunk: list[WorkItem]) -> None:
        """Run the chunk and queue its outcomes (none when its job is stopping)."""
        rows: list[ItemOutcome] = []
        started = time.perf_counter()
        if not run.stopping:
            rows = await self._executor.run_chunk(run, chunk)
        await self._writer.put(ChunkDone(run, rows))
        if rows:
            elapsed_s = time.perf_counter() - started
            self._dispatcher.pace.observe(run.operation.name, elapsed_s / len(rows))
            self._observe(run.operation.name, rows, elapsed_s)

    def _observe(self, operation: str, rows: list[ItemOutcome], elapsed_s: float) -> None:
        ok = sum(1 for r in rows if r.status == "succeeded")
        m = self._metrics
        m.items.labels(operation, "succeeded").inc(ok)
        m.items.labels(operation, "failed").inc(len(rows) - ok)
        # One sample per chunk (its mean per item): a sample per item cost ~1 ms of loop
        # time per 500-item chunk, which delayed every request behind it.
        m.item_seconds.labels(operation).observe(elapsed_s / len(rows))
