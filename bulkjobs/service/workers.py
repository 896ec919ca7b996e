"""Workers: take a chunk, run it through the executor, queue the outcomes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

from ..models import ItemStatus, JobError, JobStatus, WorkItem
from ..store import OutcomeRow
from .executor import Executor
from .metrics import Metrics
from .scheduler import Chunk, JobRun, Scheduler, StopRequest
from .writer import Outcomes, ResultWriter

logger = logging.getLogger(__name__)


def _broken_chunk() -> StopRequest:
    msg = "an internal error stopped the job; its unfinished items were cancelled"
    return StopRequest(JobStatus.FAILED, JobError("internal_error", msg))


class WorkerPool:
    """N worker coroutines draining the work queue."""

    def __init__(
        self,
        queue: asyncio.Queue[Chunk],
        scheduler: Scheduler,
        writer: ResultWriter,
        size: int,
        metrics: Metrics,
        handler_threads: concurrent.futures.Executor,
    ) -> None:
        self._queue = queue
        self._scheduler = scheduler
        self._writer = writer
        self._executor = Executor(handler_threads, metrics)
        self._metrics = metrics
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
            self.busy += 1
            self._idle.clear()
            failed = 0
            try:
                failed = await self._work(run, chunk)
            except Exception:
                # A bug of ours, not a handler's (those become item outcomes): the
                # chunk's outcomes are unknown, so the job must not end `completed`.
                logger.exception("worker failed on a chunk of %s", run.job_id)
                self._scheduler.request_stop(run, _broken_chunk())
            finally:
                self.busy -= 1
                if not self.busy:
                    self._idle.set()
                self._scheduler.chunk_done(run, len(chunk), failed)
                self._queue.task_done()

    async def _work(self, run: JobRun, chunk: list[WorkItem]) -> int:
        """Run the chunk and queue its outcomes; return how many items failed."""
        if run.stopping:
            return 0
        started = time.perf_counter()
        rows = await self._executor.run_chunk(run, chunk)
        if not rows:
            return 0
        ok = sum(1 for r in rows if r[0] == ItemStatus.SUCCEEDED.value)
        await self._writer.put(Outcomes(run.pk, rows, ok, len(rows) - ok))
        self._observe(run.operation.name, rows, ok, time.perf_counter() - started)
        return len(rows) - ok

    def _observe(self, operation: str, rows: list[OutcomeRow], ok: int, elapsed_s: float) -> None:
        m = self._metrics
        m.items.labels(operation, "succeeded").inc(ok)
        m.items.labels(operation, "failed").inc(len(rows) - ok)
        # One sample per chunk (its mean per item): a sample per item cost ~1 ms of loop
        # time per 500-item chunk, which delayed every request behind it.
        m.item_seconds.labels(operation).observe(elapsed_s / len(rows))
