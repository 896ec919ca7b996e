"""The job service: what the HTTP layer can ask of the engine.

Submit, read, list, cancel, delete, each raising `BulkJobsError` with a catalog code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
from collections.abc import AsyncGenerator, Mapping
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar

import attrs

from ..config import Settings
from ..errors import BulkJobsError
from ..models import ItemRow, ItemStatus, Job, JobStatus, NewItems, new_job_id, utcnow
from ..registry import Operation
from ..states import IllegalTransition
from ..store import JobFilter, NewJob, Staging, is_postgres_url
from ..store.base import IdempotencyRecord
from .engine import Engine
from .idempotency import check_key, matching_job_id, new_record
from .intake import IntakeLimits
from .limits import DiskGuard, RateLimiter, check_active_jobs
from .results import parse_status_filter, require_downloadable, result_pages
from .retention import missing_job
from .streaming import Emit, Parsed, Read, fingerprint, parse_json, parse_ndjson
from .upload import BodySource, Bridge, UploadSlots, chunks_of, read_all
from .webhooks import WebhookService

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Bodies announced at most this long are read whole and parsed in the loop; longer or
#: chunked ones are parsed in a thread while they arrive, and staged in batches.
THREAD_INTAKE_BYTES = 256 * 1024
MAX_PAGE = 1000


@attrs.frozen
class Form:
    """How a submission arrives: NDJSON (options in `params`) or JSON, and the size the
    request announced (None: chunked)."""

    ndjson: bool
    params: Mapping[str, str]
    length: int | None


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
        self._reserved_tenant_items: collections.Counter[str] = collections.Counter()
        self._rate = RateLimiter(s.submit_rate_per_s, s.submit_burst)
        self._disk = DiskGuard(s.db_path, s.min_free_disk_bytes)
        self._uploads = UploadSlots(s.max_uploads, s.max_uploads_per_tenant)
        # items that arrive before `operation` wait in a file beside the database
        self._spool_dir = None if is_postgres_url(s.db_path) else str(Path(s.db_path).parent)
        self.webhooks = WebhookService(
            engine.store,
            engine.webhooks,
            allow_private=s.webhook_allow_private,
            progress_interval_s=s.webhook_progress_interval_s,
        )
        self._retry_of: dict[str, str | None] = {}  # of active jobs only: see lineage()

    # -- submit ------------------------------------------------------------

    async def submit(
        self, body: BodySource, form: Form, tenant: str, key: str | None = None
    ) -> tuple[Job, bool]:
        """Validate, store durably, wake the dispatcher: (the pending job, False); with an
        `Idempotency-Key` already used, (the job it created, True)."""
        if key is not None:
            key = check_key(key)
            found = (await self.engine.store.find_job(idempotency=(tenant, key))).idempotency
            if found is not None and found.expires_at > utcnow():
                digest = await self._fingerprint(body, form)
                return await self.get(matching_job_id(found, digest), tenant), True
        self._check_admission(tenant)
        if form.length is not None and form.length <= THREAD_INTAKE_BYTES:
            self._take_rate(tenant)
            return await self._receive_small(body, form, tenant, key)
        with self._uploads.hold(tenant):  # a bounded number of big uploads at once
            self._take_rate(tenant)
            await self._admit(tenant, 1)  # refuse before reading what could not be stored
            return await self._receive(body, form, tenant, key)

    async def _receive_small(
        self, body: BodySource, form: Form, tenant: str, key: str | None
    ) -> tuple[Job, bool]:
        """A small body: read whole, parsed in the loop, stored in one transaction."""
        assert form.length is not None
        batches: list[NewItems] = []
        raw = await read_all(body, form.length)
        parsed = self._parse(form, chunks_of(raw), batches.append)
        items = NewItems(
            [i for batch in batches for i in batch.ids],
            [p for batch in batches for p in batch.payloads],
        )
        return await self._store(parsed, items, tenant, key)

    async def _receive(
        self, body: BodySource, form: Form, tenant: str, key: str | None
    ) -> tuple[Job, bool]:
        """A big body: parsed in a thread as it arrives, staged batch by batch."""
        async with self.engine.store.staging() as staged:
            bridge = Bridge(asyncio.get_running_loop(), body, staged)
            parsed = await bridge.run(partial(self._parse, form, bridge.read, bridge.emit))
            return await self._store(parsed, staged, tenant, key)

    def _parse(self, form: Form, read: Read, emit: Emit) -> Parsed:
        registry, limits, spool = self.engine.registry, self.limits, self._spool_dir
        if form.ndjson:
            return parse_ndjson(registry, limits, form.params, read, emit, spool)
        return parse_json(registry, limits, read, emit, spool)

    async def _store(
        self, parsed: Parsed, items: NewItems | Staging, tenant: str, key: str | None
    ) -> tuple[Job, bool]:
        job = _new_job(parsed.operation, parsed.count, tenant, parsed.ttl_s)
        record = None
        if key is not None:
            ttl_s = self.engine.settings.idempotency_ttl_s
            record = new_record(tenant, key, parsed.digest, job.id, job.created_at, ttl_s)
        hook = await self.webhooks.vet(parsed.webhook)
        try:
            return await self._create(NewJob(job, items, hook, record)), False
        except _Twin as twin:  # a concurrent twin stored it first
            return await self.get(matching_job_id(twin.record, parsed.digest), tenant), True

    async def _fingerprint(self, body: BodySource, form: Form) -> str:
        bridge = Bridge(asyncio.get_running_loop(), body)
        return await bridge.run(partial(fingerprint, form.ndjson, form.params, bridge.read))

    def _check_admission(self, tenant: str) -> None:
        """Cheap checks before any byte of the body is read: draining, health, disk."""
        if self.engine.draining:
            raise BulkJobsError("shutting_down", "The server is shutting down.", retry_after_s=5)
        if not self.engine.alive:
            dead = ", ".join(sorted(self.engine.dead_loops))
            raise BulkJobsError(
                "service_degraded",
                f"The server cannot run new jobs: its {dead} loop stopped.",
                retry_after_s=30,
            )
        self._disk.check()

    def _take_rate(self, tenant: str) -> None:
        self._rate.take(tenant)

    async def _create(self, new: NewJob) -> Job:
        """Admit against committed counts plus submits in flight here, then store."""
        n, tenant = new.job.total_items, new.job.tenant
        await self._admit(tenant, n)
        self._reserved_items += n
        self._reserved_tenant_items[tenant] += n
        self._reserved_jobs[tenant] += 1
        try:
            created = await self.engine.store.create_job(new)
        finally:
            self._release(n, tenant)
        if created.job is None:
            raise _Twin(created.existing)
        self._accept(created.job)
        return created.job

    async def _admit(self, tenant: str, n: int) -> None:
        """Refuse `n` more items when a cap would be passed (committed + in flight)."""
        stats = await self.engine.store.stats(tenant)
        active = stats.tenant_active_jobs + self._reserved_jobs[tenant]
        check_active_jobs(active, self.engine.settings.max_active_jobs)
        mine = self._reserved_tenant_items[tenant]
        check_tenant_quotas(
            self.engine.settings,
            n,
            backlog=stats.tenant_backlog_items + mine,
            stored=stats.tenant_stored_items + mine,
        )
        check_backlog(self.engine.settings, n, stats.backlog_items + self._reserved_items)

    def _release(self, n: int, tenant: str) -> None:
        self._reserved_items -= n
        self._reserved_tenant_items[tenant] -= n
        self._reserved_jobs[tenant] -= 1
        if not self._reserved_jobs[tenant]:
            del self._reserved_jobs[tenant]
            del self._reserved_tenant_items[tenant]

    # -- read --------------------------------------------------------------

    async def get(self, job_id: str, tenant: str) -> Job:
        found = await self.engine.store.find_job(job_id)
        job = found.job
        if job is None or job.tenant != tenant:
            raise missing_job(job_id, tenant, found.tombstone)
        if not job.is_terminal:
            self._retry_of[job.id] = found.retry_of
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
    ) -> Page[ItemRow]:
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
        return Page(items, encode_cursor("i", items[-1].idx) if more else None)

    # -- change ------------------------------------------------------------

    async def cancel(self, job_id: str, tenant: str) -> Job:
        """Stop the job: items being worked finish, the rest become cancelled."""
        job = await self.get(job_id, tenant)
        _require_active(job)
        try:
            job = await self.engine.store.stop(job.pk, JobStatus.CANCELLED, utcnow())
        except IllegalTransition:
            _require_active(await self.get(job_id, tenant))
            raise
        self.engine.on_jobs([job])
        self.engine.dispatcher.wake()
        deadline = asyncio.get_running_loop().time() + self.engine.settings.cancel_wait_s
        while not job.is_terminal:
            left = deadline - asyncio.get_running_loop().time()
            event = await self.engine.hub.wait_changed(job.id, job.seq, left) if left > 0 else None
            if event is None:
                return job  # still winding down: 202 to the client
            job = event.job
        if job.status is not JobStatus.CANCELLED:
            _require_active(job)
        return job

    async def delete(self, job_id: str, tenant: str) -> None:
        job = await self.get(job_id, tenant)
        if not job.is_terminal:
            raise BulkJobsError(
                "job_not_terminal", f"Job {job_id} is {job.status.value}; cancel it first."
            )
        await self.engine.janitor.remove(job, "deleted")

    # -- idempotent submit, retry, lineage, results ---------------------------

    async def retry(self, job_id: str, tenant: str) -> Job:
        """A new job of the same operation from the failed items of a finished job."""
        source = await self.get(job_id, tenant)
        op = self._retryable(source)
        self._check_admission(tenant)
        self._take_rate(tenant)
        job = _new_job(op, source.failed, tenant, source.ttl_s)
        return await self._create(NewJob(job, retry_of=source))

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

    def _accept(self, job: Job) -> None:
        """A stored job goes live: announced, counted, claimable."""
        self.engine.on_jobs([job])
        self.engine.metrics.jobs_submitted.labels(job.operation).inc()
        logger.info(
            "job %s accepted: %s, %d items",
            job.id,
            job.operation,
            job.total_items,
            extra={"event": "job.accepted", "job_id": job.id, "tenant": job.tenant},
        )
        self.engine.dispatcher.wake()

    async def lineage(self, job: Job) -> tuple[str | None, str | None]:
        """(the job this one retries, the newest job retrying this one)."""
        # Only a finished job can be retried, and what a job retries never changes: an
        # active job's lineage is read once, not on every poll (a store round trip is
        # the slow part of a poll while workers keep the loop busy).
        if not job.is_terminal and job.id in self._retry_of:
            return self._retry_of[job.id], None
        found = await self.engine.store.find_job(job.id)
        if len(self._retry_of) > 4096:
            self._retry_of.clear()
        if not job.is_terminal:
            self._retry_of[job.id] = found.retry_of
        return found.retry_of, found.retried_by

    async def results(
        self, job_id: str, *, tenant: str, status: str | None, partial: bool
    ) -> tuple[Job, AsyncGenerator[list[ItemRow], None]]:
        """The job and an iterator of its outcome pages; checked before any byte is sent."""
        flt = parse_status_filter(status)
        job = await self.get(job_id, tenant)
        require_downloadable(job, partial)
        return job, result_pages(self.engine.store, job, flt)


class _Twin(Exception):
    """An `Idempotency-Key` already stored by a concurrent submit."""

    def __init__(self, record: IdempotencyRecord | None) -> None:
        super().__init__("idempotency key already used")
        assert record is not None
        self.record = record


def _new_job(op: Operation, total_items: int, tenant: str, ttl_s: int) -> Job:
    now = utcnow()
    ratio = op.options.max_failed_ratio
    return Job(
        id=new_job_id(),
        operation=op.name,
        status=JobStatus.PENDING,
        total_items=total_items,
        tenant=tenant,
        created_at=now,
        updated_at=now,
        ttl_s=ttl_s,
        seq=1,
        max_failed=None if ratio is None else int(ratio * total_items),
    )


def check_backlog(settings: Settings, n: int, backlog: int) -> None:
    """The server-wide backlog cap; its answer says nothing of other tenants' load."""
    if backlog + n > settings.max_pending_items:
        raise BulkJobsError(
            "server_busy",
            "The server has too many items waiting to take this job now.",
            retry_after_s=max(1, settings.retry_after_s),
        )


def check_tenant_quotas(settings: Settings, n: int, *, backlog: int, stored: int) -> None:
    """The caller's own caps: items waiting (429) and items stored (507); 0 = no cap."""
    limit = settings.max_pending_items_per_tenant
    if limit > 0 and backlog + n > limit:
        raise BulkJobsError(
            "tenant_backlog_full",
            f"Your jobs have {backlog} items waiting; this job of {n} would exceed your"
            f" limit of {limit}.",
            retry_after_s=max(1, settings.retry_after_s),
        )
    limit = settings.max_stored_items_per_tenant
    if limit > 0 and stored + n > limit:
        raise BulkJobsError(
            "tenant_storage_full",
            f"Your jobs store {stored} items; this job of {n} would exceed your limit of"
            f" {limit}. Delete finished jobs or let them expire.",
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
