"""The storage contract. Backends keep their SQL dialect to themselves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import attrs

from ..models import ItemRecord, ItemStatus, Job, JobError, JobStatus, WorkItem
from .webhooks import NewWebhook, WebhookStore

#: One item outcome as the writer hands it to the store:
#: (status, result_json, error_code, error_message, attempts, job_pk, index)
OutcomeRow = tuple[str, str | None, str | None, str | None, int, int, int]

#: One new item: (index, item_id, payload_json)
NewItemRow = tuple[int, str | None, str]


@attrs.frozen
class JobChange:
    """Counter deltas and an optional transition for one job, applied in one commit."""

    job_pk: int
    succeeded: int = 0
    failed: int = 0
    start: bool = False
    status: JobStatus | None = None
    error: JobError | None = None
    cancel_pending: bool = False


@attrs.frozen
class Tombstone:
    """What is left of a removed job: why and when it went (410 until `keep_until`)."""

    job_id: str
    tenant: str
    reason: str  # "deleted" | "expired"
    deleted_at: datetime
    keep_until: datetime


@attrs.frozen
class IdempotencyRecord:
    """An `Idempotency-Key` seen on a submit: the body's hash and the job it created."""

    tenant: str
    key: str
    request_hash: str
    job_id: str
    created_at: datetime
    expires_at: datetime


#: One row of a result download:
#: (index, item_id, status, result_json, error_code, error_message)
ResultRow = tuple[int, str | None, str, str | bytes | None, str | None, str | None]


@attrs.frozen
class JobFilter:
    tenant: str | None = None
    status: JobStatus | None = None
    operation: str | None = None


class Store(Protocol):
    """What the service needs from durable storage."""

    @property
    def webhooks(self) -> WebhookStore:
        """Subscriptions, outbox and attempts of webhooks (store/webhooks.py)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_job(
        self, job: Job, items: Sequence[NewItemRow], webhook: NewWebhook | None = None
    ) -> int:
        """Insert the job, all its items and its webhook in one transaction; return its key."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def list_jobs(self, flt: JobFilter, *, before_pk: int | None, limit: int) -> list[Job]:
        """Newest first; `before_pk` continues a previous page."""
        ...

    async def list_items(
        self, job_pk: int, *, status: ItemStatus | None, after_index: int, limit: int
    ) -> list[ItemRecord]: ...

    async def load_pending(self, job_pk: int, *, from_index: int, limit: int) -> list[WorkItem]: ...

    async def unfinished_jobs(self) -> list[Job]: ...

    async def count_jobs_by_status(self) -> dict[str, int]: ...

    async def check_writable(self) -> None:
        """Raise when the store cannot take a write transaction now."""
        ...

    async def commit(
        self, outcomes: Sequence[OutcomeRow], changes: Sequence[JobChange], now: datetime
    ) -> list[Job]:
        """Write outcomes and job changes in one transaction; return the changed jobs."""
        ...

    async def request_cancel(self, job_pk: int, now: datetime) -> Job | None:
        """Record a cancel request on an active job; None when it is already terminal."""
        ...

    async def delete_job(self, job_pk: int) -> None: ...

    async def purge_step(self, batch: int = 5000) -> int:
        """Delete some items of deleted jobs; 0 when there is nothing left to purge."""
        ...

    async def ping(self) -> None: ...

    # -- retention, idempotency, retries, results --------------------------

    async def remove_job(self, job: Job, reason: str, now: datetime, keep_until: datetime) -> None:
        """Delete the job row, leave a tombstone and queue its items for purging."""
        ...

    async def get_tombstone(self, job_id: str) -> Tombstone | None: ...

    async def expired_jobs(self, now: datetime, limit: int) -> list[Job]:
        """Terminal jobs whose `expires_at` has passed, oldest expiry first."""
        ...

    async def sweep_records(self, now: datetime) -> int:
        """Drop tombstones and idempotency keys past their time; return how many went."""
        ...

    async def get_idempotency(self, tenant: str, key: str) -> IdempotencyRecord | None: ...

    async def create_job_once(
        self,
        job: Job,
        items: Sequence[NewItemRow],
        record: IdempotencyRecord,
        webhook: NewWebhook | None = None,
    ) -> IdempotencyRecord | None:
        """Store job, items and key in one transaction and return None; when a live record
        of the key exists already, store nothing and return that record."""
        ...

    async def create_retry_job(self, job: Job, source: Job) -> int:
        """A new job from the failed items of `source` (in order), linked both ways."""
        ...

    async def retry_links(self, job_id: str) -> tuple[str | None, str | None]:
        """(the job this one retries, the newest job retrying this one)."""
        ...

    async def result_rows(
        self, job_pk: int, *, status: ItemStatus | None, after_index: int, limit: int
    ) -> list[ResultRow]:
        """A keyset page of raw outcomes for a download (results stay encoded JSON)."""
        ...
