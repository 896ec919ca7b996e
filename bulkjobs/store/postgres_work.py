"""PostgreSQL statements for running work: leases, settling outcomes, guarded transitions.

Every function here runs inside a transaction of `PostgresStore` on one pooled
connection; none commits. Several processes share the database, so the rows a decision
depends on are locked first: a job's row (`FOR UPDATE`) before its leases are counted or
changed, a lease's row before it is settled or taken over. Claimers skip what another
claimer holds (`SKIP LOCKED`, `pg_try_advisory_xact_lock`) instead of queueing behind it.
The state machine's guard is in the SQL, as on SQLite: a transition updates a row only
when its current status is one of `sources_of(target)`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .. import states
from ..models import Job, JobError, JobStatus, WorkItem
from .base import ChunkResult, OperationLimits
from .common import Span, threshold_error
from .rows import JOB_COLS, job_from_row

logger = logging.getLogger(__name__)

#: An asyncpg connection (asyncpg ships no type information).
Conn = Any

_ACTIVE = "status IN ('pending', 'running')"

_APPLY_OUTCOMES = """
UPDATE items i SET status = u.status, result = u.result, error_code = u.code,
  error_message = u.message, attempts = u.attempts
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::int[])
  AS u(status, result, code, message, attempts, job_pk, idx)
WHERE i.job_pk = u.job_pk AND i.idx = u.idx AND i.status = 'pending'
RETURNING i.job_pk, i.status
"""

_COUNTERS = f"""
UPDATE jobs SET succeeded = succeeded + $2, failed = failed + $3, updated_at = $4, seq = seq + 1
WHERE pk = $1 RETURNING {JOB_COLS}
"""

_NEXT_JOB = f"""
SELECT {JOB_COLS}, next_idx FROM jobs j
WHERE j.{_ACTIVE} AND j.stop_status IS NULL AND j.next_idx < j.total_items
  AND j.operation = ANY($1::text[])
ORDER BY coalesce((SELECT t.turn FROM tenant_turns t WHERE t.tenant = j.tenant), 0), j.turn, j.pk
LIMIT 1
FOR UPDATE OF j SKIP LOCKED
"""

_EXPIRED_LEASE = """
SELECT pk, job_pk, first_idx, last_idx FROM leases
WHERE expires_at <= $1 AND operation = ANY($2::text[])
ORDER BY expires_at, pk LIMIT 1
FOR UPDATE SKIP LOCKED
"""

_TRANSITION = f"""
UPDATE jobs SET
  status = $2,
  started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, $4) ELSE started_at END,
  completed_at = CASE WHEN $3 THEN $4 ELSE completed_at END,
  expires_at = CASE WHEN $3 THEN $4 + ttl_s * 1000::bigint ELSE expires_at END,
  error_code = coalesce($5, CASE WHEN $2 = stop_status THEN stop_code END, error_code),
  error_message = coalesce($6, CASE WHEN $2 = stop_status THEN stop_message END, error_message),
  stop_status = CASE WHEN $3 THEN NULL ELSE stop_status END,
  updated_at = $4,
  seq = seq + 1
WHERE pk = $1 AND status = ANY($7::text[])
RETURNING {JOB_COLS}
"""


def count(status: str) -> int:
    """The row count of an asyncpg command status such as 'UPDATE 3'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def job_by_pk(db: Conn, pk: int, *, lock: bool = False) -> Job | None:
    """A job row; with `lock`, locked for the rest of the transaction."""
    suffix = " FOR UPDATE" if lock else ""
    row = await db.fetchrow(f"SELECT {JOB_COLS} FROM jobs WHERE pk = $1{suffix}", pk)
    return job_from_row(row) if row else None


# -- claiming ---------------------------------------------------------------------


async def claimable_ops(db: Conn, limits: Mapping[str, OperationLimits]) -> list[str]:
    """Operations with room under their concurrency limit (leases out, any owner).

    An operation with a limit is counted only by the claimer holding its advisory
    lock for this transaction; the others skip it for now, as `SKIP LOCKED` skips rows.
    """
    free = [name for name, lim in limits.items() if lim.concurrency is None]
    limited = sorted(name for name, lim in limits.items() if lim.concurrency is not None)
    if not limited:
        return free
    rows = await db.fetch(
        "SELECT op, (SELECT count(*) FROM leases l WHERE l.operation = op) AS n"
        " FROM unnest($1::text[]) AS op"
        " WHERE pg_try_advisory_xact_lock(hashtext('bulkjobs.operation'), hashtext(op))",
        limited,
    )
    out = {r["op"]: r["n"] for r in rows}
    return free + [op for op in limited if op in out and out[op] < (limits[op].concurrency or 0)]


