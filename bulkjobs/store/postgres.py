"""PostgreSQL backend (asyncpg): several bulkjobs processes share one database.

A bounded pool (`pool_size`, 10 by default) serves every statement; each write is one
transaction on one pooled connection. Unlike a SQLite file, the database is shared:
`open` never takes over other processes' leases; an expired lease is claimed by
anyone. Claims skip rows other claimers hold (`FOR UPDATE SKIP LOCKED`).

Lease clock: `lease_clock="database"` (the default) times leases by the database's
`now()`, the one clock every host shares; `"caller"` uses the `now` handed to `claim`
and `heartbeat` instead, which the contract tests need to move time forward. Every
other timestamp (created, updated, completed) comes from the caller's `now`, as on
SQLite, and is stored as integer milliseconds since the epoch, UTC.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import attrs

from .. import failpoints, states
from ..models import ItemRow, ItemStatus, Job, JobError, JobStatus, NewItems, utcnow
from ..outbox import OutboxRule
from . import postgres_listen as listen
from . import postgres_work as work
from .base import (
    Beat,
    ChunkResult,
    Claimed,
    Created,
    IdempotencyRecord,
    JobFilter,
    JobLookup,
    JobWatch,
    Lease,
    NewJob,
    OperationLimits,
    Settled,
    StoreStats,
    Tombstone,
)
from .common import BackendBase, Span, adopted, staged_pk
from .postgres_schema import MIGRATION_LOCK, MIGRATIONS
from .postgres_webhooks import PostgresWebhooks
from .postgres_work import Conn
from .rows import JOB_COLS, job_from_row
from .timestamps import from_ms, to_ms

logger = logging.getLogger(__name__)

#: Connections per process: enough for the writer, the dispatcher, the lease loop, the
#: janitor, webhooks and concurrent HTTP reads; `max_connections` bounds the fleet.
DEFAULT_POOL_SIZE = 10
_DEADLOCK_RETRIES = 3
_DB_NOW_MS = "SELECT (extract(epoch FROM now()) * 1000)::bigint"

LeaseClock = Literal["database", "caller"]

#: Errors that mean "the database does not answer right now" (restarting, unreachable,
#: out of connections), not a bug nor a bad request: requests get 503
#: `store_unavailable`, loops retry. The pool drops a connection that broke (asyncpg
#: checks `is_closed()` on acquire), so the next statement opens a new one.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, DNS
    TimeoutError,  # connect or statement timeout
    asyncpg.PostgresConnectionError,  # class 08: connection lost or never made
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, starting up, cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"
)

#: Errors after which a pooled connection is not used again.
_BROKEN: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def redact(url: str) -> str:
    """The URL with its password replaced by `***`, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


@attrs.frozen
class ScaleStats:
    """What `/metrics` shows of a shared database: this process's pool (connections
    open, idle, the cap) and every process's leases (held, expired and not yet taken
    over, the age of the oldest since it was granted)."""

    pool_max: int
    pool_size: int
    pool_idle: int
    leases: int
    leases_expired: int
    oldest_lease_s: float
    leases_reclaimed: int


