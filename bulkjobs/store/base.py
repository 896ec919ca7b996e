"""The storage contract: typed records and the `Store` protocol.

The store is the authority for running work. Which items are out, and to whom, is a
lease (owner, expiry) over a span of one job's items; the store picks the next span
fairly (per tenant, then per job), settles outcomes with counters in one
transaction, and applies every status change as a guarded transition of the state
machine (`bulkjobs.states`). Backends keep their SQL dialect to themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

import attrs

from ..models import ItemOutcome, ItemRow, ItemStatus, Job, JobError, JobStatus, NewItems, WorkItem
from ..outbox import AttemptRecord, Deliveries, Due, NewWebhook


class Staging(Protocol):
    """The items of an upload in progress (`Store.staging`).

    They are stored in batches, each its own short transaction, under a job key no job
    row has yet: invisible to every read and to claiming. `create_job` adopts them in
    its one transaction; otherwise they are discarded when the upload ends, and at the
    next start if the process dies first.
    """

    @property
    def count(self) -> int:
        """Items added so far (the next item's index)."""
        ...

    async def add(self, items: NewItems) -> None:
        """Store the next batch (one transaction)."""
        ...


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


@attrs.frozen
class NewJob:
    """Everything one submit stores in one transaction.

    Items come from `items`, or, for a retry, from the failed items of `retry_of`.
    With `idempotency`, nothing is stored when a live record of the key exists.
    """

    job: Job
    items: NewItems | Staging = attrs.field(factory=NewItems)
    webhook: NewWebhook | None = None
    idempotency: IdempotencyRecord | None = None
    retry_of: Job | None = None


@attrs.frozen
class Created:
    """What `create_job` did: the stored job, or the live record that stopped it."""

    job: Job | None
    existing: IdempotencyRecord | None = None


@attrs.frozen
class JobLookup:
    """A job by id with its retry links, or the tombstone of a removed one."""

    job: Job | None = None
    tombstone: Tombstone | None = None
    retry_of: str | None = None
    retried_by: str | None = None
    idempotency: IdempotencyRecord | None = None


@attrs.frozen
class JobFilter:
    tenant: str | None = None
    status: JobStatus | None = None
    operation: str | None = None
    active: bool = False  # pending or running only


@attrs.frozen
class OperationLimits:
    """How an operation is claimed: items per lease, and leases out at once (any owner)."""

    span_items: int
    concurrency: int | None = None


@attrs.frozen
class Lease:
    """A span of one job's pending items, held by one owner until `expires_at`."""

    pk: int
    job: Job
    items: Sequence[WorkItem]


@attrs.frozen
class Claimed:
    """A claim's answer: a lease to work (or None), and jobs it found finished."""

    lease: Lease | None
    settled: list[Job] = attrs.field(factory=list)


@attrs.frozen
class ChunkResult:
    """Outcomes of one chunk of a lease; `release` settles the lease (its last chunk)."""

    lease_pk: int
    job_pk: int
    outcomes: Sequence[ItemOutcome]
    release: bool = False


@attrs.frozen
class Settled:
    """What `complete` committed: the changed jobs, and leases this owner had lost."""

    jobs: list[Job]
    lost_leases: frozenset[int] = frozenset()
    outbox_grew: bool = False


@attrs.frozen
class Beat:
    """A heartbeat's answer: leases renewed, and jobs of ours asked to stop."""

    renewed: int
    stopping: frozenset[int] = frozenset()


@attrs.frozen
class Maintenance:
    """One maintenance pass: jobs expired (now tombstones), items purged, records swept."""

    expired: list[Job] = attrs.field(factory=list)
    purged: int = 0
    swept: int = 0


@attrs.frozen
class StoreStats:
    """Counts for admission and metrics, from committed state."""

    jobs_by_status: Mapping[str, int]
    webhooks_by_status: Mapping[str, int]
    backlog_items: int
    tenant_active_jobs: int = 0
    tenant_backlog_items: int = 0  # the tenant's items not yet done, in active jobs
    tenant_stored_items: int = 0  # the tenant's items in stored jobs, any status


@attrs.frozen
class Watched:
    """What this process watches, for `Store.watch_jobs`'s poll: jobs by id with the
    newest seq seen (0: none yet), jobs it works (their stop requests), and tenants
    with a live stream (their new jobs)."""

    seqs: Mapping[str, int] = attrs.field(factory=dict)
    working: Collection[int] = ()
    tenants: Collection[str] = ()


@attrs.frozen
class JobWatch:
    """How `Store.watch_jobs` reports other processes' job changes to the engine."""

    watched: Callable[[], Watched]
    on_jobs: Callable[[list[Job]], None]
    on_lag: Callable[[float], None] = lambda _seconds: None  # NOTIFY: commit -> received
    poll_s: float = 1.0
    listen: bool = True  # False: poll only (e.g. behind PgBouncer in transaction mode)


class Store(Protocol):
    """What the service needs from durable storage (webhooks: `WebhookStore`)."""

    async def open(self) -> bytes:
        """Open (and own) the store, migrate it; return the events-token signing secret."""
        ...

    async def close(self) -> None: ...

    async def create_job(self, new: NewJob) -> Created:
        """Store job, items, webhook and idempotency key in one transaction.

        With a `Staging` as `new.items`, the staged items become the job's (adopted)."""
        ...

    def staging(self) -> AbstractAsyncContextManager[Staging]:
        """A place for the items of an upload in progress; see `Staging`."""
        ...

    async def claim(
        self, owner: str, limits: Mapping[str, OperationLimits], *, lease_s: float, now: datetime
    ) -> Claimed:
        """Lease the next span of pending items, fairly: tenant first, then job.

        Expired leases are claimed again first. A pending job becomes running here.
        """
        ...

    async def complete(self, owner: str, results: Sequence[ChunkResult], now: datetime) -> Settled:
        """Write outcomes and counters in one transaction; ignore leases we lost.

        A job left with no leases and nothing to claim becomes terminal here.
        """
        ...

    async def stop(
        self, job_pk: int, status: JobStatus, now: datetime, error: JobError | None = None
    ) -> Job:
        """Move an active job to a terminal status, or, while leases are out, ask it to
        stop there once they settle. Raises `IllegalTransition` on a terminal job."""
        ...

    async def heartbeat(
        self, owner: str, leases: Collection[int], *, lease_s: float, now: datetime
    ) -> Beat:
        """Extend these leases of `owner` (a write: it also proves the store takes writes).
        A lease its owner lost track of is not renewed: it expires and is claimed again."""
        ...

    async def find_job(
        self, job_id: str | None = None, *, idempotency: tuple[str, str] | None = None
    ) -> JobLookup:
        """A job by id (or its tombstone), or the record of an `Idempotency-Key`."""
        ...

    async def list_jobs(self, flt: JobFilter, *, before_pk: int | None, limit: int) -> list[Job]:
        """Newest first; `before_pk` continues a previous page."""
        ...

    async def list_items(
        self, job_pk: int, *, status: ItemStatus | None, after_index: int, limit: int
    ) -> list[ItemRow]:
        """A keyset page of item outcomes in request order."""
        ...

    async def stats(self, tenant: str | None = None) -> StoreStats:
        """Counts for admission (with a tenant) or for metrics (without; then also the
        webhook messages by state)."""
        ...

    async def remove_job(self, job: Job, reason: str, now: datetime, keep_until: datetime) -> None:
        """Delete a terminal job row, leave a tombstone and queue its items for purging."""
        ...

    async def maintain(
        self, now: datetime, *, expire_jobs: int, purge_items: int, keep_s: int
    ) -> Maintenance:
        """Expire up to `expire_jobs` jobs, purge up to `purge_items` items of removed
        jobs, and drop tombstones and idempotency keys past their time."""
        ...

    async def watch_jobs(self, watch: JobWatch) -> None:
        """Report job changes other processes commit (`watch.on_jobs`) until cancelled;
        return at once when no other process can change this store (SQLite)."""
        ...


class WebhookStore(Protocol):
    """The webhook outbox as the dispatcher and the deliveries API need it. Messages are
    added by the store itself, in the transactions of the changes they announce."""

    async def due(
        self, now: datetime, *, after: tuple[int, int] | None, limit: int, upcoming: int = 0
    ) -> Due:
        """Pending messages due by `now` after `(due_ms, pk)`, oldest first; with
        `upcoming`, also (pk, due time) of that many earliest pending messages."""
        ...

    async def take(self, message_pk: int, now: datetime, lease_s: float) -> bool:
        """Take a due message for one attempt: no other process sends it for `lease_s`
        (unless this attempt is recorded first); False when it is no longer due (another
        process took it, or it was recorded meanwhile)."""
        ...

    async def record(self, message_pk: int, rec: AttemptRecord) -> None:
        """Store one delivery attempt and the message's new state."""
        ...

    async def deliveries(
        self, job_pk: int, *, after_pk: int, limit: int, message_id: str | None = None
    ) -> Deliveries:
        """A page of a job's messages (or the one with `message_id`) with attempts."""
        ...

    async def redeliver(self, job_pk: int, message_id: str, now: datetime) -> bool:
        """Make a message due now with a fresh schedule; False when there is none."""
        ...