async def reclaim_expired(
    db: Conn, owner: str, ops: list[str], now_ms: int, expires_ms: int
) -> Span | Job | None:
    """Take over the oldest expired lease (any owner's): a Span to work, or the settled
    Job when its job is stopping (nothing of it runs any more)."""
    row = await db.fetchrow(_EXPIRED_LEASE, now_ms, ops)
    if row is None:
        return None
    lease_pk, job_pk, first, last = row
    job = await job_by_pk(db, job_pk, lock=True)
    if job is None or job.stop_requested:
        await db.execute("DELETE FROM leases WHERE pk = $1", lease_pk)
        return await settle(db, job, now_ms) if job is not None else None
    await db.execute(
        "UPDATE leases SET owner = $1, expires_at = $2 WHERE pk = $3", owner, expires_ms, lease_pk
    )
    logger.info("lease %d of job %s reclaimed by %s", lease_pk, job.id, owner)
    return Span(lease_pk, job, first, last)


async def next_job(db: Conn, ops: list[str]) -> tuple[Job, int] | None:
    """The next job in turn (least recently served tenant, then its least recent job),
    with its claim frontier; its row stays locked, and jobs locked by others are skipped."""
    row = await db.fetchrow(_NEXT_JOB, ops)
    return (job_from_row(row), row[-1]) if row else None


async def lease_span(
    db: Conn, job: Job, first: int, span_items: int, owner: str, *, now_ms: int, expires_ms: int
) -> Span | None:
    """Lease `span_items` indexes of `job` from `first`, its claim frontier."""
    last = min(first + span_items, job.total_items) - 1
    if first > last:
        return None
    lease_pk = await db.fetchval(
        "INSERT INTO leases (job_pk, first_idx, last_idx, owner, operation, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING pk",
        job.pk,
        first,
        last,
        owner,
        job.operation,
        expires_ms,
    )
    await db.execute(
        "WITH t AS (INSERT INTO tenant_turns (tenant, turn) VALUES ($1, nextval('turns'))"
        " ON CONFLICT (tenant) DO UPDATE SET turn = excluded.turn RETURNING turn)"
        " UPDATE jobs SET next_idx = $2, turn = (SELECT turn FROM t) WHERE pk = $3",
        job.tenant,
        last + 1,
        job.pk,
    )
    if job.status is JobStatus.PENDING:
        job = await transition(db, job.pk, JobStatus.RUNNING, now_ms)
    return Span(lease_pk, job, first, last)


async def span_items(db: Conn, job_pk: int, first: int, last: int) -> list[WorkItem]:
    """The pending items of a leased span (read after the lease is committed)."""
    rows = await db.fetch(
        "SELECT idx, item_id, payload FROM items"
        " WHERE job_pk = $1 AND idx BETWEEN $2 AND $3 AND status = 'pending' ORDER BY idx",
        job_pk,
        first,
        last,
    )
    return [WorkItem(r[0], r[1], r[2]) for r in rows]


# -- settling ---------------------------------------------------------------------


async def owned_leases(db: Conn, owner: str, pks: Sequence[int]) -> set[int]:
    """Which of these leases `owner` holds, locked so that no one takes them over now."""
    rows = await db.fetch(
        "SELECT pk FROM leases WHERE owner = $1 AND pk = ANY($2::bigint[]) ORDER BY pk FOR UPDATE",
        owner,
        list(pks),
    )
    return {r[0] for r in rows}