class PostgresStore(BackendBase[PostgresWebhooks]):
    """The shared store: one database, any number of bulkjobs processes."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        lease_clock: LeaseClock = "database",
        password: str | None = None,
        outbox_rule: OutboxRule = lambda _state, _job, _now_ms: None,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.lease_clock = lease_clock
        # None lets asyncpg find it: the URL, PGPASSWORD or ~/.pgpass.
        self._password = password or os.environ.get("BULKJOBS_DB_PASSWORD") or None
        self._pool: Any = None
        self._outbox = PostgresWebhooks(self._txn, self._conn, outbox_rule)
        #: Expired leases this process took over (any owner's, its own included).
        self.leases_reclaimed = 0

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> bytes:
        """Open the pool, migrate under an advisory lock, read the events secret."""
        extra = {"password": self._password} if self._password else {}
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=self.pool_size, **extra
        )
        try:
            async with self._conn() as db:
                await self._migrate(db)
            async with self._txn() as db:
                await db.execute(
                    "INSERT INTO secrets (name, value) VALUES ('events_token', $1)"
                    " ON CONFLICT (name) DO NOTHING",
                    os.urandom(32),
                )
                secret = await db.fetchval("SELECT value FROM secrets WHERE name = 'events_token'")
        except BaseException:
            await self.close()
            raise
        return bytes(secret)

    async def scale_stats(self) -> ScaleStats:
        """This process's pool and the database's leases, for `/metrics`."""
        pool = self._pool
        size, idle = (pool.get_size(), pool.get_idle_size()) if pool is not None else (0, 0)
        async with self._conn() as db:
            row = await db.fetchrow(
                f"SELECT count(*), count(*) FILTER (WHERE expires_at <= ({_DB_NOW_MS})),"
                f" coalesce(({_DB_NOW_MS}) - min(granted_at), 0) FROM leases"
            )
        return ScaleStats(
            pool_max=self.pool_size,
            pool_size=size,
            pool_idle=idle,
            leases=row[0],
            leases_expired=row[1],
            oldest_lease_s=max(0, row[2]) / 1000,
            leases_reclaimed=self.leases_reclaimed,
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _migrate(self, db: Conn) -> None:
        """Apply pending migrations, one process at a time (a session advisory lock)."""
        await db.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            applied = {r[0] for r in await db.fetch("SELECT name FROM schema_migrations")}
            for name, script in MIGRATIONS:
                if name in applied:
                    continue
                async with db.transaction():
                    await db.execute(script)
                    await db.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                logger.info("applied migration %s to %s", name, redact(self.url))
        finally:
            await db.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        """A pooled connection for reads (each statement sees the latest commits).

        A connection that failed as broken ones do (the server restarted or dropped it)
        is closed before it goes back, so the pool opens a fresh one for the next
        statement instead of handing out the dead one again.
        """
        if self._pool is None:
            raise ConnectionError("the PostgreSQL store is not open (or is closing)")
        async with self._pool.acquire() as db:
            try:
                yield db
            except _BROKEN as exc:
                db.terminate()
                if isinstance(exc, asyncpg.InternalClientError):
                    # what a connection left half-way by a server shutdown raises
                    raise ConnectionResetError(f"database connection broke: {exc}") from exc
                raise

    @asynccontextmanager
    async def _txn(self) -> AsyncIterator[Conn]:
        """One transaction on one pooled connection; rolled back on any error."""
        async with self._conn() as db, db.transaction():
            yield db

    async def _retrying(self, attempt: Any) -> Any:
        """Run `attempt()` (a whole transaction) again after a deadlock, a few times."""
        for n in itertools.count(1):
            try:
                return await attempt()
            except asyncpg.DeadlockDetectedError:
                if n >= _DEADLOCK_RETRIES:
                    raise
                logger.warning("deadlock detected; retrying the transaction (%d)", n)
        raise AssertionError("unreachable")

    async def _lease_now_ms(self, db: Conn, now: datetime) -> int:
        if self.lease_clock == "caller":
            return to_ms(now)
        return int(await db.fetchval(_DB_NOW_MS))

    # -- creating jobs ---------------------------------------------------

    async def create_job(self, new: NewJob) -> Created:
        async def attempt() -> Created:
            async with self._txn() as db:
                if new.idempotency is not None:
                    rec = new.idempotency
                    # Two submits with one key, on two processes: the second waits here.
                    await db.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))",
                        rec.tenant,
                        rec.key,
                    )
                    row = await db.fetchrow(_SELECT_IDEMPOTENCY, rec.tenant, rec.key)
                    if row is not None and row[5] > to_ms(new.job.created_at):
                        return Created(None, _idempotency_from_row(row))
                job = await self._insert_job(db, new)
                if new.retry_of is not None:
                    await _copy_failed(db, job, new.retry_of)
                retried = [new.retry_of.pk] if new.retry_of is not None else []
                await listen.notify_in(db, [job.pk, *retried])
                if new.idempotency is not None:
                    await _insert_idempotency(db, new.idempotency)
                failpoints.hit("insert_job")
            adopted(new.items)
            return Created(job)

        created: Created = await self._retrying(attempt)
        return created

    async def _insert_job(self, db: Conn, new: NewJob) -> Job:
        job = new.job
        pk = staged_pk(new.items)  # staged items have their job key; else the identity
        row = await db.fetchrow(
            "INSERT INTO jobs (pk, id, tenant, operation, status, total_items, created_at,"
            " updated_at, ttl_s, seq, max_failed) VALUES (coalesce($1,"
            " nextval(pg_get_serial_sequence('jobs', 'pk'))), $2, $3, $4, $5, $6, $7, $8, $9,"
            f" 1, $10) RETURNING {JOB_COLS}",
            pk,
            job.id,
            job.tenant,
            job.operation,
            job.status.value,
            job.total_items,
            to_ms(job.created_at),
            to_ms(job.updated_at),
            job.ttl_s,
            job.max_failed,
        )
        stored = job_from_row(row)
        if isinstance(new.items, NewItems):
            await _copy_items(db, stored.pk, 0, new.items)
        else:
            await db.execute("DELETE FROM staging WHERE job_pk = $1", stored.pk)
        if new.webhook is not None:
            await self._outbox.subscribe_in(db, stored.pk, job.created_at, new.webhook)
        return stored

    async def _stage_begin(self) -> int:
        async with self._txn() as db:
            pk: int = await db.fetchval(
                "INSERT INTO staging (job_pk, renewed_at)"
                " VALUES (nextval(pg_get_serial_sequence('jobs', 'pk')), $1) RETURNING job_pk",
                to_ms(utcnow()),
            )
        return pk

    async def _stage_insert(self, pk: int, first_idx: int, items: NewItems) -> None:
        async def attempt() -> None:
            async with self._txn() as db:
                await _copy_items(db, pk, first_idx, items)
                await db.execute(
                    "UPDATE staging SET renewed_at = $2 WHERE job_pk = $1", pk, to_ms(utcnow())
                )

        await self._retrying(attempt)

    async def _stage_discard(self, pk: int) -> None:
        async with self._txn() as db:
            await _queue_staged(db, "job_pk = $1", pk)

    # -- running work ----------------------------------------------------

    async def claim(
        self, owner: str, limits: Mapping[str, OperationLimits], *, lease_s: float, now: datetime
    ) -> Claimed:
        settled: list[Job] = []
        for _ in range(8):  # a few jobs settled on the way, then let others write
            got = await self._retrying(lambda: self._lease(owner, limits, lease_s, now))
            if not isinstance(got, Span):
                settled.extend([got] if got is not None else [])
                if got is None:
                    break
                continue
            async with self._conn() as db:
                items = await work.span_items(db, got.job.pk, got.first, got.last)
            if items:
                return Claimed(Lease(got.lease_pk, got.job, items), settled)
            empty = ChunkResult(got.lease_pk, got.job.pk, (), release=True)
            settled.extend((await self.complete(owner, [empty], now)).jobs)
        return Claimed(None, settled)

    async def _lease(
        self, owner: str, limits: Mapping[str, OperationLimits], lease_s: float, now: datetime
    ) -> Span | Job | None:
        now_ms = to_ms(now)
        async with self._txn() as db:
            clock_ms = await self._lease_now_ms(db, now)
            expires_ms = clock_ms + int(lease_s * 1000)
            ops = await work.claimable_ops(db, limits)
            if not ops:
                return None
            got = await work.reclaim_expired(db, owner, ops, clock_ms, expires_ms)
            reclaimed = isinstance(got, Span)
            if got is None:
                found = await work.next_job(db, ops)
                if found is None:
                    return None
                job, first = found
                span = limits[job.operation].span_items
                got = await work.lease_span(
                    db, job, first, span, owner, now_ms=now_ms, expires_ms=expires_ms
                )
                got = got if got is not None else await work.settle(db, job, now_ms)
                if isinstance(got, Span) and got.job.status is not job.status:
                    await listen.notify_in(db, [job.pk])  # pending -> running
            if isinstance(got, Job):
                await self._outbox.enqueue_in(db, [got], now)
                await listen.notify_in(db, [got.pk])
        self.leases_reclaimed += reclaimed  # counted once committed
        return got

    async def complete(self, owner: str, results: Sequence[ChunkResult], now: datetime) -> Settled:
        now_ms = to_ms(now)

        async def attempt() -> tuple[list[Job], set[int], int]:
            async with self._txn() as db:
                owned = await work.owned_leases(db, owner, sorted({r.lease_pk for r in results}))
                kept = [r for r in results if r.lease_pk in owned]
                jobs = await work.apply_outcomes(db, kept, now_ms)
                released = sorted({r.lease_pk for r in kept if r.release})
                if released:
                    await db.execute("DELETE FROM leases WHERE pk = ANY($1::bigint[])", released)
                jobs = await self._settle_all(db, jobs, {r.job_pk for r in kept}, now_ms)
                grew = await self._outbox.enqueue_in(db, jobs, now)
                await listen.notify_in(db, [j.pk for j in jobs])
                failpoints.hit("commit")
            return jobs, owned, grew

        jobs, owned, grew = await self._retrying(attempt)
        lost = frozenset(r.lease_pk for r in results if r.lease_pk not in owned)
        if lost:
            logger.warning("%d chunk results of lost leases ignored", len(lost))
        return Settled(jobs, lost, bool(grew))

    async def _settle_all(self, db: Conn, jobs: list[Job], pks: set[int], now_ms: int) -> list[Job]:
        by_pk = {j.pk: j for j in jobs}  # these rows are locked by their counter update
        for pk in sorted(pks - by_pk.keys()):  # released leases without outcomes
            job = await work.job_by_pk(db, pk, lock=True)
            if job is not None:
                by_pk[pk] = job
        return [await work.settle(db, job, now_ms) for job in by_pk.values()]

    async def stop(
        self, job_pk: int, status: JobStatus, now: datetime, error: JobError | None = None
    ) -> Job:
        if not status.is_terminal:
            raise ValueError(f"a job stops in a terminal status, not {status.value}")
        now_ms = to_ms(now)

        async def attempt() -> Job:
            async with self._txn() as db:
                job = await work.job_by_pk(db, job_pk, lock=True)
                if job is None:
                    raise KeyError(f"job {job_pk} does not exist")
                states.check(job.status, status)
                job = await work.request_stop(db, job, status, now_ms, error)
                failpoints.hit("cancel")
                job = await work.settle(db, job, now_ms)
                await self._outbox.enqueue_in(db, [job], now)
                await listen.notify_in(db, [job.pk])
            return job

        stopped: Job = await self._retrying(attempt)
        return stopped

    async def heartbeat(
        self, owner: str, leases: Collection[int], *, lease_s: float, now: datetime
    ) -> Beat:
        async with self._txn() as db:
            expires_ms = await self._lease_now_ms(db, now) + int(lease_s * 1000)
            done = await db.execute(
                "UPDATE leases SET expires_at = $1 WHERE owner = $2 AND pk = ANY($3::bigint[])",
                expires_ms,
                owner,
                sorted(leases),
            )
            found = await db.fetch(
                "SELECT DISTINCT l.job_pk FROM leases l JOIN jobs j ON j.pk = l.job_pk"
                " WHERE l.owner = $1 AND j.stop_status IS NOT NULL",
                owner,
            )
        return Beat(work.count(done), frozenset(r[0] for r in found))

    # -- other processes' changes (NOTIFY / LISTEN, polling) ---------------

    async def watch_jobs(self, watch: JobWatch) -> None:
        """Report other processes' job changes until cancelled (see `postgres_listen`)."""
        assert self._pool is not None, "store is not open"
        await listen.JobFeed(self._pool, self._connect_listener, watch).run()

    async def _connect_listener(self) -> Any:
        """A connection of its own (not from the pool) for LISTEN."""
        extra = {"password": self._password} if self._password else {}
        settings = {"application_name": f"{listen.APPLICATION_NAME}:{os.getpid()}"}
        return await asyncpg.connect(self.url, server_settings=settings, timeout=10, **extra)

    # -- reads -----------------------------------------------------------

    async def find_job(
        self, job_id: str | None = None, *, idempotency: tuple[str, str] | None = None
    ) -> JobLookup:
        async with self._conn() as db:
            if idempotency is not None:
                row = await db.fetchrow(_SELECT_IDEMPOTENCY, *idempotency)
                return JobLookup(idempotency=_idempotency_from_row(row) if row else None)
            row = await db.fetchrow(
                f"SELECT {JOB_COLS}, (SELECT retry_of FROM job_retries WHERE job_id = jobs.id),"
                " (SELECT job_id FROM job_retries WHERE retry_of = jobs.id"
                " ORDER BY job_id DESC LIMIT 1) FROM jobs WHERE id = $1",
                job_id,
            )
            if row is not None:
                n = len(row)
                return JobLookup(job_from_row(row), retry_of=row[n - 2], retried_by=row[n - 1])
            tomb = await db.fetchrow(
                "SELECT job_id, tenant, reason, deleted_at, keep_until FROM tombstones"
                " WHERE job_id = $1",
                job_id or "",
            )
        if tomb is None:
            return JobLookup()
        return JobLookup(
            tombstone=Tombstone(tomb[0], tomb[1], tomb[2], from_ms(tomb[3]), from_ms(tomb[4]))
        )

    async def list_jobs(self, flt: JobFilter, *, before_pk: int | None, limit: int) -> list[Job]:
        sql = (
            f"SELECT {JOB_COLS} FROM jobs WHERE ($1::text IS NULL OR tenant = $1)"
            " AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR operation = $3)"
            " AND ($4::bigint IS NULL OR pk < $4)"
            f"{_AND_ACTIVE if flt.active else ''} ORDER BY pk DESC LIMIT $5"
        )
        status = flt.status.value if flt.status else None
        async with self._conn() as db:
            rows = await db.fetch(sql, flt.tenant, status, flt.operation, before_pk, limit)
        return [job_from_row(r) for r in rows]

    async def list_items(
        self, job_pk: int, *, status: ItemStatus | None, after_index: int, limit: int
    ) -> list[ItemRow]:
        # Inlined (an enum value, never user text) so that the partial index applies.
        extra = f" AND status = '{ItemStatus(status).value}'" if status else ""
        sql = (
            "SELECT idx, item_id, status, result, error_code, error_message, attempts"
            f" FROM items WHERE job_pk = $1 AND idx > $2{extra} ORDER BY idx LIMIT $3"
        )
        async with self._conn() as db:
            rows = await db.fetch(sql, job_pk, after_index, limit)
        return list(map(ItemRow._make, rows))

    async def stats(self, tenant: str | None = None) -> StoreStats:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT status, count(*), sum(total_items - succeeded - failed - cancelled),"
                " count(*) FILTER (WHERE tenant = $1),"
                " sum(total_items - succeeded - failed - cancelled) FILTER (WHERE tenant = $1),"
                " sum(total_items) FILTER (WHERE tenant = $1)"
                " FROM jobs GROUP BY status",
                tenant,
            )
        active = [r for r in rows if r[0] in ("pending", "running")]
        return StoreStats(
            jobs_by_status={r[0]: r[1] for r in rows},
            # metrics only: a submit (with a tenant) does not scan the whole outbox
            webhooks_by_status=await self._outbox.count_by_status() if tenant is None else {},
            backlog_items=int(sum(r[2] or 0 for r in active)),
            tenant_active_jobs=sum(r[3] or 0 for r in active),
            tenant_backlog_items=int(sum(r[4] or 0 for r in active)),
            tenant_stored_items=int(sum(r[5] or 0 for r in rows)),
        )

    # -- removal and maintenance ---------------------------------------------

    async def remove_job(self, job: Job, reason: str, now: datetime, keep_until: datetime) -> None:
        async with self._txn() as db:
            await _remove(db, job, reason, now, keep_until)

    async def _expire(self, now: datetime, limit: int, keep_until: datetime) -> list[Job]:
        """Expire jobs; other processes' janitors skip the rows this one is removing."""
        async with self._txn() as db:
            rows = await db.fetch(
                f"SELECT {JOB_COLS} FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= $1"
                " ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                to_ms(now),
                limit,
            )
            jobs = [job_from_row(r) for r in rows]
            for job in jobs:
                await _remove(db, job, "expired", now, keep_until)
        return jobs

    async def _purge_step(self, batch: int) -> int:
        """Delete up to `batch` items of one removed job; return how many went (0: none)."""
        async with self._txn() as db:
            job_pk = await db.fetchval(
                "SELECT job_pk FROM purge_queue LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
            if job_pk is None:
                return 0
            done = await db.execute(
                "DELETE FROM items WHERE job_pk = $1 AND idx IN"
                " (SELECT idx FROM items WHERE job_pk = $1 LIMIT $2)",
                job_pk,
                batch,
            )
            removed = work.count(done)
            if removed < batch:
                await _purge_job_rows(db, job_pk)
        return max(removed, 1)

    async def _sweep(self, now: datetime) -> int:
        async with self._txn() as db:
            # an upload whose process died: nothing renewed its items for an hour
            stale = to_ms(now) - STALE_UPLOAD_S * 1000
            await _queue_staged(db, "renewed_at < $1", stale)
            a = await db.execute("DELETE FROM tombstones WHERE keep_until <= $1", to_ms(now))
            b = await db.execute("DELETE FROM idempotency_keys WHERE expires_at <= $1", to_ms(now))
        return work.count(a) + work.count(b)


_AND_ACTIVE = " AND status IN ('pending', 'running')"

_SELECT_IDEMPOTENCY = (
    "SELECT tenant, key, request_hash, job_id, created_at, expires_at"
    " FROM idempotency_keys WHERE tenant = $1 AND key = $2"
)


async def _remove(db: Conn, job: Job, reason: str, now: datetime, keep_until: datetime) -> None:
    await db.execute(
        "INSERT INTO tombstones (job_id, tenant, reason, deleted_at, keep_until)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id) DO UPDATE SET"
        " tenant = excluded.tenant, reason = excluded.reason,"
        " deleted_at = excluded.deleted_at, keep_until = excluded.keep_until",
        job.id,
        job.tenant,
        reason,
        to_ms(now),
        to_ms(keep_until),
    )
    await db.execute("INSERT INTO purge_queue (job_pk) VALUES ($1) ON CONFLICT DO NOTHING", job.pk)
    await db.execute("DELETE FROM leases WHERE job_pk = $1", job.pk)
    await db.execute("DELETE FROM jobs WHERE pk = $1", job.pk)
    await db.execute("DELETE FROM job_retries WHERE job_id = $1", job.id)


async def _insert_idempotency(db: Conn, record: IdempotencyRecord) -> None:
    await db.execute(
        "INSERT INTO idempotency_keys (tenant, key, request_hash, job_id, created_at,"
        " expires_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, key) DO UPDATE SET"
        " request_hash = excluded.request_hash, job_id = excluded.job_id,"
        " created_at = excluded.created_at, expires_at = excluded.expires_at",
        record.tenant,
        record.key,
        record.request_hash,
        record.job_id,
        to_ms(record.created_at),
        to_ms(record.expires_at),
    )


async def _copy_failed(db: Conn, job: Job, source: Job) -> None:
    """A retry's items: the failed items of `source`, in order, linked both ways."""
    done = await db.execute(
        "INSERT INTO items (job_pk, idx, item_id, payload)"
        " SELECT $1, (row_number() OVER (ORDER BY idx) - 1)::int, item_id, payload"
        " FROM items WHERE job_pk = $2 AND status = 'failed' ORDER BY idx",
        job.pk,
        source.pk,
    )
    if work.count(done) != job.total_items:
        raise RuntimeError(
            f"{source.id} has {work.count(done)} failed items, not {job.total_items}"
        )
    await db.execute(
        "INSERT INTO job_retries (job_id, retry_of) VALUES ($1, $2)", job.id, source.id
    )
    await db.execute(
        "INSERT INTO webhook_subscriptions (job_pk, url, events, progress_interval_ms,"
        " last_progress_at) SELECT $1, url, events, progress_interval_ms, $2"
        " FROM webhook_subscriptions WHERE job_pk = $3 AND gone_at IS NULL",
        job.pk,
        to_ms(job.created_at),
        source.pk,
    )
    await db.execute("UPDATE jobs SET seq = seq + 1 WHERE pk = $1", source.pk)


async def _purge_job_rows(db: Conn, job_pk: int) -> None:
    """The last step of purging a job: its queue entry and webhook bookkeeping."""
    await db.execute(
        "DELETE FROM webhook_attempts WHERE message_pk IN"
        " (SELECT pk FROM webhook_messages WHERE job_pk = $1 AND status != 'pending')",
        job_pk,
    )
    await db.execute(
        "DELETE FROM webhook_messages WHERE job_pk = $1 AND status != 'pending'", job_pk
    )
    await db.execute("DELETE FROM webhook_subscriptions WHERE job_pk = $1", job_pk)
    await db.execute("DELETE FROM purge_queue WHERE job_pk = $1", job_pk)


#: Staged items of an upload not renewed for this long belong to a dead process.
STALE_UPLOAD_S = 3600


async def _copy_items(db: Conn, pk: int, first_idx: int, items: NewItems) -> None:
    if len(items):
        ids = items.ids if len(items.ids) else itertools.repeat(None)
        records = zip(itertools.repeat(pk), itertools.count(first_idx), ids, items.payloads)
        await db.copy_records_to_table(
            "items", records=records, columns=("job_pk", "idx", "item_id", "payload")
        )


async def _queue_staged(db: Conn, where: str, arg: int) -> None:
    """Hand staged items to the purge queue (deleted in small batches) and forget them."""
    await db.execute(
        f"WITH gone AS (DELETE FROM staging WHERE {where} RETURNING job_pk)"
        " INSERT INTO purge_queue (job_pk) SELECT job_pk FROM gone ON CONFLICT DO NOTHING",
        arg,
    )


def _idempotency_from_row(row: Sequence[Any]) -> IdempotencyRecord:
    tenant, key, request_hash, job_id, created_at, expires_at = row
    return IdempotencyRecord(
        tenant, key, request_hash, job_id, from_ms(created_at), from_ms(expires_at)
    )
