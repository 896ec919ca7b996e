"""The engine: owns the store, the writer, the dispatcher, the workers and the hub,
starts them in order under supervision, and stops them in order.

The store is the authority: leases say which items are out and to whom, and every
status change is a guarded transition in the store. What this process keeps in
memory (the hub, the leases it works) is fed by committed changes only.

Stop order (SIGTERM): stop claiming → let chunks being worked finish within the
grace period → cancel what is left → flush the writer → close lifespans → close store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor

from ..config import Settings
from ..models import Job, JobError, JobStatus, utcnow
from ..registry import LifespanInfo, Registry
from ..states import IllegalTransition
from ..store import Backend, JobFilter, open_store
from ..store.base import JobWatch, Settled, StoreStats, Watched
from .dispatcher import Chunk, DispatchConfig, Dispatcher, LeaseRun
from .events import EventHub
from .metrics import Metrics
from .retention import Janitor
from .supervisor import Supervisor
from .webhooks import DispatcherConfig, WebhookDispatcher
from .webhooks.dispatcher import RenderJob, plain_job
from .webhooks.rules import due_message
from .workers import WorkerPool
from .writer import ChunkDone, ResultWriter

logger = logging.getLogger(__name__)

#: Time the writer gets beyond the grace period to flush outcomes at shutdown.
_FLUSH_EXTRA_S = 10.0
_BROKEN = JobError(
    "internal_error", "an internal error stopped the job; its unfinished items were cancelled"
)
#: Loops stopped before the workers drain; the writer stops after them.
_INTAKE_LOOPS = ("dispatcher", "purger", "janitor", "webhooks")
#: Stopped after the workers: a cancel made elsewhere still stops them while they drain.
_FEED_LOOP = "job-feed"


def new_owner_id() -> str:
    """This process's name on the leases it holds: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class Engine:
    """Everything that runs in the background of one bulkjobs process."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: Backend | None = None,
        *,
        render_job: RenderJob = plain_job,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store: Backend = store or open_store(
            settings.db_path,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.busy_timeout_ms,
            outbox_rule=due_message,
        )
        self.owner = new_owner_id()
        self.events_secret = b""
        self.metrics = Metrics()
        self.hub = EventHub(progress_interval_s=settings.progress_interval_ms / 1000)
        self.supervisor = Supervisor()
        self.writer = ResultWriter(
            self.store,
            self.owner,
            self._on_settled,
            max_rows=settings.commit_max_rows,
            linger_ms=settings.commit_linger_ms,
            metrics=self.metrics,
        )
        self.queue: asyncio.Queue[Chunk] = asyncio.Queue(settings.queue_size)
        self.dispatcher = Dispatcher(
            self.store,
            registry,
            self.queue,
            DispatchConfig(self.owner, settings.lease_s, settings.load_page_items),
            self.on_jobs,
            self._abandon,
        )
        # Sync handlers' own pool: hung ones cannot starve the loop's default pool.
        # Threads start lazily, on the first sync call; shut down in `stop`.
        self.handler_threads = ThreadPoolExecutor(
            settings.handler_pool_size, thread_name_prefix="bulkjobs-handler"
        )
        self.workers = WorkerPool(
            self.queue,
            self.dispatcher,
            self.writer,
            settings.workers,
            self.metrics,
            self.handler_threads,
            self._fail_broken,
        )
        self.draining = False
        self.janitor = Janitor(self.store, settings, on_removed=self._on_removed)
        self.webhooks = WebhookDispatcher(
            self.store, DispatcherConfig.from_settings(settings), render_job
        )
        self.metrics.watch_webhooks(self.webhooks.stats)
        self._lifespans = contextlib.AsyncExitStack()

    # -- start -------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, enter lifespans, fail orphaned jobs, start the loops."""
        self.events_secret = await self.store.open()
        info = LifespanInfo(db_path=self.settings.db_path)
        for lifespan in self.registry.lifespans:
            await self._lifespans.enter_async_context(lifespan(info))
        await self._fail_unknown_operations()
        sup = self.supervisor
        sup.start("writer", self.writer.run)
        sup.start("dispatcher", self.dispatcher.run)
        sup.start("leases", self._keep_leases)
        sup.start("job-feed", self._watch_jobs)
        sup.start("purger", self.janitor.run_purger)
        sup.start("janitor", self.janitor.run)
        # Stopped first too: undelivered messages stay in the outbox for the next start.
        sup.start("webhooks", self.webhooks.run)
        for i in range(self.workers.size):
            sup.start(f"worker-{i}", self.workers.run_worker)

    async def _fail_unknown_operations(self) -> None:
        """A job whose operation is no longer registered cannot start: it fails."""
        known = {op.name for op in self.registry.operations}
        active = await self.store.list_jobs(JobFilter(active=True), before_pk=None, limit=10**9)
        for job in active:
            if job.operation not in known:
                msg = f"operation {job.operation!r} is not registered"
                error = JobError("unknown_operation", msg)
                self.on_jobs([await self.store.stop(job.pk, JobStatus.FAILED, utcnow(), error)])
        if active:
            logger.info("%d unfinished jobs resume", len(active))

    async def _keep_leases(self) -> None:
        """Renew our leases well before they expire; stop work on jobs asked to stop."""
        lease_s = self.settings.lease_s
        while True:
            beat = await self.store.heartbeat(
                self.owner, self.dispatcher.leases, lease_s=lease_s, now=utcnow()
            )
            if beat.stopping:
                self.dispatcher.stop_jobs(beat.stopping)
            await asyncio.sleep(lease_s / 3)

    # -- committed changes -------------------------------------------------

    def on_jobs(self, jobs: list[Job]) -> None:
        """Committed job changes: announce them, and stop local work on stopping jobs."""
        stopping = []
        for job in jobs:
            self.hub.publish(job)
            if job.is_terminal:
                _log_finished(job)
                self.webhooks.notify()  # its terminal message may be in the outbox now
            elif job.stop_requested is not None:
                stopping.append(job.pk)
        if stopping:
            self.dispatcher.stop_jobs(stopping)

    # -- other processes' changes (PostgreSQL) ----------------------------------

    async def _watch_jobs(self) -> None:
        """Follow job changes other processes commit: NOTIFY, with a poll as safety net."""
        watch = JobWatch(
            watched=self._watched,
            on_jobs=self.on_remote_jobs,
            on_lag=self.metrics.notify_lag.observe,
            poll_s=self.settings.job_poll_s,
            listen=self.settings.pg_listen,
        )
        await self.store.watch_jobs(watch)

    def _watched(self) -> Watched:
        seqs, tenants = self.hub.watched()
        return Watched(seqs, self.dispatcher.working_jobs, tenants)

    def on_remote_jobs(self, jobs: list[Job]) -> None:
        """Jobs changed by any process (this one's own commits come back too; the hub
        ignores what it has seen): announce the ones someone here follows, stop local
        work on stopping jobs, claim new work at once, and send webhooks that may be due.
        The hub keeps only what it follows: each process does not hold the whole fleet's
        histories."""
        stopping = []
        for job in jobs:
            if self.hub.follows(job):
                self.hub.publish(job)
            if job.is_terminal:
                self.webhooks.notify()
            elif job.stop_requested is not None:
                stopping.append(job.pk)
            elif job.status is JobStatus.PENDING:
                self.dispatcher.wake()
        if stopping:
            self.dispatcher.stop_jobs(stopping)

    def _on_settled(self, settled: Settled, released: list[LeaseRun]) -> None:
        if settled.outbox_grew:
            self.webhooks.notify()
        for run in released:
            self.dispatcher.settled(run)
        self.dispatcher.lost(settled.lost_leases)
        self.on_jobs(settled.jobs)

    async def _abandon(self, run: LeaseRun) -> None:
        """Release a lease whose last chunks were never queued (their items stay pending)."""
        await self.writer.put(ChunkDone(run, []))

    async def _fail_broken(self, run: LeaseRun) -> None:
        with contextlib.suppress(IllegalTransition):
            job = await self.store.stop(run.pk, JobStatus.FAILED, utcnow(), _BROKEN)
            self.on_jobs([job])

    def _on_removed(self, job: Job) -> None:
        self.hub.forget(job.id)

    # -- health and stop -----------------------------------------------------

    async def check_writable(self) -> None:
        """Renew our leases: a write transaction, so it proves the store takes writes."""
        await self.store.heartbeat(
            self.owner, self.dispatcher.leases, lease_s=self.settings.lease_s, now=utcnow()
        )

    async def stats(self) -> StoreStats:
        """Counts of jobs, backlog and webhook messages, from the store."""
        return await self.store.stats()

    @property
    def dead_loops(self) -> dict[str, str]:
        """Background loops that died for good, with why."""
        return dict(self.supervisor.dead)

    @property
    def alive(self) -> bool:
        """True while every background loop still runs."""
        return not self.supervisor.dead

    def begin_drain(self) -> None:
        """Refuse new jobs and close event streams; processing goes on until `stop`."""
        self.draining = True
        self.hub.close_all()

    async def stop(self) -> None:
        """Drain in order; see module doc. Safe to call once."""
        self.begin_drain()
        await self.supervisor.stop(*_INTAKE_LOOPS)
        await self._wait_idle(self.settings.shutdown_grace_s)
        workers = [n for n in self.supervisor.names if n.startswith("worker-")]
        await self.supervisor.stop(*workers, _FEED_LOOP)
        self.handler_threads.shutdown(wait=False, cancel_futures=True)  # hung ones run on
        await self._stop_writer()
        await self.supervisor.stop()
        await self._lifespans.aclose()
        await self.store.close()

    async def _stop_writer(self) -> None:
        """Let the writer flush what is queued; cancel it if it cannot within the grace."""
        task = self.supervisor.task("writer")
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
        await self.supervisor.stop("writer")

    async def _wait_idle(self, grace_s: float) -> None:
        self.dispatcher.drop_queued()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self.workers.wait_idle()
        if self.workers.busy:
            logger.warning(
                "%d workers still busy after %.1fs; cancelling", self.workers.busy, grace_s
            )


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
