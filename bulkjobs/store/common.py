"""What every backend does the same way: the webhook outbox's methods (served by the
backend's outbox object) and the shape of a maintenance pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import attrs

from ..models import Job, JobError, NewItems
from ..outbox import AttemptRecord, Deliveries, Due
from .base import Maintenance, Staging, WebhookStore

logger = logging.getLogger(__name__)


@attrs.frozen
class Span:
    """A lease taken inside a transaction; its items are read after the commit."""

    lease_pk: int
    job: Job
    first: int
    last: int


def threshold_error(job: Job) -> JobError:
    """Why a job stops when more items failed than its threshold allows."""
    msg = f"{job.failed} items failed, more than the threshold of {job.max_failed} for the job"
    return JobError("failure_threshold_exceeded", msg)


class StagedItems:
    """A `Staging` whose batches a backend writes with `insert(pk, first_idx, items)`."""

    def __init__(self, pk: int, insert: Callable[[int, int, NewItems], Awaitable[None]]) -> None:
        self.pk = pk
        self.adopted = False  # set by create_job once its transaction committed
        self._insert = insert
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    async def add(self, items: NewItems) -> None:
        if len(items):
            await self._insert(self.pk, self._count, items)
            self._count += len(items)


def staged_pk(items: NewItems | Staging) -> int | None:
    """The job key of staged items (None for items given whole); only this store's."""
    if isinstance(items, StagedItems):
        return items.pk
    if isinstance(items, NewItems):
        return None
    raise TypeError(f"items staged elsewhere: {items!r}")


def adopted(items: NewItems | Staging) -> None:
    """Mark staged items as the job's once the creating transaction committed."""
    if isinstance(items, StagedItems):
        items.adopted = True


OutboxT = TypeVar("OutboxT", bound=WebhookStore)


class BackendBase(Generic[OutboxT]):
    """Shared by `SQLiteStore` and `PostgresStore`; each sets `_outbox` and implements
    the three maintenance steps in its own dialect."""

    _outbox: OutboxT

    # -- the webhook outbox (WebhookStore) --------------------------------------

    async def due(
        self, now: datetime, *, after: tuple[int, int] | None, limit: int, upcoming: int = 0
    ) -> Due:
        return await self._outbox.due(now, after=after, limit=limit, upcoming=upcoming)

    async def take(self, message_pk: int, now: datetime, lease_s: float) -> bool:
        return await self._outbox.take(message_pk, now, lease_s)

    async def record(self, message_pk: int, rec: AttemptRecord) -> None:
        await self._outbox.record(message_pk, rec)

    async def deliveries(
        self, job_pk: int, *, after_pk: int, limit: int, message_id: str | None = None
    ) -> Deliveries:
        return await self._outbox.deliveries(
            job_pk, after_pk=after_pk, limit=limit, message_id=message_id
        )

    async def redeliver(self, job_pk: int, message_id: str, now: datetime) -> bool:
        return await self._outbox.redeliver(job_pk, message_id, now)

    # -- uploads in progress ----------------------------------------------------

    @asynccontextmanager
    async def staging(self) -> AsyncIterator[StagedItems]:
        staged = StagedItems(await self._stage_begin(), self._stage_insert)
        try:
            yield staged
        finally:
            if not staged.adopted:
                await asyncio.shield(self._discard(staged.pk))

    async def _discard(self, pk: int) -> None:
        try:
            await self._stage_discard(pk)
        except Exception:  # closed or unreachable: the next start (or sweep) removes them
            logger.warning("staged items of upload %d left for the next sweep", pk)

    async def _stage_begin(self) -> int:
        raise NotImplementedError

    async def _stage_insert(self, pk: int, first_idx: int, items: NewItems) -> None:
        raise NotImplementedError

    async def _stage_discard(self, pk: int) -> None:
        raise NotImplementedError

    # -- maintenance -------------------------------------------------------------

    async def maintain(
        self, now: datetime, *, expire_jobs: int, purge_items: int, keep_s: int
    ) -> Maintenance:
        expired: list[Job] = []
        if expire_jobs:
            expired = await self._expire(now, expire_jobs, now + timedelta(seconds=keep_s))
        purged = await self._purge_step(purge_items) if purge_items else 0
        swept = await self._sweep(now) if expire_jobs else 0
        return Maintenance(expired, purged, swept)

    async def _expire(self, now: datetime, limit: int, keep_until: datetime) -> list[Job]:
        raise NotImplementedError

    async def _purge_step(self, batch: int) -> int:
        raise NotImplementedError

    async def _sweep(self, now: datetime) -> int:
        raise NotImplementedError
