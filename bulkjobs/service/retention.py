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

from ..config import Settings
from ..errors import BulkJobsError, job_not_found
from ..models import Job, format_ts, utcnow
from ..store import Store
from ..store.base import Tombstone

logger = logging.getLogger(__name__)

_PURGE_IDLE_S = 5.0


class Janitor:
    """Expires jobs every `janitor_interval_s` and purges removed jobs' items in batches;
    `sweep()` runs one expiry pass (tests call it)."""

    def __init__(
        self, store: Store, settings: Settings, *, on_removed: Callable[[Job], None]
    ) -> None:
        self.store = store
        self.settings = settings
        self._on_removed = on_removed
        self._wake = asyncio.Event()
        self._purge_wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Sweep, then sleep until the interval ends or `wake()` is called; forever."""
        while True:
            self._wake.clear()  # cleared before the pass: a wake() during it is kept
            waiters, self._waiters = self._waiters, []
            await self.sweep()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.janitor_interval_s):
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
        removed = swept = 0
        while True:
            done = await self.store.maintain(
                now,
                expire_jobs=self.settings.janitor_batch_jobs,
                purge_items=0,
                keep_s=self.settings.tombstone_s,
            )
            for job in done.expired:
                self._removed(job)
            removed += len(done.expired)
            swept += done.swept
            if len(done.expired) < self.settings.janitor_batch_jobs:
                break
        if removed or swept:
            logger.info("janitor removed %d expired jobs, %d old records", removed, swept)
        return removed

    async def remove(self, job: Job, reason: str, now: datetime | None = None) -> None:
        """Delete one job now (items follow in batches) and leave its tombstone."""
        now = now or utcnow()
        keep_until = now + timedelta(seconds=self.settings.tombstone_s)
        await self.store.remove_job(job, reason, now, keep_until)
        self._removed(job)

    def _removed(self, job: Job) -> None:
        self._on_removed(job)
        self._purge_wake.set()

    async def run_purger(self) -> None:
        """Delete removed jobs' items in small batches, pausing so the writer gets turns."""
        s = self.settings
        while True:
            done = await self.store.maintain(
                utcnow(), expire_jobs=0, purge_items=s.purge_batch_items, keep_s=s.tombstone_s
            )
            if done.purged:
                await asyncio.sleep(s.purge_pause_ms / 1000)
                continue
            self._purge_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PURGE_IDLE_S):
                    await self._purge_wake.wait()


def missing_job(job_id: str, tenant: str, stone: Tombstone | None) -> BulkJobsError:
    """410 for a removed job still within its tombstone period, else 404."""
    if stone is None or stone.tenant != tenant or stone.keep_until <= utcnow():
        return job_not_found(job_id)
    verb = "expired and was removed" if stone.reason == "expired" else "was deleted"
    return BulkJobsError(
        f"job_{stone.reason}",
        f"Job {job_id} {verb} at {format_ts(stone.deleted_at)}.",
        deleted_at=format_ts(stone.deleted_at),
    )
