"""The engine: owns the store, the writer, the scheduler, the workers and the hub,
starts them in order, recovers unfinished jobs, and stops them in order.

Stop order (SIGTERM): stop dispatching → let chunks being worked finish within the
grace period → cancel what is left → flush the writer → close lifespans → close store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..config import Settings
from ..models import Job, JobError, JobStatus
from ..registry import LifespanInfo, Registry
from ..store import Store, open_store
from .events import EventHub
from .metrics import Metrics
from .retention import Janitor
from .scheduler import Chunk, Scheduler, StopRequest
from .webhooks import DispatcherConfig, WebhookDispatcher
from .webhooks.dispatcher import RenderJob, plain_job
from .workers import WorkerPool
from .writer import ResultWriter, Transition

logger = logging.getLogger(__name__)

_PURGE_IDLE_S = 5.0
#: Time the writer gets beyond the grace period to flush outcomes at shutdown.
_FLUSH_EXTRA_S = 10.0


class Engine:
    """Everything that runs in the background of one bulkjobs process."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: Store | None = None,
        *,
        render_job: RenderJob = plain_job,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store: Store = store or open_store(
            settings.db_path,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.busy_timeout_ms,
        )
        self.metrics = Metrics()
        self.hub = EventHub(progress_interval_s=settings.progress_interval_ms / 1000)
        self.writer = ResultWriter(
            self.store,
            self._on_commit,
            max_rows=settings.commit_max_rows,
            linger_ms=settings.commit_linger_ms,
            metrics=self.metrics,
        )
        self.queue: asyncio.Queue[Chunk] = asyncio.Queue(settings.queue_size)
        self.scheduler = Scheduler(self.store, self.writer, self.queue, settings.load_page_items)
        # Sync handlers' own pool: hung ones cannot starve the loop's default pool.
        # Threads start lazily, on the first sync call; shut down in `stop`.
        self.handler_threads = ThreadPoolExecutor(
            settings.handler_pool_size, thread_name_prefix="bulkjobs-handler"
        )
        self.workers = WorkerPool(
            self.queue,
            self.scheduler,
            self.writer,
            settings.workers,
            self.metrics,
            self.handler_threads,
        )
        self.draining = False
        self._purge_wake = asyncio.Event()
        self.janitor = Janitor(
            self.store,
            tombstone_s=settings.tombstone_s,
            interval_s=settings.janitor_interval_s,
            batch_jobs=settings.janitor_batch_jobs,
            on_removed=self._on_removed,
        )
        self.webhooks = WebhookDispatcher(
            self.store.webhooks, DispatcherConfig.from_settings(settings), render_job
        )
        self.metrics.watch_webhooks(self.webhooks.stats)
        self._lifespans = contextlib.AsyncExitStack()
        self._writer_task: asyncio.Task[None] | None = None
        self._intake_tasks: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- start -------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, enter lifespans, recover unfinished jobs, start the tasks."""
        await self.store.open()
        info = LifespanInfo(db_path=self.settings.db_path)
        for lifespan in self.registry.lifespans:
            await self._lifespans.enter_async_context(lifespan(info))
        self._writer_task = self._spawn(self.writer.run(), "bulkjobs-writer")
        await self._recover()
        self._intake_tasks = [
            self._spawn(self.scheduler.run(), "bulkjobs-scheduler"),
            self._spawn(self._purge_loop(), "bulkjobs-purger"),
            self._spawn(self.janitor.run(), "bulkjobs-janitor"),
            # Stopped first too: undelivered messages stay in the outbox for the next start.
            self._spawn(self.webhooks.run(), "bulkjobs-webhooks"),
        ]
        self._tasks = [
            self._spawn(self.workers.run_worker(), f"bulkjobs-worker-{i}")
            for i in range(self.workers.size)
        ]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_crash)
        return task

    async def _recover(self) -> None:
        jobs = await self.store.unfinished_jobs()
        for job in jobs:
            await self._resume(job)
        if jobs:
            logger.info("resumed %d unfinished jobs", len(jobs))

    async def _resume(self, job: Job) -> None:
        op = self.registry.get(job.operation)
        if op is None:
            error = JobError("unknown_operation", f"operation {job.operation!r} is not registered")
            await self.writer.put(Transition(job.pk, JobStatus.FAILED, error, cancel_pending=True))
            return
        run = self.scheduler.admit(job, op)
        if job.cancel_requested_at is not None:
            self.scheduler.request_stop(run, StopRequest(JobStatus.CANCELLED))

    # -- commit callback ---------------------------------------------------

    def _on_commit(self, jobs: list[Job]) -> None:
        self.webhooks.notify()  # wakes the dispatcher only when the outbox grew
        for job in jobs:
            self.hub.publish(job)
            if job.is_terminal:
                self.scheduler.forget(job)
                _log_finished(job)

    # -- purge -------------------------------------------------------------

    def wake_purger(self) -> None:
        self._purge_wake.set()

    def _on_removed(self, job: Job) -> None:
        self.hub.forget(job.id)
        self.wake_purger()

    async def _purge_loop(self) -> None:
        while True:
            removed = await self.store.purge_step(self.settings.purge_batch_items)
            if removed:
                # A short pause, not just a yield: the writer gets the lock between batches.
                await asyncio.sleep(self.settings.purge_pause_ms / 1000)
                continue
            self._purge_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PURGE_IDLE_S):
                    await self._purge_wake.wait()

    # -- stop --------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """True while every background task is still running."""
        tasks = [self._writer_task, *self._intake_tasks, *self._tasks]
        return all(t is not None and not t.done() for t in tasks)

    def begin_drain(self) -> None:
        """Refuse new jobs and close event streams; processing goes on until `stop`."""
        self.draining = True
        self.hub.close_all()

    async def stop(self) -> None:
        """Drain in order; see module doc. Safe to call once."""
        self.begin_drain()
        await _cancel_all(self._intake_tasks)
        await self._wait_idle(self.settings.shutdown_grace_s)
        await _cancel_all(self._tasks)
        self._tasks.clear()
        self.handler_threads.shutdown(wait=False, cancel_futures=True)  # hung ones run on
        await self._stop_writer()
        await self._lifespans.aclose()
        await self.store.close()

    async def _stop_writer(self) -> None:
        """Let the writer flush what is queued; cancel it if it cannot within the grace."""
        task = self._writer_task
        if task is None:
            return
        try:
            async with asyncio.timeout(self.settings.shutdown_grace_s + _FLUSH_EXTRA_S):
                if not task.done():
                    await self.writer.close()
                await asyncio.shield(task)
        except TimeoutError:
            logger.error("the writer did not flush in time; unflushed items rerun next start")
        except Exception:
            logger.exception("the writer had stopped with an error")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _wait_idle(self, grace_s: float) -> None:
        self._drop_queued_chunks()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self.workers.wait_idle()
        if self.workers.busy:
            logger.warning(
                "%d workers still busy after %.1fs; cancelling", self.workers.busy, grace_s
            )

    def _drop_queued_chunks(self) -> None:
        # Queued chunks have not started: their items stay pending and resume next start.
        while not self.queue.empty():
            run, _chunk = self.queue.get_nowait()
            self.queue.task_done()
            run.in_flight -= 1


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            logger.error("task %s ended with %r", task.get_name(), result)


def _log_finished(job: Job) -> None:
    logger.info(
        "job %s %s: %d succeeded, %d failed, %d cancelled",
        job.id,
        job.status.value,
        job.succeeded,
        job.failed,
        job.cancelled,
        extra={"event": "job.finished", "job_id": job.id, "tenant": job.tenant},
    )


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s crashed", task.get_name(), exc_info=task.exception())
