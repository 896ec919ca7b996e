"""SQLite backend: WAL, one writer connection guarded by a lock, one reader connection.

Every write is one `BEGIN IMMEDIATE` transaction holding the writer lock, so
statements of two coroutines never interleave inside one transaction. Reads go to
a second connection: in WAL mode they never wait for the writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import aiosqlite

from .. import failpoints, jsonutil
from ..models import ItemError, ItemRecord, ItemStatus, Job, JobError, JobStatus, WorkItem
from .base import (
    IdempotencyRecord,
    JobChange,
    JobFilter,
    NewItemRow,
    OutcomeRow,
    ResultRow,
    Tombstone,
)
from .reader import Reader
from .schema import MIGRATIONS
from .timestamps import from_ms, to_ms
from .webhooks import NewWebhook, SQLiteWebhooks

logger = logging.getLogger(__name__)

_JOB_COLS = (
    "pk, id, tenant, operation, status, total_items, succeeded, failed, cancelled, created_at,"
    " started_at, completed_at, updated_at, expires_at, cancel_requested_at, error_code,"
    " error_message, seq, ttl_s"
)

_UPDATE_ITEM = (
    "UPDATE items SET status = ?, result = ?, error_code = ?, error_message = ?, attempts = ?"
    " WHERE job_pk = ? AND idx = ? AND status = 'pending'"
)

_UPDATE_JOB = f"""
UPDATE jobs SET
  succeeded = succeeded + :succeeded,
  failed = failed + :failed,
  cancelled = cancelled + :cancelled,
  status = COALESCE(:status, status),
  started_at = CASE WHEN :start THEN COALESCE(started_at, :now) ELSE started_at END,
  completed_at = CASE WHEN :terminal THEN :now ELSE completed_at END,
  expires_at = CASE WHEN :terminal THEN :now + ttl_s * 1000 ELSE expires_at END,
  error_code = COALESCE(:error_code, error_code),
  error_message = COALESCE(:error_message, error_message),
  updated_at = :now,
  seq = seq + 1
WHERE pk = :pk
RETURNING {_JOB_COLS}
"""

_RECOUNT = f"""
UPDATE jobs SET
  succeeded = (SELECT count(*) FROM items WHERE job_pk = :pk AND status = 'succeeded'),
  failed = (SELECT count(*) FROM items WHERE job_pk = :pk AND status = 'failed'),
  cancelled = (SELECT count(*) FROM items WHERE job_pk = :pk AND status = 'cancelled')
