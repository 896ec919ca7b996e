"""Retention: the janitor that removes expired jobs, and the tombstones they leave.

A finished job expires at `completed_at + ttl_s`. The janitor removes expired job rows
(each leaves a tombstone, so its URL answers 410 for `tombstone_s`, then 404) and hands
their items to the engine's purger, which deletes them in small batches between the
writer's commits. It also drops tombstones and idempotency keys past their time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from ..errors import BulkJobsError, job_not_found
from ..models import Job, format_ts, utcnow
from ..store import Store

logger = logging.getLogger(__name__)


class Janitor:
    """Sweeps expired jobs every `interval_s`; `sweep()` runs one pass (tests call it)."""

    def __init__(
        self,
        store: Store,
        *,
        tombstone_s: int,
        interval_s: float,
        batch_jobs: int,
        on_removed: Callable[[Job], None],
    ) -> None:
        self.store = store
        self.tombstone_s = tombstone_s
        self.interval_s = interval_s
        self.batch_jobs = batch_jobs
        self._on_removed = on_removed
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Sweep, then sleep until the interval ends or `wake()` is called; forever."""
        while True:
            self._wake.clear()  # cleared before the pass: a wake() during it is kept
            waiters, self._waiters = self._waiters, []
            try:
                await self.sweep()
            except Exception:  # a failed sweep is retried next interval; the loop lives on
                logger.exception("janitor sweep failed")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()

    async def wait_swept(self) -> None:
        """Wake the janitor and wait until its next pass is over."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.wake()
        await waiter

    async def sweep(self, now: datetime | None = None) -> int:
        """Remove every job expired by `now`; return how many went."""
        now = now or utcnow()
        removed = 0
        while batch := await self.store.expired_jobs(now, self.batch_jobs):
            for job in batch:
                await self.remove(job, "expired", now)
            removed += len(batch)
        dropped = await self.store.sweep_records(now)
        if removed or dropped:
            logger.info("janitor removed %d expired jobs, %d old records", removed, dropped)
        return removed

    async def remove(self, job: Job, reason: str, now: datetime | None = None) -> None:
        """Delete one job now (items follow in batches) and leave its tombstone."""
        now = now or utcnow()
        keep_until = now + timedelta(seconds=self.tombstone_s)
        await self.store.remove_job(job, reason, now, keep_until)
        self._on_removed(job)


async def missing_job(store: Store, job_id: str, tenant: str) -> BulkJobsError:
    """410 for a removed job still within its tombstone period, else 404."""
    stone = await store.get_tombstone(job_id)
    if stone is None or stone.tenant != tenant or stone.keep_until <= utcnow():
        return job_not_found(job_id)
    verb = "expired and was removed" if stone.reason == "expired" else "was deleted"
    return BulkJobsError(
        f"job_{stone.reason}",
        f"Job {job_id} {verb} at {format_ts(stone.deleted_at)}.",
        deleted_at=format_ts(stone.deleted_at),
    )
