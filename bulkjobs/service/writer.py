"""The results writer: the one task that writes item outcomes and job transitions.

Entries arrive in order on a bounded queue; the writer takes whatever has piled up
(up to `max_rows` outcome rows, lingering `linger_ms` for more) and writes it as one
transaction, so counters always agree with items and a commit never serves one item.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import attrs

from ..models import Job, JobError, JobStatus, utcnow
from ..store import JobChange, OutcomeRow, Store
from .metrics import Metrics

logger = logging.getLogger(__name__)

_RETRY_DELAY_S = 0.5


@attrs.define
class Outcomes:
    """Outcome rows of one chunk of one job."""

    job_pk: int
    rows: list[OutcomeRow]
    succeeded: int
    failed: int


@attrs.define
class Transition:
    """A job status change; `done` resolves with the committed job."""

    job_pk: int
    status: JobStatus
    error: JobError | None = None
    cancel_pending: bool = False
    done: asyncio.Future[Job] | None = None


Entry = Outcomes | Transition


@attrs.define
class _Pending:
    """Changes of one job accumulated inside one group commit."""

    succeeded: int = 0
    failed: int = 0
    start: bool = False
    status: JobStatus | None = None
    error: JobError | None = None
    cancel_pending: bool = False

    def to_change(self, pk: int) -> JobChange:
        return JobChange(
            job_pk=pk,
            succeeded=self.succeeded,
            failed=self.failed,
            start=self.start,
            status=self.status,
            error=self.error,
            cancel_pending=self.cancel_pending,
        )


@attrs.define
class CommitStats:
    commits: int = 0
    rows: int = 0
    seconds: float = 0.0


class ResultWriter:
    """Owns the write side of the store during processing; see module doc."""

    def __init__(
        self,
        store: Store,
        on_commit: Callable[[list[Job]], None],
        *,
        max_rows: int = 2000,
        linger_ms: float = 2.0,
        queue_size: int = 64,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._on_commit = on_commit
        self._max_rows = max_rows
        self._linger_s = linger_ms / 1000
        self._queue: asyncio.Queue[Entry | None] = asyncio.Queue(queue_size)
        self.stats = CommitStats()

    async def put(self, entry: Entry) -> None:
        """Queue an entry; waits while the queue is full (backpressure on workers)."""
        await self._queue.put(entry)

    async def transition(self, job_pk: int, status: JobStatus, **kw: object) -> Job:
        """Queue a transition and wait until it is committed."""
        done: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        await self.put(Transition(job_pk, status, done=done, **kw))  # type: ignore[arg-type]
        return await done

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        """Ask the loop to flush what is queued and return (await `run` afterwards)."""
        await self._queue.put(None)

    async def run(self) -> None:
        """Group-commit loop; returns after `close()` once everything is written."""
        while True:
            batch, closing = await self._collect()
            if batch:
                await self._flush(batch)
            if closing:
                return

    async def _collect(self) -> tuple[list[Entry], bool]:
        first = await self._queue.get()
        if first is None:
            return [], True
        batch: list[Entry] = [first]
        rows = _size(first)
        deadline = time.monotonic() + self._linger_s
        while rows < self._max_rows:
            entry = await self._next(deadline)
            if entry is _TIMEOUT:
                break
            if entry is None:
                return batch, True
            assert isinstance(entry, Outcomes | Transition)
            batch.append(entry)
            rows += _size(entry)
        return batch, False

    async def _next(self, deadline: float) -> Entry | object | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _TIMEOUT
        try:
            async with asyncio.timeout(remaining):
                return await self._queue.get()
        except TimeoutError:
            return _TIMEOUT

    async def _flush(self, batch: Sequence[Entry]) -> None:
        rows, changes = _merge(batch)
        while True:
            started = time.perf_counter()
            try:
                jobs = await self._store.commit(rows, changes, utcnow())
            except Exception:
                # Nothing was written (the transaction rolled back): try the same batch
                # again. Workers wait meanwhile on the bounded queue.
                logger.exception("group commit of %d rows failed; retrying", len(rows))
                await asyncio.sleep(_RETRY_DELAY_S)
                continue
            break
        elapsed = time.perf_counter() - started
        self.stats.commits += 1
        self.stats.rows += len(rows)
        self.stats.seconds += elapsed
        self._metrics.commit_rows.observe(len(rows))
        self._metrics.commit_seconds.observe(elapsed)
        _resolve(batch, jobs)
        try:
            self._on_commit(jobs)
        except Exception:
            # The commit stands; a failing listener must not stop the only writer.
            logger.exception("a commit listener failed")


_TIMEOUT = object()


def _size(entry: Entry) -> int:
    return len(entry.rows) if isinstance(entry, Outcomes) else 1


def _merge(batch: Sequence[Entry]) -> tuple[list[OutcomeRow], list[JobChange]]:
    rows: list[OutcomeRow] = []
    per_job: dict[int, _Pending] = {}
    for entry in batch:
        pending = per_job.setdefault(entry.job_pk, _Pending())
        if isinstance(entry, Outcomes):
            rows.extend(entry.rows)
            pending.succeeded += entry.succeeded
            pending.failed += entry.failed
        elif entry.status is JobStatus.RUNNING:
            pending.start = True
            pending.status = pending.status or JobStatus.RUNNING
        else:
            pending.status = entry.status
            pending.error = entry.error
            pending.cancel_pending = entry.cancel_pending
    return rows, [p.to_change(pk) for pk, p in per_job.items()]


def _resolve(batch: Sequence[Entry], jobs: list[Job]) -> None:
    by_pk = {j.pk: j for j in jobs}
    for entry in batch:
        if isinstance(entry, Transition) and entry.done is not None and not entry.done.done():
            entry.done.set_result(by_pk[entry.job_pk])