WHERE pk = :pk
RETURNING {_JOB_COLS}
"""


def job_from_row(row: Sequence[Any]) -> Job:
    """A Job from a row selected with `_JOB_COLS`."""
    error = JobError(row[15], row[16] or "") if row[15] else None
    job = Job(
        id=row[1],
        tenant=row[2],
        operation=row[3],
        status=JobStatus(row[4]),
        total_items=row[5],
        succeeded=row[6],
        failed=row[7],
        cancelled=row[8],
        created_at=from_ms(row[9]),
        started_at=from_ms(row[10]),
        completed_at=from_ms(row[11]),
        updated_at=from_ms(row[12]),
        expires_at=from_ms(row[13]),
        cancel_requested_at=from_ms(row[14]),
        error=error,
        seq=row[17],
        ttl_s=row[18],
        pk=row[0],
    )
    return job


def _item_from_row(row: Sequence[Any]) -> ItemRecord:
    idx, item_id, status, result, code, message, attempts = row
    return ItemRecord(
        index=idx,
        item_id=item_id,
        status=ItemStatus(status),
        result=jsonutil.loads(result) if result is not None else None,
        error=ItemError(code, message or "") if code else None,
        attempts=attempts,
    )


class SQLiteStore:
    """The embedded store: one file, WAL, group commits through one writer."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 10_000):
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: Reader | None = None
        self._write_lock = asyncio.Lock()
        self._unsettled = False  # a transaction ended without a settled commit/rollback
        self.webhooks = SQLiteWebhooks(self._txn, lambda: self._r)

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        """Open both connections, set pragmas, migrate the schema."""
        self._writer = await self._connect()
        await self._migrate(self._writer)
        self._reader = Reader(await self._connect())  # one whole query per trip: see reader.py

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

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

    async def ping(self) -> None:
        async with self._r.execute("SELECT 1") as cur:
            await cur.fetchone()

    # -- jobs ------------------------------------------------------------

    async def create_job(
        self, job: Job, items: Sequence[NewItemRow], webhook: NewWebhook | None = None
    ) -> int:
        async with self._txn() as db:
            return await self._insert_job(db, job, items, webhook)

    async def _insert_job(
        self,
        db: aiosqlite.Connection,
        job: Job,
        items: Sequence[NewItemRow],
        webhook: NewWebhook | None = None,
    ) -> int:
        cur = await db.execute(
            "INSERT INTO jobs (pk, id, tenant, operation, status, total_items, created_at,"
            " updated_at, ttl_s, seq) VALUES ((SELECT pk + 1 FROM job_pk_high_water),"
            " ?, ?, ?, ?, ?, ?, ?, ?, 1) RETURNING pk",
            (
                job.id,
                job.tenant,
                job.operation,
                job.status.value,
                job.total_items,
                to_ms(job.created_at),
                to_ms(job.updated_at),
                job.ttl_s,
            ),
        )
        row = await cur.fetchone()
        await cur.close()
        assert row is not None
        pk: int = row[0]
        await db.executemany(
            "INSERT INTO items (job_pk, idx, item_id, payload) VALUES (?, ?, ?, ?)",
            [(pk, idx, item_id, payload) for idx, item_id, payload in items],
        )
        failpoints.hit("insert_job")  # crash tests: job and items written, not committed
        if webhook is not None:
            await self.webhooks.subscribe_in(db, pk, job.created_at, webhook)
        return pk

    async def get_job(self, job_id: str) -> Job | None:
        async with self._r.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return job_from_row(row) if row else None

    async def list_jobs(self, flt: JobFilter, *, before_pk: int | None, limit: int) -> list[Job]:
        where, args = ["1 = 1"], []
        for column, value in (
            ("tenant", flt.tenant),
            ("status", flt.status.value if flt.status else None),
            ("operation", flt.operation),
            ("pk <", before_pk),
        ):
            if value is not None:
                where.append(f"{column} {'' if '<' in column else '='} ?")
                args.append(value)
        sql = f"SELECT {_JOB_COLS} FROM jobs WHERE {' AND '.join(where)} ORDER BY pk DESC LIMIT ?"
        async with self._r.execute(sql, (*args, limit)) as cur:
            return [job_from_row(r) for r in await cur.fetchall()]

    async def count_jobs_by_status(self) -> dict[str, int]:
        async with self._r.execute("SELECT status, count(*) FROM jobs GROUP BY status") as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def check_writable(self) -> None:
        """Take and release the write lock: proves the file accepts writes."""
        async with self._txn():
            pass

    async def unfinished_jobs(self) -> list[Job]:
        sql = f"SELECT {_JOB_COLS} FROM jobs WHERE status IN ('pending', 'running') ORDER BY pk"
        async with self._r.execute(sql) as cur:
            return [job_from_row(r) for r in await cur.fetchall()]

    # -- items -----------------------------------------------------------

    async def list_items(
        self, job_pk: int, *, status: ItemStatus | None, after_index: int, limit: int
    ) -> list[ItemRecord]:
        # The status is inlined (an enum value, never user text) so that the partial
        # index on failed items can be used; a bound parameter would not match it.
        extra = f" AND status = '{ItemStatus(status).value}'" if status else ""
        sql = (
            "SELECT idx, item_id, status, result, error_code, error_message, attempts"
            f" FROM items WHERE job_pk = ? AND idx > ?{extra} ORDER BY idx LIMIT ?"
        )
        async with self._r.execute(sql, (job_pk, after_index, limit)) as cur:
            return [_item_from_row(r) for r in await cur.fetchall()]

    async def load_pending(self, job_pk: int, *, from_index: int, limit: int) -> list[WorkItem]:
        sql = (
            "SELECT idx, item_id, payload FROM items"
            " WHERE job_pk = ? AND idx >= ? AND status = 'pending' ORDER BY idx LIMIT ?"
        )
        async with self._r.execute(sql, (job_pk, from_index, limit)) as cur:
            rows = await cur.fetchall()
        # Payloads stay JSON text here: workers parse each one when they reach it, in
        # their time slices, instead of this read parsing a whole page at once.
        return [WorkItem(r[0], r[1], r[2]) for r in rows]

    # -- the writer's commit ---------------------------------------------

    async def commit(
        self, outcomes: Sequence[OutcomeRow], changes: Sequence[JobChange], now: datetime
    ) -> list[Job]:
        now_ms = to_ms(now)
        async with self._txn() as db:
            applied = len(outcomes)
            if outcomes:
                cur = await db.executemany(_UPDATE_ITEM, outcomes)
                applied = cur.rowcount
            jobs = [await self._apply_change(db, ch, now_ms) for ch in changes]
            if applied != len(outcomes):
                # Some outcome hit an item that was no longer pending: trust the items.
                logger.warning("%d stale outcomes ignored; recounting", len(outcomes) - applied)
                jobs = [await self._recount(db, ch.job_pk) for ch in changes]
            # Webhook messages are written with the change they announce (durable outbox).
            await self.webhooks.enqueue_in(db, jobs, now)
            failpoints.hit("commit")  # crash tests: inside the group commit's transaction
        return jobs

    async def _apply_change(
        self, db: aiosqlite.Connection, ch: JobChange, now_ms: int | None
    ) -> Job:
        cancelled = 0
        if ch.cancel_pending:
            cur = await db.execute(
                "UPDATE items SET status = 'cancelled' WHERE job_pk = ? AND status = 'pending'",
                (ch.job_pk,),
            )
            cancelled = cur.rowcount
        params = {
            "pk": ch.job_pk,
            "succeeded": ch.succeeded,
            "failed": ch.failed,
            "cancelled": cancelled,
            "start": ch.start,
            "status": ch.status.value if ch.status else None,
            "terminal": bool(ch.status and ch.status.is_terminal),
            "error_code": ch.error.code if ch.error else None,
            "error_message": ch.error.message if ch.error else None,
            "now": now_ms,
        }
        async with db.execute(_UPDATE_JOB, params) as cur:
            row = await cur.fetchone()
        assert row is not None, f"job {ch.job_pk} vanished inside its own commit"
        return job_from_row(row)

    async def _recount(self, db: aiosqlite.Connection, job_pk: int) -> Job:
        async with db.execute(_RECOUNT, {"pk": job_pk}) as cur:
            row = await cur.fetchone()
        assert row is not None
        return job_from_row(row)

    async def request_cancel(self, job_pk: int, now: datetime) -> Job | None:
        async with self._txn() as db:
            sql = (
                "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?),"
                " updated_at = ?, seq = seq + 1"
                f" WHERE pk = ? AND status IN ('pending', 'running') RETURNING {_JOB_COLS}"
            )
            async with db.execute(sql, (to_ms(now), to_ms(now), job_pk)) as cur:
                row = await cur.fetchone()
            failpoints.hit("cancel")  # crash tests: cancel marked, not committed
        return job_from_row(row) if row else None

    # -- deletion --------------------------------------------------------

    async def delete_job(self, job_pk: int) -> None:
        """Remove the job row now; its items go in small batches that never stall the writer."""
        async with self._txn() as db:
            await db.execute("INSERT INTO purge_queue (job_pk) VALUES (?)", (job_pk,))
            await db.execute("DELETE FROM jobs WHERE pk = ?", (job_pk,))

    async def purge_step(self, batch: int = 5000) -> int:
        """Delete up to `batch` items of deleted jobs; return how many went."""
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

    # -- retention, idempotency, retries, results --------------------------

    async def remove_job(self, job: Job, reason: str, now: datetime, keep_until: datetime) -> None:
        """Delete the job row, leave a tombstone and queue its items, in one transaction."""
        async with self._txn() as db:
            await db.execute(
                "INSERT OR REPLACE INTO tombstones (job_id, tenant, reason, deleted_at, keep_until)"
                " VALUES (?, ?, ?, ?, ?)",
                (job.id, job.tenant, reason, to_ms(now), to_ms(keep_until)),
            )
            await db.execute("INSERT OR IGNORE INTO purge_queue (job_pk) VALUES (?)", (job.pk,))
            await db.execute("DELETE FROM jobs WHERE pk = ?", (job.pk,))
            await db.execute("DELETE FROM job_retries WHERE job_id = ?", (job.id,))

    async def get_tombstone(self, job_id: str) -> Tombstone | None:
        sql = (
            "SELECT job_id, tenant, reason, deleted_at, keep_until FROM tombstones WHERE job_id = ?"
        )
        async with self._r.execute(sql, (job_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return Tombstone(row[0], row[1], row[2], from_ms(row[3]), from_ms(row[4]))

    async def expired_jobs(self, now: datetime, limit: int) -> list[Job]:
        sql = (
            f"SELECT {_JOB_COLS} FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?"
            " ORDER BY expires_at LIMIT ?"
        )
        async with self._r.execute(sql, (to_ms(now), limit)) as cur:
            return [job_from_row(r) for r in await cur.fetchall()]

    async def sweep_records(self, now: datetime) -> int:
        async with self._txn() as db:
            a = await db.execute("DELETE FROM tombstones WHERE keep_until <= ?", (to_ms(now),))
            b = await db.execute(
                "DELETE FROM idempotency_keys WHERE expires_at <= ?", (to_ms(now),)
            )
            return a.rowcount + b.rowcount

    async def get_idempotency(self, tenant: str, key: str) -> IdempotencyRecord | None:
        async with self._r.execute(_SELECT_IDEMPOTENCY, (tenant, key)) as cur:
            row = await cur.fetchone()
        return _idempotency_from_row(row) if row else None

    async def create_job_once(
        self,
        job: Job,
        items: Sequence[NewItemRow],
        record: IdempotencyRecord,
        webhook: NewWebhook | None = None,
    ) -> IdempotencyRecord | None:
        async with self._txn() as db:
            async with db.execute(_SELECT_IDEMPOTENCY, (record.tenant, record.key)) as cur:
                row = await cur.fetchone()
            if row is not None and row[5] > to_ms(job.created_at):
                return _idempotency_from_row(row)
            await self._insert_job(db, job, items, webhook)
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
        return None

    async def create_retry_job(self, job: Job, source: Job) -> int:
        async with self._txn() as db:
            pk = await self._insert_job(db, job, ())
            cur = await db.execute(
                "INSERT INTO items (job_pk, idx, item_id, payload)"
                " SELECT ?, row_number() OVER (ORDER BY idx) - 1, item_id, payload"
                " FROM items WHERE job_pk = ? AND status = 'failed' ORDER BY idx",
                (pk, source.pk),
            )
            if cur.rowcount != job.total_items:
                raise RuntimeError(
                    f"{source.id} has {cur.rowcount} failed items, not {job.total_items}"
                )
            await db.execute(
                "INSERT INTO job_retries (job_id, retry_of) VALUES (?, ?)", (job.id, source.id)
            )
            # The retry notifies the same webhook as the job it retries (checked again
            # at delivery time like every target).
            await db.execute(
                "INSERT INTO webhook_subscriptions (job_pk, url, events, progress_interval_ms,"
                " last_progress_at) SELECT ?, url, events, progress_interval_ms, ?"
                " FROM webhook_subscriptions WHERE job_pk = ? AND gone_at IS NULL",
                (pk, to_ms(job.created_at), source.pk),
            )
            # The source's representation gains a link: a new seq makes its ETag change.
            await db.execute("UPDATE jobs SET seq = seq + 1 WHERE pk = ?", (source.pk,))
        return pk

    async def retry_links(self, job_id: str) -> tuple[str | None, str | None]:
        sql = (
            "SELECT (SELECT retry_of FROM job_retries WHERE job_id = ?),"
            " (SELECT job_id FROM job_retries WHERE retry_of = ? ORDER BY job_id DESC LIMIT 1)"
        )
        async with self._r.execute(sql, (job_id, job_id)) as cur:
            row = await cur.fetchone()
        assert row is not None
        return row[0], row[1]

    async def result_rows(
        self, job_pk: int, *, status: ItemStatus | None, after_index: int, limit: int
    ) -> list[ResultRow]:
        # Inlined enum value (never user text), as in list_items, so partial indexes apply.
        extra = f" AND status = '{ItemStatus(status).value}'" if status else ""
        sql = (
            "SELECT idx, item_id, status, result, error_code, error_message"
            f" FROM items WHERE job_pk = ? AND idx > ?{extra} ORDER BY idx LIMIT ?"
        )
        async with self._r.execute(sql, (job_pk, after_index, limit)) as cur:
            return list(await cur.fetchall())


_SELECT_IDEMPOTENCY = (
    "SELECT tenant, key, request_hash, job_id, created_at, expires_at"
    " FROM idempotency_keys WHERE tenant = ? AND key = ?"
)


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
