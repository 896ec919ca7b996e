"""The dispatcher: claims leases from the store and cuts them into chunks for workers.

The store decides what runs next (fair per tenant, then per job) and who holds it (a
lease with an owner and an expiry); this process only remembers the leases it is
working, as `LeaseRun`s, so that workers can stop early when their job is asked to
stop. A lease of an operation with a concurrency limit is one chunk (the limit counts
leases, across every process); others span up to `span_items` items, so that one
claim feeds several chunks.
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

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class LeaseRun:
    """One lease this process works: its job, its operation and its chunks."""

    lease_pk: int
    job_id: str
    pk: int
    tenant: str
    operation: Operation
    chunks: int = 0
    queued: int = 0  # chunks handed to the work queue so far
    settled: int = 0  # chunk results counted by the writer
    stopping: bool = False


Chunk = tuple[LeaseRun, list[WorkItem]]


def operation_limits(registry: Registry, span_items: int) -> dict[str, OperationLimits]:
    """How the store may lease each registered operation's items."""
    limits = {}
    for op in registry.operations:
        size = op.options.batch_size
        span = size if op.options.concurrency else size * max(1, span_items // size)
        limits[op.name] = OperationLimits(span, op.options.concurrency)
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
        self._limits = operation_limits(registry, config.span_items)
        self._runs: dict[int, LeaseRun] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something may be claimable now (a submit, a settled lease, a stop)."""
        self._wake.set()

    @property
    def leases(self) -> list[int]:
        """The leases this process works (the ones its heartbeat renews)."""
        return list(self._runs)

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
            claimed = await self._claim()
            if claimed.settled:
                self._on_jobs(claimed.settled)
            if claimed.lease is None:
                await self._idle()
                continue
            await self._hand_out(claimed.lease)

    async def _claim(self) -> Claimed:
        cfg = self.config
        return await self._store.claim(cfg.owner, self._limits, lease_s=cfg.lease_s, now=utcnow())

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
        run = LeaseRun(lease.pk, job.id, job.pk, job.tenant, op, chunks=chunks)
        run.stopping = job.stop_requested is not None
        return run

    async def _hand_out(self, lease: Lease) -> None:
        self._on_jobs([lease.job])
        run = self._run_of(lease)
        self._runs[lease.pk] = run  # before the first await: a restart finds it
        size = run.operation.options.batch_size
        for i in range(0, len(lease.items), size):
            await self._queue.put((run, list(lease.items[i : i + size])))
            run.queued += 1

    def drop_queued(self) -> None:
        """Forget chunks not started (shutdown): their items stay leased to us and are
        claimed again at the next start, or by another process once the lease expires."""
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