async def apply_outcomes(db: Conn, kept: Sequence[ChunkResult], now_ms: int) -> list[Job]:
    """Write the outcomes of owned chunks (one statement for all of them) and move their
    jobs' counters by what was actually written (a replayed outcome counts nothing)."""
    outcomes = [o for r in kept for o in r.outcomes]
    deltas: dict[int, list[int]] = {r.job_pk: [0, 0] for r in kept if r.outcomes}
    if outcomes:
        columns = list(zip(*outcomes, strict=True))
        for job_pk, status in await db.fetch(_APPLY_OUTCOMES, *columns):
            deltas[job_pk][0 if status == "succeeded" else 1] += 1
    jobs = []
    for pk in sorted(deltas):  # one lock order for every writer: no deadlocks
        ok, bad = deltas[pk]
        row = await db.fetchrow(_COUNTERS, pk, ok, bad, now_ms)
        if row is not None:
            jobs.append(job_from_row(row))
    applied = sum(ok + bad for ok, bad in deltas.values())
    if applied != len(outcomes):
        logger.warning("%d stale outcomes ignored", len(outcomes) - applied)
    return jobs


async def settle(db: Conn, job: Job, now_ms: int) -> Job:
    """Stop a job past its failure threshold; finish one with no leases and nothing left.

    The caller holds the job's row lock, so no claimer adds a lease meanwhile.
    """
    if job.is_terminal:
        return job
    if job.max_failed is not None and job.failed > job.max_failed and not job.stop_requested:
        job = await request_stop(db, job, JobStatus.FAILED, now_ms, threshold_error(job))
    row = await db.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM leases WHERE job_pk = $1), next_idx FROM jobs WHERE pk = $1",
        job.pk,
    )
    leased, frontier = row
    if leased:
        return job
    if job.stop_requested:
        return await finish(db, job, job.stop_requested, now_ms)
    if frontier < job.total_items:
        return job
    if job.processed < job.total_items:
        # Outcomes of a span were lost (a worker gave up on it): claim its items again.
        first = await db.fetchval(
            "SELECT min(idx) FROM items WHERE job_pk = $1 AND status = 'pending'", job.pk
        )
        if first is not None:
            await db.execute("UPDATE jobs SET next_idx = $1 WHERE pk = $2", first, job.pk)
            return job
    return await finish(db, job, JobStatus.COMPLETED, now_ms)


async def request_stop(
    db: Conn, job: Job, status: JobStatus, now_ms: int, error: JobError | None
) -> Job:
    """Record that the job stops as `status` once its leases settle (first request wins)."""
    states.check(job.status, status)
    row = await db.fetchrow(
        "UPDATE jobs SET stop_status = coalesce(stop_status, $1),"
        " stop_code = CASE WHEN stop_status IS NULL THEN $2 ELSE stop_code END,"
        " stop_message = CASE WHEN stop_status IS NULL THEN $3 ELSE stop_message END,"
        " cancel_requested_at = CASE WHEN $1 = 'cancelled'"
        "   THEN coalesce(cancel_requested_at, $4) ELSE cancel_requested_at END,"
        f" updated_at = $4, seq = seq + 1 WHERE pk = $5 RETURNING {JOB_COLS}",
        status.value,
        error.code if error else None,
        error.message if error else None,
        now_ms,
        job.pk,
    )
    return job_from_row(row)


async def finish(db: Conn, job: Job, status: JobStatus, now_ms: int) -> Job:
    """The terminal transition: pending items become cancelled, then the status moves."""
    if status is not JobStatus.COMPLETED:
        done = await db.execute(
            "UPDATE items SET status = 'cancelled' WHERE job_pk = $1 AND status = 'pending'",
            job.pk,
        )
        if count(done):
            await db.execute(
                "UPDATE jobs SET cancelled = cancelled + $1 WHERE pk = $2", count(done), job.pk
            )
    await db.execute("DELETE FROM leases WHERE job_pk = $1", job.pk)
    return await transition(db, job.pk, status, now_ms)


async def transition(
    db: Conn, job_pk: int, target: JobStatus, now_ms: int, error: JobError | None = None
) -> Job:
    """Move the job to `target` if the state machine allows it from its current status."""
    row = await db.fetchrow(
        _TRANSITION,
        job_pk,
        target.value,
        target.is_terminal,
        now_ms,
        error.code if error else None,
        error.message if error else None,
        [s.value for s in states.sources_of(target)],
    )
    if row is None:
        current = await job_by_pk(db, job_pk)
        if current is None:
            raise KeyError(f"job {job_pk} does not exist")
        raise states.IllegalTransition(current.status, target)
    return job_from_row(row)
