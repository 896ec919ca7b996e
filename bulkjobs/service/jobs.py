"""The job service: what the HTTP layer can ask of the engine.

Submit, read, list, cancel, delete, each raising `BulkJobsError` with a catalog code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
from collections.abc import AsyncGenerator
from typing import Generic, TypeVar

import attrs

from ..errors import BulkJobsError
from ..models import ItemRecord, ItemStatus, Job, JobStatus, new_job_id, utcnow
from ..registry import Operation
from ..store import JobFilter
from ..store.base import ResultRow
from .engine import Engine
from .idempotency import check_key, matching_job_id, new_record, request_hash
from .intake import IntakeLimits, Submission, parse_body, prepare
from .limits import DiskGuard, RateLimiter, check_active_jobs
from .results import parse_status_filter, require_downloadable, result_pages
from .retention import missing_job
from .scheduler import StopRequest
from .webhooks import WebhookService

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Bodies larger than this are parsed and validated in a thread, off the event loop.
THREAD_INTAKE_BYTES = 256 * 1024
MAX_PAGE = 1000


@attrs.frozen
class Page(Generic[T]):
    data: list[T]
    next_cursor: str | None


def encode_cursor(kind: str, value: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None) -> int | None:
    """The position in an opaque cursor; `invalid_cursor` when it is not ours."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = text.partition(":")
        if prefix != kind:
            raise ValueError(prefix)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BulkJobsError("invalid_cursor", "The cursor is not valid for this list.") from None


