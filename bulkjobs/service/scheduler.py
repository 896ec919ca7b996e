"""The scheduler: hands chunks of pending items to workers, fairly across jobs.

Each active job is a `JobRun` in a round robin. On its turn a job gives one chunk
(`batch_size` items) to the bounded work queue, so a million-item job never starves a
ten-item one. Per-operation concurrency limits count chunks queued or being worked.
The scheduler also decides when a job is finished: all items dispatched and none in
flight (completed), or stopped on request (cancelled) or by its failure threshold
(failed); it then queues the transition behind the job's last outcomes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

import attrs

from ..models import Job, JobError, JobStatus, WorkItem
from ..registry import Operation
from ..store import Store
from .writer import ResultWriter, Transition

logger = logging.getLogger(__name__)


@attrs.frozen
class StopRequest:
    status: JobStatus
    error: JobError | None = None


@attrs.define(eq=False)
class JobRun:
    """The scheduler's view of one active job."""

    job_id: str
    pk: int
    operation: Operation
    remaining: int
    failed: int = 0
    max_failed: int | None = None
    tenant: str = "default"
    started: bool = False
    next_index: int = 0
    buffer: collections.deque[WorkItem] = attrs.field(factory=collections.deque)
    loaded_all: bool = False
    in_flight: int = 0
    stop: StopRequest | None = None
    finishing: bool = False
    finished: asyncio.Future[Job] = attrs.field(
        factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def stopping(self) -> bool:
        return self.stop is not None

    @property
    def dispatchable(self) -> bool:
        return not (self.stop or self.finishing or (self.loaded_all and not self.buffer))


Chunk = tuple[JobRun, list[WorkItem]]


def _threshold_stop(run: JobRun) -> StopRequest:
    ratio = run.operation.options.max_failed_ratio or 0.0
    msg = f"{run.failed} items failed, more than the threshold of {ratio:.0%} of the job"
    return StopRequest(JobStatus.FAILED, JobError("failure_threshold_exceeded", msg))


class Scheduler:
    """Round-robin dispatcher over active jobs; see module doc."""

    def __init__(
        self, store: Store, writer: ResultWriter, queue: asyncio.Queue[Chunk], page_items: int
    ) -> None:
        self._store = store
        self._writer = writer
        self._queue = queue
        self._page_items = page_items
        self._runs: collections.deque[JobRun] = collections.deque()
        self._by_id: dict[str, JobRun] = {}
        self._busy: collections.Counter[str] = collections.Counter()
        self._to_finish: set[JobRun] = set()
        self._wake = asyncio.Event()

    # -- bookkeeping called from the service and the workers -------------

    def admit(self, job: Job, operation: Operation) -> JobRun:
        """Add an active job to the rotation."""
        ratio = operation.options.max_failed_ratio
        run = JobRun(
            job.id,
            job.pk,
            operation,
            remaining=job.total_items - job.processed,
            failed=job.failed,
            max_failed=None if ratio is None else int(ratio * job.total_items),
            tenant=job.tenant,
        )
        run.started = job.status is JobStatus.RUNNING
        self._runs.append(run)
        self._by_id[job.id] = run
        self._wake.set()
        return run

    def get(self, job_id: str) -> JobRun | None:
        return self._by_id.get(job_id)

    @property
    def backlog_items(self) -> int:
        """Items accepted but not yet finished, across all active jobs."""
        return sum(r.remaining for r in self._by_id.values())

    @property
    def active_jobs(self) -> int:
        return len(self._by_id)

    def active_for(self, tenant: str) -> int:
        """Pending or running jobs of one tenant."""
        return sum(1 for r in self._by_id.values() if r.tenant == tenant)

    def request_stop(self, run: JobRun, stop: StopRequest) -> None:
        """Stop dispatching `run`; it finishes as `stop.status` once nothing is in flight."""
        if run.stop is None and not run.finishing:
            run.stop = stop
            self._finish_if_idle(run)

    def chunk_done(self, run: JobRun, size: int, failed: int) -> None:
        """A worker finished a chunk (its outcomes are already queued to the writer)."""
        run.in_flight -= 1
        run.remaining -= size
        run.failed += failed
        self._busy[run.operation.name] -= 1
        if run.max_failed is not None and run.failed > run.max_failed:
            self.request_stop(run, _threshold_stop(run))
        self._finish_if_idle(run)
        self._wake.set()

    def forget(self, job: Job) -> None:
        """The job's terminal transition is committed: drop it."""
        run = self._by_id.pop(job.id, None)
        if run is None:
            return
        with contextlib.suppress(ValueError):
            self._runs.remove(run)
        if not run.finished.done():
            run.finished.set_result(job)

    def _finish_if_idle(self, run: JobRun) -> None:
        done_dispatching = run.stop is not None or (run.loaded_all and not run.buffer)
        if done_dispatching and run.in_flight == 0 and not run.finishing:
            run.finishing = True
            self._to_finish.add(run)
            self._wake.set()

    # -- the dispatch loop ------------------------------------------------

    async def run(self) -> None:
        """Dispatch until cancelled."""
        while True:
            await self._queue_transitions()
            run = self._next_ready()
            if run is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._dispatch(run)

    async def _queue_transitions(self) -> None:
        while self._to_finish:
            run = self._to_finish.pop()
            stop = run.stop or StopRequest(JobStatus.COMPLETED)
            await self._writer.put(
                Transition(
                    run.pk,
                    stop.status,
                    error=stop.error,
                    cancel_pending=stop.status is not JobStatus.COMPLETED,
                )
            )

    def _next_ready(self) -> JobRun | None:
        for _ in range(len(self._runs)):
            run = self._runs[0]
            self._runs.rotate(-1)
            limit = run.operation.options.concurrency
            if run.dispatchable and (limit is None or self._busy[run.operation.name] < limit):
                return run
        return None

    async def _dispatch(self, run: JobRun) -> None:
        chunk = await self._take_chunk(run)
        if not chunk:
            self._finish_if_idle(run)
            return
        if not run.started:
            run.started = True
            await self._writer.put(Transition(run.pk, JobStatus.RUNNING))
        run.in_flight += 1
        self._busy[run.operation.name] += 1
        await self._queue.put((run, chunk))

    async def _take_chunk(self, run: JobRun) -> list[WorkItem]:
        size = run.operation.options.batch_size
        if len(run.buffer) < size and not run.loaded_all:
            page = await self._store.load_pending(
                run.pk, from_index=run.next_index, limit=max(self._page_items, size)
            )
            run.buffer.extend(page)
            if page:
                run.next_index = page[-1].index + 1
            if len(page) < max(self._page_items, size):
                run.loaded_all = True
        n = min(size, len(run.buffer))
        return [run.buffer.popleft() for _ in range(n)]
