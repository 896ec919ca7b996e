"""SQLite backend: WAL, one writer connection guarded by a lock, one reader connection.

Every write is one `BEGIN IMMEDIATE` transaction holding the writer lock, so
statements of two coroutines never interleave inside one transaction. Reads go to
a second connection: in WAL mode they never wait for the writer.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import IO, Any

import aiosqlite

from .. import failpoints, jsonutil, states
from ..models import ItemRow, ItemStatus, Job, JobError, JobStatus, NewItems, utcnow
from ..outbox import NewWebhook, OutboxRule
from . import sqlite_work as work
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
    Staging,
    StoreStats,
    Tombstone,
)
from .common import BackendBase, Span, adopted, staged_pk
from .reader import Reader
from .rows import JOB_COLS, job_from_row
from .schema import MIGRATIONS
from .timestamps import from_ms, to_ms
from .webhooks import SQLiteWebhooks

logger = logging.getLogger(__name__)

_ACTIVE = "status IN ('pending', 'running')"


class StoreLocked(RuntimeError):
    """Another process owns this SQLite file."""


class SQLiteStore(BackendBase[SQLiteWebhooks]):
    """The embedded store: one file owned by one process, WAL, one writer connection."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 10_000,
        outbox_rule: OutboxRule = lambda _state, _job, _now_ms: None,
    ):
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: Reader | None = None
        self._lock_file: IO[bytes] | None = None
        self._write_lock = asyncio.Lock()
        self._unsettled = False  # a transaction ended without a settled commit/rollback
        self._outbox = SQLiteWebhooks(self._txn, lambda: self._r, outbox_rule)

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> bytes:
        """Own the file, open both connections, migrate, reclaim every lease at once."""
        self._lock_file = _own(self.path)
        self._writer = await self._connect()
        await self._migrate(self._writer)
        self._reader = Reader(await self._connect())  # one whole query per trip: see reader.py
        async with self._txn() as db:
            # One process owns the file, so no lease can be held by anyone alive: all
            # of them are claimable now, instead of after they expire.
            await db.execute("UPDATE leases SET expires_at = 0")
            # Uploads cut short by the last stop are not jobs: their items go.
            await db.execute("INSERT OR IGNORE INTO purge_queue SELECT job_pk FROM staging")
            await db.execute("DELETE FROM staging")
            await db.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES ('events_token', ?)",
                (os.urandom(32),),
            )
            row = await work.one(db, "SELECT value FROM secrets WHERE name = 'events_token'")
        return bytes(row[0])

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def watch_jobs(self, watch: JobWatch) -> None:
        """Nothing to watch: the file is this process's alone (`flock`), so every change
        of a job is one this process committed and announced itself."""
        return

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={self._synchronous}")
        await conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        await conn.execute("PRAGMA foreign_keys=OFF")
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT (datetime('now')))"
        )
        async with conn.execute("SELECT name FROM schema_migrations") as cur:
            applied = {row[0] for row in await cur.fetchall()}
        for name, script in MIGRATIONS:
            if name in applied:
                continue
            record = f"INSERT INTO schema_migrations (name) VALUES ('{name}');"
            await conn.executescript(f"BEGIN IMMEDIATE;\n{script}\n{record}\nCOMMIT;")
            logger.info("applied migration %s to %s", name, self.path)

    @asynccontextmanager
    async def _txn(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, safe against cancellation at any of its awaits.

        aiosqlite runs every queued call on its thread in order, even a call whose
        awaiting coroutine was cancelled: a cancelled `BEGIN` still begins. So a
        transaction that ends abnormally marks the connection unsettled, and the next
        one first queues a rollback (a no-op outside a transaction) ahead of its own
        `BEGIN`. Both are queued under the write lock, so the order is guaranteed.
        """
        db = self._writer
        assert db is not None, "store is not open"
        async with self._write_lock:
            if self._unsettled:
                await db.rollback()
                self._unsettled = False
            self._unsettled = True
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
            except BaseException:
                await asyncio.shield(db.rollback())
                self._unsettled = False
                raise
            await asyncio.shield(db.commit())
            self._unsettled = False

    @property
    def _r(self) -> Reader:
        assert self._reader is not None, "store is not open"
        return self._reader

    # -- creating jobs ---------------------------------------------------

    async def create_job(self, new: NewJob) -> Created:
        async with self._txn() as db:
            if new.idempotency is not None:
                rec = new.idempotency
                row = await work.one(db, _SELECT_IDEMPOTENCY, (rec.tenant, rec.key))
                if row is not None and row[5] > to_ms(new.job.created_at):
                    return Created(None, _idempotency_from_row(row))
            job = await self._insert_job(db, new.job, new.items, new.webhook)
            if staged_pk(new.items) is not None:
                await db.execute("DELETE FROM staging WHERE job_pk = ?", (job.pk,))
            if new.retry_of is not None:
                await _copy_failed(db, job.pk, job, new.retry_of)
            if new.idempotency is not None:
                await _insert_idempotency(db, new.idempotency)
            failpoints.hit("insert_job")  # crash tests: job and items written, not committed
        adopted(new.items)
        return Created(job)

    async def _stage_begin(self) -> int:
        async with self._txn() as db:
            row = await work.one(
                db, "UPDATE job_pk_high_water SET pk = pk + 1 WHERE one = 1 RETURNING pk"
            )
            pk = int(row[0])
            await db.execute(
                "INSERT INTO staging (job_pk, started_at) VALUES (?, ?)", (pk, to_ms(utcnow()))
            )
        return pk

    async def _stage_insert(self, pk: int, first_idx: int, items: NewItems) -> None:
        async with self._txn() as db:
            await _insert_items(db, pk, first_idx, items)

    async def _stage_discard(self, pk: int) -> None:
        async with self._txn() as db:
            await db.execute("INSERT OR IGNORE INTO purge_queue (job_pk) VALUES (?)", (pk,))
            await db.execute("DELETE FROM staging WHERE job_pk = ?", (pk,))

    async def _insert_job(
        self,
        db: aiosqlite.Connection,
        job: Job,
        items: NewItems | Staging,
        webhook: NewWebhook | None = None,
    ) -> Job:
        # staged items already have their job key; a new one is the high water + 1
        pk = staged_pk(items)
        row = await work.one(
            db,
            "INSERT INTO jobs (pk, id, tenant, operation, status, total_items, created_at,"
            " updated_at, ttl_s, seq, max_failed) VALUES"
            " (coalesce(?, (SELECT pk + 1 FROM job_pk_high_water)),"
            f" ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) RETURNING {JOB_COLS}",
            (
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
            ),
        )
        stored = job_from_row(row)
        if isinstance(items, NewItems):
            await _insert_items(db, stored.pk, 0, items)
        if webhook is not None:
            await self._outbox.subscribe_in(db, stored.pk, job.created_at, webhook)
        return stored

    # -- running work ----------------------------------------------------

    async def claim(
        self, owner: str, limits: Mapping[str, OperationLimits], *, lease_s: float, now: datetime
    ) -> Claimed:
        settled: list[Job] = []
        for _ in range(8):  # a few jobs settled on the way, then let others write
            got = await self._lease(owner, limits, lease_s, now)
            if not isinstance(got, Span):
                settled.extend([got] if got is not None else [])
                if got is None:
                    break
                continue
            # The payloads are read after the commit, on the reader: the writer's
            # transaction only records who holds which indexes.
            items = await work.span_items(self._r, got.job.pk, got.first, got.last)
            if items:
                return Claimed(Lease(got.lease_pk, got.job, items), settled)
            empty = ChunkResult(got.lease_pk, got.job.pk, (), release=True)
            settled.extend((await self.complete(owner, [empty], now)).jobs)
        return Claimed(None, settled)

    async def _lease(
        self, owner: str, limits: Mapping[str, OperationLimits], lease_s: float, now: datetime
    ) -> Span | Job | None:
        """A span leased to `owner`; or a job settled because it had nothing left to
        lease; or None when nothing is claimable."""
        now_ms = to_ms(now)
        expires_ms = now_ms + int(lease_s * 1000)
        async with self._txn() as db:
            ops = work.claimable_ops(limits, await work.leases_by_operation(db))
            if not ops:
                return None
            ops_json = jsonutil.dumps_str(ops)
            got = await work.reclaim_expired(db, owner, ops_json, now_ms, expires_ms)
            if got is None:
                found = await work.next_job(db, ops_json)
                if found is None:
                    return None
                job, first = found
                span = limits[job.operation].span_items
                got = await work.lease_span(
                    db, job, first, span, owner, now_ms=now_ms, expires_ms=expires_ms
                )
                got = got if got is not None else await work.settle(db, job, now_ms)
            if isinstance(got, Job):
                await self._outbox.enqueue_in(db, [got], now)
        return got

    async def complete(self, owner: str, results: Sequence[ChunkResult], now: datetime) -> Settled:
        now_ms = to_ms(now)
        async with self._txn() as db:
            owned = await work.owned_leases(db, owner, sorted({r.lease_pk for r in results}))
            kept = [r for r in results if r.lease_pk in owned]
            jobs = await work.apply_outcomes(db, kept, now_ms)
            released = sorted({r.lease_pk for r in kept if r.release})
            if released:
                marks = ",".join("?" * len(released))
                await db.execute(f"DELETE FROM leases WHERE pk IN ({marks})", released)
            jobs = await self._settle_all(db, jobs, {r.job_pk for r in kept}, now_ms)
            grew = await self._outbox.enqueue_in(db, jobs, now)
            failpoints.hit("commit")  # crash tests: inside the group commit's transaction
        lost = frozenset(r.lease_pk for r in results if r.lease_pk not in owned)
        if lost:
            logger.warning("%d chunk results of lost leases ignored", len(lost))
        return Settled(jobs, lost, bool(grew))

    async def _settle_all(
        self, db: aiosqlite.Connection, jobs: list[Job], pks: set[int], now_ms: int
    ) -> list[Job]:
        by_pk = {j.pk: j for j in jobs}
        for pk in pks - by_pk.keys():  # released leases without outcomes (a stopped span)
            job = await work.job_by_pk(db, pk)
            if job is not None:
                by_pk[pk] = job
        return [await work.settle(db, job, now_ms) for job in by_pk.values()]

    async def stop(
        self, job_pk: int, status: JobStatus, now: datetime, error: JobError | None = None
    ) -> Job:
        if not status.is_terminal:
            raise ValueError(f"a job stops in a terminal status, not {status.value}")
        now_ms = to_ms(now)
        async with self._txn() as db:
            job = await work.job_by_pk(db, job_pk)
            if job is None:
                raise KeyError(f"job {job_pk} does not exist")
            states.check(job.status, status)
            job = await work.request_stop(db, job, status, now_ms, error)
            failpoints.hit("cancel")  # crash tests: stop requested, not committed
            job = await work.settle(db, job, now_ms)
            await self._outbox.enqueue_in(db, [job], now)
        return job

    async def heartbeat(
        self, owner: str, leases: Collection[int], *, lease_s: float, now: datetime
    ) -> Beat:
        expires_ms = to_ms(now) + int(lease_s * 1000)
        async with self._txn() as db:
            cur = await db.execute(
                "UPDATE leases SET expires_at = ? WHERE owner = ?"
                " AND pk IN (SELECT value FROM json_each(?))",
                (expires_ms, owner, jsonutil.dumps_str(sorted(leases))),
            )
            renewed = cur.rowcount
            found = await work.rows(
                db,
                "SELECT DISTINCT l.job_pk FROM leases l JOIN jobs j ON j.pk = l.job_pk"
                " WHERE l.owner = ? AND j.stop_status IS NOT NULL",
                (owner,),
            )
            stopping = frozenset(r[0] for r in found)
        return Beat(renewed, stopping)

    # -- reads -----------------------------------------------------------

    async def find_job(
        self, job_id: str | None = None, *, idempotency: tuple[str, str] | None = None
    ) -> JobLookup:
        if idempotency is not None:
            async with self._r.execute(_SELECT_IDEMPOTENCY, idempotency) as cur:
                row = await cur.fetchone()
            return JobLookup(idempotency=_idempotency_from_row(row) if row else None)
        sql = (
            f"SELECT {JOB_COLS}, (SELECT retry_of FROM job_retries WHERE job_id = jobs.id),"
            " (SELECT job_id FROM job_retries WHERE retry_of = jobs.id"
            " ORDER BY job_id DESC LIMIT 1) FROM jobs WHERE id = ?"
        )
        async with self._r.execute(sql, (job_id,)) as cur:
            row = await cur.fetchone()
        if row is not None:
            n = len(row)
            return JobLookup(job_from_row(row), retry_of=row[n - 2], retried_by=row[n - 1])
        return JobLookup(tombstone=await self._tombstone(job_id or ""))

    async def _tombstone(self, job_id: str) -> Tombstone | None:
        sql = (
            "SELECT job_id, tenant, reason, deleted_at, keep_until FROM tombstones WHERE job_id = ?"
        )
        async with self._r.execute(sql, (job_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return Tombstone(row[0], row[1], row[2], from_ms(row[3]), from_ms(row[4]))

    async def list_jobs(self, flt: JobFilter, *, before_pk: int | None, limit: int) -> list[Job]:
        where, args = [_ACTIVE if flt.active else "1 = 1"], []
        for column, value in (
            ("tenant", flt.tenant),
            ("status", flt.status.value if flt.status else None),
            ("operation", flt.operation),
            ("pk <", before_pk),
        ):
            if value is not None:
                where.append(f"{column} {'' if '<' in column else '='} ?")
                args.append(value)
        sql = f"SELECT {JOB_COLS} FROM jobs WHERE {' AND '.join(where)} ORDER BY pk DESC LIMIT ?"
        async with self._r.execute(sql, (*args, limit)) as cur:
            return [job_from_row(r) for r in await cur.fetchall()]

    async def list_items(
        self, job_pk: int, *, status: ItemStatus | None, after_index: int, limit: int
    ) -> list[ItemRow]:
        # The status is inlined (an enum value, never user text) so that the partial
        # index on failed items can be used; a bound parameter would not match it.
        extra = f" AND status = '{ItemStatus(status).value}'" if status else ""
        sql = (
            "SELECT idx, item_id, status, result, error_code, error_message, attempts"
            f" FROM items WHERE job_pk = ? AND idx > ?{extra} ORDER BY idx LIMIT ?"
        )
        async with self._r.execute(sql, (job_pk, after_index, limit)) as cur:
            return list(map(ItemRow._make, await cur.fetchall()))

    async def stats(self, tenant: str | None = None) -> StoreStats:
        sql = (
            "SELECT status, count(*), sum(total_items - succeeded - failed - cancelled),"
            " sum(tenant = :t),"
            " sum(CASE WHEN tenant = :t THEN total_items - succeeded - failed - cancelled END),"
            " sum(CASE WHEN tenant = :t THEN total_items END)"
            " FROM jobs GROUP BY status"
        )
        async with self._r.execute(sql, {"t": tenant}) as cur:
            rows = await cur.fetchall()
        active = [r for r in rows if r[0] in ("pending", "running")]
        return StoreStats(
            jobs_by_status={r[0]: r[1] for r in rows},
            # metrics only: a submit (with a tenant) does not scan the whole outbox
            webhooks_by_status=await self._outbox.count_by_status() if tenant is None else {},
            backlog_items=sum(r[2] or 0 for r in active),
            tenant_active_jobs=sum(r[3] or 0 for r in active),
            tenant_backlog_items=sum(r[4] or 0 for r in active),
            tenant_stored_items=sum(r[5] or 0 for r in rows),
        )

    # -- removal and maintenance ---------------------------------------------

    async def remove_job(self, job: Job, reason: str, now: datetime, keep_until: datetime) -> None:
        """Delete the job row, leave a tombstone and queue its items, in one transaction."""
        async with self._txn() as db:
            await _remove(db, job, reason, now, keep_until)

    async def _expire(self, now: datetime, limit: int, keep_until: datetime) -> list[Job]:
        sql = (
            f"SELECT {JOB_COLS} FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?"
            " ORDER BY expires_at LIMIT ?"
        )
        async with self._txn() as db:
            jobs = [job_from_row(r) for r in await work.rows(db, sql, (to_ms(now), limit))]
            for job in jobs:
                await _remove(db, job, "expired", now, keep_until)
        return jobs

    async def _purge_step(self, batch: int) -> int:
        """Delete up to `batch` items of removed jobs; return how many went (0: none left)."""
        async with self._r.execute("SELECT job_pk FROM purge_queue LIMIT 1") as queued:
            row = await queued.fetchone()
        if row is None:
            return 0
        async with self._txn() as db:
            cur = await db.execute(
                "DELETE FROM items WHERE job_pk = ? AND idx IN"
                " (SELECT idx FROM items WHERE job_pk = ? LIMIT ?)",
                (row[0], row[0], batch),
            )
            removed = cur.rowcount
            if removed < batch:
                await _purge_job_rows(db, row[0])
        return max(removed, 1)

    async def _sweep(self, now: datetime) -> int:
        async with self._txn() as db:
            a = await db.execute("DELETE FROM tombstones WHERE keep_until <= ?", (to_ms(now),))
            b = await db.execute(
                "DELETE FROM idempotency_keys WHERE expires_at <= ?", (to_ms(now),)
            )
            return a.rowcount + b.rowcount


_SELECT_IDEMPOTENCY = (
    "SELECT tenant, key, request_hash, job_id, created_at, expires_at"
    " FROM idempotency_keys WHERE tenant = ? AND key = ?"
)


def _own(path: str) -> IO[bytes] | None:
    """Take the file's ownership lock, so that a second process cannot open it too."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    handle = open(f"{path}-lock", "ab")  # noqa: SIM115  (held open while we own the file)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreLocked(f"another bulkjobs process is using {path}") from None
    return handle


async def _remove(
    db: aiosqlite.Connection, job: Job, reason: str, now: datetime, keep_until: datetime
) -> None:
    await db.execute(
        "INSERT OR REPLACE INTO tombstones (job_id, tenant, reason, deleted_at, keep_until)"
        " VALUES (?, ?, ?, ?, ?)",
        (job.id, job.tenant, reason, to_ms(now), to_ms(keep_until)),
    )
    await db.execute("INSERT OR IGNORE INTO purge_queue (job_pk) VALUES (?)", (job.pk,))
    await db.execute("DELETE FROM jobs WHERE pk = ?", (job.pk,))
    await db.execute("DELETE FROM job_retries WHERE job_id = ?", (job.id,))


async def _insert_items(db: aiosqlite.Connection, pk: int, first_idx: int, items: NewItems) -> None:
    if len(items):
        await db.executemany(
            "INSERT INTO items (job_pk, idx, item_id, payload) VALUES (?, ?, ?, ?)",
            zip(itertools.repeat(pk), itertools.count(first_idx), items.ids, items.payloads),
        )


async def _insert_idempotency(db: aiosqlite.Connection, record: IdempotencyRecord) -> None:
    await db.execute(
        "INSERT OR REPLACE INTO idempotency_keys (tenant, key, request_hash, job_id,"
        " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        (
            record.tenant,
            record.key,
            record.request_hash,
            record.job_id,
            to_ms(record.created_at),
            to_ms(record.expires_at),
        ),
    )