class JobService:
    """Use cases over the engine; the only thing the web layer talks to."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        s = engine.settings
        self.limits = IntakeLimits(
            max_items=s.max_items,
            default_ttl_s=s.default_ttl_s,
            min_ttl_s=s.min_ttl_s,
            max_ttl_s=s.max_ttl_s,
        )
        self._reserved_items = 0
        self._reserved_jobs: collections.Counter[str] = collections.Counter()
        self._rate = RateLimiter(s.submit_rate_per_s, s.submit_burst)
        self._disk = DiskGuard(s.db_path, s.min_free_disk_bytes)
        self.webhooks = WebhookService(
            engine.store.webhooks,
            engine.webhooks,
            allow_private=s.webhook_allow_private,
            progress_interval_s=s.webhook_progress_interval_s,
        )
        self._retry_of: dict[str, str | None] = {}  # of active jobs only: see lineage()

    # -- submit ------------------------------------------------------------

    async def submit(self, raw: bytes, tenant: str) -> Job:
        """Validate, store durably, admit to the scheduler; return the pending job."""
        self._check_admission(tenant)
        sub = await self._prepare(raw)
        n = len(sub.rows)
        self._reserve(n, tenant)
        try:
            return await self._store_and_admit(sub, tenant)
        finally:
            self._release(n, tenant)

    def _check_admission(self, tenant: str) -> None:
        """Cheap checks before any parsing: draining, submit rate, disk space."""
        if self.engine.draining:
            raise BulkJobsError("shutting_down", "The server is shutting down.", retry_after_s=5)
        self._rate.take(tenant)
        self._disk.check()

    async def _prepare(self, raw: bytes) -> Submission:
        if len(raw) < THREAD_INTAKE_BYTES:
            return prepare(self.engine.registry, parse_body(raw), self.limits)

        def work() -> Submission:
            return prepare(self.engine.registry, parse_body(raw), self.limits)

        return await asyncio.to_thread(work)

    def _reserve(self, n: int, tenant: str) -> None:
        """Hold room for a job of n items until it is admitted (or refused)."""
        active = self.engine.scheduler.active_for(tenant) + self._reserved_jobs[tenant]
        check_active_jobs(active, self.engine.settings.max_active_jobs)
        backlog = self.engine.scheduler.backlog_items + self._reserved_items
        if backlog + n > self.engine.settings.max_pending_items:
            raise BulkJobsError(
                "server_busy",
                f"{backlog} items are waiting; this job of {n} would exceed the limit.",
                retry_after_s=max(1, self.engine.settings.retry_after_s),
            )
        self._reserved_items += n
        self._reserved_jobs[tenant] += 1

    def _release(self, n: int, tenant: str) -> None:
        self._reserved_items -= n
        self._reserved_jobs[tenant] -= 1
        if not self._reserved_jobs[tenant]:
            del self._reserved_jobs[tenant]

    async def _store_and_admit(self, sub: Submission, tenant: str) -> Job:
        now = utcnow()
        job = Job(
            id=new_job_id(),
            operation=sub.operation.name,
            status=JobStatus.PENDING,
            total_items=len(sub.rows),
            tenant=tenant,
            created_at=now,
            updated_at=now,
            ttl_s=sub.ttl_s,
            seq=1,
        )
        hook = await self.webhooks.vet(sub.webhook)
        pk = await self.engine.store.create_job(job, sub.rows, hook)
        job = attrs.evolve(job, pk=pk)
        self._accept(job, sub.operation)
        return job

    # -- read --------------------------------------------------------------

    async def get(self, job_id: str, tenant: str) -> Job:
        job = await self.engine.store.get_job(job_id)
        if job is None or job.tenant != tenant:
            raise await missing_job(self.engine.store, job_id, tenant)
        return job

    async def list_jobs(
        self,
        *,
        tenant: str,
        status: str | None = None,
        operation: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Job]:
        flt = JobFilter(tenant=tenant, status=_job_status(status), operation=operation)
        before = decode_cursor("j", cursor)
        rows = await self.engine.store.list_jobs(flt, before_pk=before, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor("j", rows[-1].pk) if more else None
        return Page(rows, nxt)

    async def list_items(
        self,
        job_id: str,
        *,
        tenant: str,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[ItemRecord]:
        job = await self.get(job_id, tenant)
        after = decode_cursor("i", cursor)
        items = await self.engine.store.list_items(
            job.pk,
            status=_item_status(status),
            after_index=-1 if after is None else after,
            limit=limit + 1,
        )
        more = len(items) > limit
        items = items[:limit]
        return Page(items, encode_cursor("i", items[-1].index) if more else None)

    # -- change ------------------------------------------------------------

    async def cancel(self, job_id: str, tenant: str) -> Job:
        """Stop dispatching; items being worked finish, the rest become cancelled."""
        job = await self.get(job_id, tenant)
        _require_active(job)
        run = self.engine.scheduler.get(job.id)
        if run is None:
            raise BulkJobsError(
                "shutting_down", "The job cannot be cancelled now.", retry_after_s=5
            )
        marked = await self.engine.store.request_cancel(job.pk, utcnow())
        if marked is not None:
            self.engine.hub.publish(marked)
        self.engine.scheduler.request_stop(run, StopRequest(JobStatus.CANCELLED))
        try:
            async with asyncio.timeout(self.engine.settings.cancel_wait_s):
                final = await asyncio.shield(run.finished)
        except TimeoutError:
            return await self.get(job_id, tenant)  # still winding down: 202 to the client
        if final.status is not JobStatus.CANCELLED:
            _require_active(final)
        return final

    async def delete(self, job_id: str, tenant: str) -> None:
        job = await self.get(job_id, tenant)
        if not job.is_terminal:
            raise BulkJobsError(
                "job_not_terminal", f"Job {job_id} is {job.status.value}; cancel it first."
            )
        await self.engine.janitor.remove(job, "deleted")

    # -- idempotent submit, retry, lineage, results ---------------------------

    async def submit_once(self, raw: bytes, key: str, tenant: str) -> tuple[Job, bool]:
        """Submit under an `Idempotency-Key`: (the job, True when it was created before)."""
        key = check_key(key)
        digest = await asyncio.to_thread(request_hash, raw) if len(raw) > 1 << 20 else None
        digest = digest or request_hash(raw)
        found = await self.engine.store.get_idempotency(tenant, key)
        if found is not None and found.expires_at > utcnow():
            return await self.get(matching_job_id(found, digest), tenant), True
        self._check_admission(tenant)
        sub = await self._prepare(raw)
        self._reserve(len(sub.rows), tenant)
        try:
            job = _new_job(sub.operation.name, len(sub.rows), tenant, sub.ttl_s)
            ttl_s = self.engine.settings.idempotency_ttl_s
            record = new_record(tenant, key, digest, job.id, job.created_at, ttl_s)
            hook = await self.webhooks.vet(sub.webhook)
            found = await self.engine.store.create_job_once(job, sub.rows, record, hook)
        finally:
            self._release(len(sub.rows), tenant)
        if found is not None:  # a concurrent twin stored it first
            return await self.get(matching_job_id(found, digest), tenant), True
        return await self._admit(record.job_id), False

    async def retry(self, job_id: str, tenant: str) -> Job:
        """A new job of the same operation from the failed items of a finished job."""
        source = await self.get(job_id, tenant)
        op = self._retryable(source)
        self._check_admission(tenant)
        self._reserve(source.failed, tenant)
        try:
            job = _new_job(op.name, source.failed, tenant, source.ttl_s)
            await self.engine.store.create_retry_job(job, source)
        finally:
            self._release(source.failed, tenant)
        return await self._admit(job.id)

    def _retryable(self, source: Job) -> Operation:
        if not source.is_terminal:
            raise BulkJobsError(
                "job_not_terminal",
                f"Job {source.id} is {source.status.value}; retry its failures once it finishes.",
                job_status=source.status.value,
            )
        if source.failed == 0:
            raise BulkJobsError("no_failed_items", f"Job {source.id} has no failed items.")
        op = self.engine.registry.get(source.operation)
        if op is None:
            raise BulkJobsError("unknown_operation", f"No operation named {source.operation!r}.")
        if self.engine.draining:
            raise BulkJobsError("shutting_down", "The server is shutting down.", retry_after_s=5)
        return op

    def _accept(self, job: Job, op: Operation) -> None:
        """A stored job goes live: announced, counted, scheduled."""
        self.engine.hub.publish(job)
        self.engine.metrics.jobs_submitted.labels(op.name).inc()
        logger.info(
            "job %s accepted: %s, %d items",
            job.id,
            op.name,
            job.total_items,
            extra={"event": "job.accepted", "job_id": job.id, "tenant": job.tenant},
        )
        self.engine.scheduler.admit(job, op)

    async def _admit(self, job_id: str) -> Job:
        stored = await self.engine.store.get_job(job_id)
        assert stored is not None, f"{job_id} vanished right after it was stored"
        op = self.engine.registry.get(stored.operation)
        assert op is not None
        self._accept(stored, op)
        return stored

    async def lineage(self, job: Job) -> tuple[str | None, str | None]:
        """(the job this one retries, the newest job retrying this one)."""
        scheduler = self.engine.scheduler
        if job.is_terminal or scheduler.get(job.id) is None:
            return await self.engine.store.retry_links(job.id)
        # Only a finished job can be retried, and what a job retries never changes: an
        # active job's lineage is read once, not on every poll (a store round trip is
        # the slow part of a poll while workers keep the loop busy).
        if job.id not in self._retry_of:
            if len(self._retry_of) > 2 * scheduler.active_jobs + 64:
                self._retry_of = {k: v for k, v in self._retry_of.items() if scheduler.get(k)}
            self._retry_of[job.id] = (await self.engine.store.retry_links(job.id))[0]
        return self._retry_of[job.id], None

    async def results(
        self, job_id: str, *, tenant: str, status: str | None, partial: bool
    ) -> tuple[Job, AsyncGenerator[list[ResultRow], None]]:
        """The job and an iterator of its outcome pages; checked before any byte is sent."""
        flt = parse_status_filter(status)
        job = await self.get(job_id, tenant)
        require_downloadable(job, partial)
        return job, result_pages(self.engine.store, job, flt)


def _new_job(operation: str, total_items: int, tenant: str, ttl_s: int) -> Job:
    now = utcnow()
    return Job(
        id=new_job_id(),
        operation=operation,
        status=JobStatus.PENDING,
        total_items=total_items,
        tenant=tenant,
        created_at=now,
        updated_at=now,
        ttl_s=ttl_s,
        seq=1,
    )


def _require_active(job: Job) -> None:
    if job.is_terminal:
        detail = f"Job {job.id} is already {job.status.value}."
        raise BulkJobsError("job_terminal", detail, job_status=job.status.value)


def _job_status(value: str | None) -> JobStatus | None:
    return _enum(JobStatus, value, "status")  # type: ignore[return-value]


def _item_status(value: str | None) -> ItemStatus | None:
    return _enum(ItemStatus, value, "status")  # type: ignore[return-value]


def _enum(kind: type[JobStatus] | type[ItemStatus], value: str | None, name: str) -> object:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise BulkJobsError(
            "invalid_request", f"`{name}` must be one of: {allowed}.", parameter=name
        ) from None
