"""The dispatcher: claims leases from the store and cuts them into chunks for workers.

The store decides what runs next (fair per tenant, then per job) and who holds it (a
lease with an owner and an expiry); this process only remembers the leases it is
working, as `LeaseRun`s, so that workers can stop early when their job is asked to
stop. Leases span up to `span_items` items, so that one claim feeds several chunks; a
lease of an operation with a concurrency limit (which counts leases, across every
process) is worked by one worker, chunk after chunk, so that one claim and one
release serve several batches without ever running two of them at once.

Pacing keeps local look-ahead short in time, not just in chunks: from the seconds per
item the workers observe, a lease holds about `AHEAD_S` of work (at least one chunk),
and chunks wait for the queue until less than `AHEAD_S` of work is queued. Fast
operations get long leases and a full queue; slow ones are claimed one chunk at a
time, when a worker is about to need it, so the store's tenant-then-job order decides
what runs next instead of whatever was prefetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

import attrs

from ..models import Job, WorkItem, utcnow
from ..registry import Operation, Registry
from ..store import Lease, OperationLimits, Store
from ..store.base import Claimed
from ..store.sqlite import SQLiteStore

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class LeaseRun:
    """One lease this process works: its job, its operation and its chunks."""

    lease_pk: int
    job_id: str
    pk: int
    tenant: str
    operation: Operation
    chunk_s: float = 0.0  # the estimated seconds of one chunk when it was queued
    chunks: int = 0
    queued: int = 0  # chunks handed to the work queue so far
    settled: int = 0  # chunk results counted by the writer
    stopping: bool = False
    #: Validate items again before building them: the job was accepted by another
    #: process, or before this one loaded its operations (their item types may differ).
    revalidate: bool = True


Chunk = tuple[LeaseRun, list[WorkItem]]


#: Work a lease holds and work queued ahead of the workers, in seconds.
AHEAD_S = 0.1
#: What one chunk of an operation is assumed to take before any has been timed.
UNTIMED_CHUNK_S = 1.0
_EWMA = 0.2


class Pace:
    """Seconds per item of each operation, as the workers observe them (EWMA)."""

    def __init__(self) -> None:
        self._item_s: dict[str, float] = {}

    def observe(self, operation: str, item_s: float) -> None:
        old = self._item_s.get(operation)
        self._item_s[operation] = item_s if old is None else old + _EWMA * (item_s - old)

    def chunk_s(self, op: Operation) -> float:
        item_s = self._item_s.get(op.name)
        return UNTIMED_CHUNK_S if item_s is None else item_s * op.options.batch_size

    def limits(self, registry: Registry, span_items: int) -> dict[str, OperationLimits]:
        """How the store may lease each registered operation's items now."""
        limits = {}
        for op in registry.operations:
            size = op.options.batch_size
            most = max(1, span_items // size)
            chunks = min(most, int(AHEAD_S / self.chunk_s(op)))
            limits[op.name] = OperationLimits(size * max(1, chunks), op.options.concurrency)
        return limits


@attrs.define
class DispatchConfig:
    owner: str
    lease_s: float = 30.0
    span_items: int = 2000
    poll_s: float = 1.0  # look for expired leases and others' work this often when idle


class Dispatcher:
    """Claims leases while the work queue has room; see module doc."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        queue: asyncio.Queue[Chunk],
        config: DispatchConfig,
        on_jobs: Callable[[list[Job]], None],
        on_abandoned: Callable[[LeaseRun], Awaitable[None]],
    ) -> None:
        self._store = store
        self._queue = queue
        self.config = config
        self._on_jobs = on_jobs
        self._on_abandoned = on_abandoned
        self._registry = registry
        self.pace = Pace()
        self._runs: dict[int, LeaseRun] = {}
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._queued_s = 0.0  # estimated seconds of work in the queue
        # Jobs accepted from now on were validated by these very operations, when this
        # process owns its store alone (SQLite): see LeaseRun.revalidate.
        self._validated_since = utcnow() if isinstance(store, SQLiteStore) else None

    def wake(self) -> None:
        """Something may be claimable now (a submit, a settled lease, a stop)."""
        self._wake.set()

    @property
    def leases(self) -> list[int]:
        """The leases this process works (the ones its heartbeat renews)."""
        return list(self._runs)

    @property
    def working_jobs(self) -> set[int]:
        """The jobs (pks) this process works a lease of."""
        return {run.pk for run in self._runs.values()}

    def runs_for(self, job_pk: int) -> list[LeaseRun]:
        """The leases of one job this process is working."""
        return [run for run in self._runs.values() if run.pk == job_pk]

    def stop_jobs(self, job_pks: Iterable[int]) -> None:
        """Workers of these jobs stop between items; their leases settle as stopped."""
        wanted = set(job_pks)
        for run in self._runs.values():
            if run.pk in wanted:
                run.stopping = True

    def lost(self, lease_pks: Iterable[int]) -> None:
        """The store gave these leases to someone else: stop working them."""
        for pk in lease_pks:
            run = self._runs.pop(pk, None)
            if run is not None:
                run.stopping = True

    def settled(self, run: LeaseRun) -> None:
        """The writer committed the lease's last chunk."""
        self._runs.pop(run.lease_pk, None)
        self.wake()

    async def run(self) -> None:
        """Claim and hand out until cancelled."""
        await self._abandon_unqueued()  # restarted: what the last loop could not hand out
        while True:
            self._wake.clear()
            await self._wait_room()  # claim as late as possible: the store decides who's next
            claimed = await self._claim()
            if claimed.settled:
                self._on_jobs(claimed.settled)
            if claimed.lease is None:
                await self._idle()
                continue
            await self._hand_out(claimed.lease)

    async def _claim(self) -> Claimed:
        cfg = self.config
        limits = self.pace.limits(self._registry, cfg.span_items)
        return await self._store.claim(cfg.owner, limits, lease_s=cfg.lease_s, now=utcnow())

    async def _wait_room(self) -> None:
        """Until the queue has a free slot and less than `AHEAD_S` of work queued."""
        while self._queue.full() or (self._queued_s >= AHEAD_S and not self._queue.empty()):
            self._room.clear()
            await self._room.wait()

    def took(self, run: LeaseRun) -> None:
        """A worker took one of the run's chunks from the queue."""
        self._queued_s = max(0.0, self._queued_s - run.chunk_s)
        self._room.set()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.poll_s):
                await self._wake.wait()

    async def _abandon_unqueued(self) -> None:
        for run in list(self._runs.values()):
            if run.queued < run.chunks:
                # The chunks never queued stay pending; releasing the lease lets the
                # store lease them again (a job with no lease resets its frontier).
                run.chunks = run.queued + 1
                await self._on_abandoned(run)

    def _run_of(self, lease: Lease) -> LeaseRun:
        job = lease.job
        op = self._registry.get(job.operation)
        assert op is not None, "claimed an operation that is not registered"
        chunks = -(-len(lease.items) // op.options.batch_size)
        chunk_s = self.pace.chunk_s(op)
        if op.options.concurrency:
            chunk_s *= chunks  # queued as one entry: see _hand_out
        run = LeaseRun(lease.pk, job.id, job.pk, job.tenant, op, chunk_s, chunks)
        run.stopping = job.stop_requested is not None
        since = self._validated_since
        run.revalidate = since is None or job.created_at < since
        return run

    async def _hand_out(self, lease: Lease) -> None:
        self._on_jobs([lease.job])
        run = self._run_of(lease)
        self._runs[lease.pk] = run  # before the first await: a restart finds it
        if run.operation.options.concurrency:
            # The limit counts leases: a lease of several chunks is one queue entry,
            # worked chunk after chunk by one worker (WorkerPool), never two at once.
            await self._wait_room()
            self._queue.put_nowait((run, list(lease.items)))
            self._queued_s += run.chunk_s
            run.queued = run.chunks
            return
        size = run.operation.options.batch_size
        for i in range(0, len(lease.items), size):
            await self._wait_room()
            self._queue.put_nowait((run, list(lease.items[i : i + size])))
            self._queued_s += run.chunk_s
            run.queued += 1

    def drop_queued(self) -> None:
        """Forget chunks not started (shutdown): their items stay leased to us and are
        claimed again at the next start, or by another process once the lease expires."""
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        self._queued_s = 0.0