async def _copy_failed(db: aiosqlite.Connection, pk: int, job: Job, source: Job) -> None:
    """A retry's items: the failed items of `source`, in order, linked both ways."""
    cur = await db.execute(
        "INSERT INTO items (job_pk, idx, item_id, payload)"
        " SELECT ?, row_number() OVER (ORDER BY idx) - 1, item_id, payload"
        " FROM items WHERE job_pk = ? AND status = 'failed' ORDER BY idx",
        (pk, source.pk),
    )
    if cur.rowcount != job.total_items:
        raise RuntimeError(f"{source.id} has {cur.rowcount} failed items, not {job.total_items}")
    await db.execute(
        "INSERT INTO job_retries (job_id, retry_of) VALUES (?, ?)", (job.id, source.id)
    )
    # The retry notifies the same webhook as the job it retries (checked again at
    # delivery time like every target).
    await db.execute(
        "INSERT INTO webhook_subscriptions (job_pk, url, events, progress_interval_ms,"
        " last_progress_at) SELECT ?, url, events, progress_interval_ms, ?"
        " FROM webhook_subscriptions WHERE job_pk = ? AND gone_at IS NULL",
        (pk, to_ms(job.created_at), source.pk),
    )
    # The source's representation gains a link: a new seq makes its ETag change.
    await db.execute("UPDATE jobs SET seq = seq + 1 WHERE pk = ?", (source.pk,))


async def _purge_job_rows(db: aiosqlite.Connection, job_pk: int) -> None:
    """The last step of purging a job: its queue entry and webhook bookkeeping.

    Messages still waiting for delivery are kept: they carry their own job snapshot
    and are delivered even after the job is gone.
    """
    done = "SELECT pk FROM webhook_messages WHERE job_pk = ? AND status != 'pending'"
    await db.execute(f"DELETE FROM webhook_attempts WHERE message_pk IN ({done})", (job_pk,))
    await db.execute(
        "DELETE FROM webhook_messages WHERE job_pk = ? AND status != 'pending'", (job_pk,)
    )
    await db.execute("DELETE FROM webhook_subscriptions WHERE job_pk = ?", (job_pk,))
    await db.execute("DELETE FROM purge_queue WHERE job_pk = ?", (job_pk,))


def _idempotency_from_row(row: Sequence[Any]) -> IdempotencyRecord:
    tenant, key, request_hash, job_id, created_at, expires_at = row
    return IdempotencyRecord(
        tenant, key, request_hash, job_id, from_ms(created_at), from_ms(expires_at)
    )
