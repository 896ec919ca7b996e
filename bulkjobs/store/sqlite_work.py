"""SQLite statements for running work: leases, settling outcomes, guarded transitions.

Every function here runs inside a write transaction of `SQLiteStore` (the caller
holds the writer lock); none commits. The state machine's guard is in the SQL: a
transition updates a row only when its current status is one of `sources_of(target)`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiosqlite

from .. import jsonutil, states
from ..models import ItemOutcome, Job, JobError, JobStatus, WorkItem
from .base import ChunkResult, OperationLimits
from .common import Span, threshold_error
from .rows import JOB_COLS, job_from_row

logger = logging.getLogger(__name__)

_ACTIVE = "status IN ('pending', 'running')"

_UPDATE_ITEM = (
    "UPDATE items SET status = ?, result = ?, error_code = ?, error_message = ?, attempts = ?"
    " WHERE job_pk = ? AND idx = ? AND status = 'pending'"
)

_UPDATE_RANGE = (
    "UPDATE items SET status = ?, result = ?, error_code = ?, error_message = ?, attempts = ?"
    " WHERE job_pk = ? AND idx BETWEEN ? AND ? AND status = 'pending'"
)

_COUNTERS = f"""
UPDATE jobs SET succeeded = succeeded + :succeeded, failed = failed + :failed,
  updated_at = :now, seq = seq + 1
WHERE pk = :pk RETURNING {JOB_COLS}
"""

_RECOUNT = f"""
UPDATE jobs SET
  succeeded = (SELECT count(*) FROM items WHERE job_pk = :pk AND status = 'succeeded'),
  failed = (SELECT count(*) FROM items WHERE job_pk = :pk AND status = 'failed'),
  cancelled = (SELECT count(*) FROM items WHERE job_pk = :pk AND status = 'cancelled')
WHERE pk = :pk
RETURNING {JOB_COLS}
"""

_NEXT_JOB = f"""
SELECT {JOB_COLS}, next_idx FROM jobs j
WHERE j.{_ACTIVE} AND j.stop_status IS NULL AND j.next_idx < j.total_items
  AND j.operation IN (SELECT value FROM json_each(:ops))
ORDER BY coalesce((SELECT t.turn FROM tenant_turns t WHERE t.tenant = j.tenant), 0), j.turn, j.pk
LIMIT 1
"""

_LEASED_AND_FRONTIER = (
    "SELECT EXISTS (SELECT 1 FROM leases WHERE job_pk = :pk), next_idx FROM jobs WHERE pk = :pk"
)

_EXPIRED_LEASE = """
SELECT pk, job_pk, first_idx, last_idx FROM leases
WHERE expires_at <= :now AND operation IN (SELECT value FROM json_each(:ops))
ORDER BY expires_at, pk LIMIT 1
"""


async def one(db: aiosqlite.Connection, sql: str, params: Any = ()) -> Any:
    """The first row of a statement, or None (one trip to the connection's thread)."""
    rows = await db.execute_fetchall(sql, params)
    return next(iter(rows), None)


async def rows(db: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
    """Every row of a statement, in one trip to the connection's thread."""
    return list(await db.execute_fetchall(sql, params))


async def job_by_pk(db: aiosqlite.Connection, pk: int) -> Job | None:
    row = await one(db, f"SELECT {JOB_COLS} FROM jobs WHERE pk = ?", (pk,))
    return job_from_row(row) if row else None


# -- claiming ---------------------------------------------------------------------


def claimable_ops(limits: Mapping[str, OperationLimits], out: Mapping[str, int]) -> list[str]:
    """Operations with room under their concurrency limit (leases out, any owner)."""
    return [
        name
        for name, lim in limits.items()
        if lim.concurrency is None or out.get(name, 0) < lim.concurrency
    ]


async def leases_by_operation(db: aiosqlite.Connection) -> dict[str, int]:
    found = await rows(db, "SELECT operation, count(*) FROM leases GROUP BY operation")
    return {r[0]: r[1] for r in found}


async def reclaim_expired(
    db: aiosqlite.Connection, owner: str, ops_json: str, now_ms: int, expires_ms: int
) -> Span | Job | None:
    """Take over the oldest expired lease: a Span to work, or the settled Job when its
    job is stopping (nothing of it runs any more)."""
    row = await one(db, _EXPIRED_LEASE, {"now": now_ms, "ops": ops_json})
    if row is None:
        return None
    lease_pk, job_pk, first, last = row
    job = await job_by_pk(db, job_pk)
    if job is None or job.stop_requested:
        await db.execute("DELETE FROM leases WHERE pk = ?", (lease_pk,))
        return await settle(db, job, now_ms) if job is not None else None
    await db.execute(
        "UPDATE leases SET owner = ?, expires_at = ? WHERE pk = ?", (owner, expires_ms, lease_pk)
    )
    logger.info("lease %d of job %s reclaimed by %s", lease_pk, job.id, owner)
    return Span(lease_pk, job, first, last)


async def next_job(db: aiosqlite.Connection, ops_json: str) -> tuple[Job, int] | None:
    """The next job in turn (least recently served tenant, then its least recent job),
    with its claim frontier."""
    row = await one(db, _NEXT_JOB, {"ops": ops_json})
    return (job_from_row(row), row[-1]) if row else None


async def lease_span(
    db: aiosqlite.Connection,
    job: Job,
    first: int,
    span_items: int,
    owner: str,
    *,
    now_ms: int,
    expires_ms: int,
) -> Span | None:
    """Lease `span_items` indexes of `job` from `first`, its claim frontier (items in it
    that are no longer pending are skipped when the span is read)."""
    last = min(first + span_items, job.total_items) - 1
    if first > last:
        return None
    cur = await db.execute(
        "INSERT INTO leases (job_pk, first_idx, last_idx, owner, operation, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (job.pk, first, last, owner, job.operation, expires_ms),
    )
    lease_pk = cur.lastrowid
    assert lease_pk is not None
    await _take_turn(db, job, last + 1)
    if job.status is JobStatus.PENDING:
        job = await transition(db, job.pk, JobStatus.RUNNING, now_ms)
    return Span(lease_pk, job, first, last)


async def _take_turn(db: aiosqlite.Connection, job: Job, next_idx: int) -> None:
    """Move the job's claim frontier and send it and its tenant to the back of the line."""
    row = await one(
        db,
        "INSERT INTO tenant_turns (tenant, turn)"
        " VALUES (?, (SELECT coalesce(max(turn), 0) + 1 FROM tenant_turns))"
        " ON CONFLICT (tenant) DO UPDATE SET turn = excluded.turn RETURNING turn",
        (job.tenant,),
    )
    await db.execute(
        "UPDATE jobs SET next_idx = ?, turn = ? WHERE pk = ?", (next_idx, row[0], job.pk)
    )


async def span_items(reader: Any, job_pk: int, first: int, last: int) -> list[WorkItem]:
    """The pending items of a leased span (read after the lease is committed)."""
    sql = (
        "SELECT idx, item_id, payload FROM items"
        " WHERE job_pk = ? AND idx BETWEEN ? AND ? AND status = 'pending' ORDER BY idx"
    )
    async with reader.execute(sql, (job_pk, first, last)) as cur:
        return [WorkItem(r[0], r[1], r[2]) for r in await cur.fetchall()]


# -- settling ---------------------------------------------------------------------


async def owned_leases(db: aiosqlite.Connection, owner: str, pks: Sequence[int]) -> set[int]:
    marks = ",".join("?" * len(pks))
    sql = f"SELECT pk FROM leases WHERE owner = ? AND pk IN ({marks})"
    return {r[0] for r in await rows(db, sql, (owner, *pks))}


async def apply_outcomes(
    db: aiosqlite.Connection, kept: Sequence[ChunkResult], now_ms: int
) -> list[Job]:
    """Write the outcomes of owned chunks and move their jobs' counters to match."""
    deltas: dict[int, list[int]] = {}
    outcomes: list[ItemOutcome] = []
    for result in kept:
        d = deltas.setdefault(result.job_pk, [0, 0])
        for o in result.outcomes:
            d[0 if o.status == "succeeded" else 1] += 1
        outcomes.extend(result.outcomes)
    applied = await _update_items(db, outcomes)
    jobs = []
    for pk, (ok, bad) in deltas.items():
        params = {"pk": pk, "succeeded": ok, "failed": bad, "now": now_ms}
        jobs.append(job_from_row(await one(db, _COUNTERS, params)))
    if applied != len(outcomes):
        # Some outcome hit an item that was no longer pending: trust the items.
        logger.warning("%d stale outcomes ignored; recounting", len(outcomes) - applied)
        jobs = [job_from_row(await one(db, _RECOUNT, {"pk": j.pk})) for j in jobs]
    return jobs


#: Shortest run of identical outcomes at consecutive indexes written as one range.
MIN_RUN = 16


async def _update_items(db: aiosqlite.Connection, outcomes: Sequence[ItemOutcome]) -> int:
    """Write outcomes; return how many items were still pending (and so were updated).

    Outcomes without a result of their own (a `noop`, a run of the same error) mostly
    come in runs: same status, code, message and attempts at consecutive indexes of one
    job. Such a run is one `idx BETWEEN` statement, so SQLite walks the range in C;
    the rest go through `executemany`, which binds 7 parameters per row with the GIL
    held (against the event loop) and steps the statement once per row. With ranges,
    a `noop` job's commit thread went from 39 % to 31 % of the samples and the loop's
    wake-ups from it (`_write_to_self`) from 9 % to 1 % (py-spy, 1M items).
    """
    if not outcomes:
        return 0
    singles: list[ItemOutcome] = []
    ranges: list[tuple[Any, ...]] = []
    i, n = 0, len(outcomes)
    while i < n:
        first = outcomes[i]
        j = i + 1
        if first.result_json is None:
            key = first[:6]  # everything but idx
            while j < n and outcomes[j].idx == first.idx + (j - i) and outcomes[j][:6] == key:
                j += 1
        if j - i >= MIN_RUN:
            ranges.append((*first[:6], first.idx, outcomes[j - 1].idx))
        else:
            singles.extend(outcomes[i:j])
        i = j
    applied = 0
    if ranges:
        applied += (await db.executemany(_UPDATE_RANGE, ranges)).rowcount
    if singles:
        applied += (await db.executemany(_UPDATE_ITEM, singles)).rowcount
    return applied


async def settle(db: aiosqlite.Connection, job: Job, now_ms: int) -> Job:
    """Stop a job past its failure threshold; finish one with no leases and nothing left."""
    if job.is_terminal:
        return job
    if job.max_failed is not None and job.failed > job.max_failed and not job.stop_requested:
        job = await request_stop(db, job, JobStatus.FAILED, now_ms, threshold_error(job))
    leased, frontier = await one(db, _LEASED_AND_FRONTIER, {"pk": job.pk})
    if leased:
        return job
    if job.stop_requested:
        return await finish(db, job, job.stop_requested, now_ms)
    if frontier < job.total_items:
        return job
    if job.processed < job.total_items:
        # Outcomes of a span were lost (a worker gave up on it): claim its items again.
        first = await one(
            db, "SELECT min(idx) FROM items WHERE job_pk = ? AND status = 'pending'", (job.pk,)
        )
        if first[0] is not None:
            await db.execute("UPDATE jobs SET next_idx = ? WHERE pk = ?", (first[0], job.pk))
            return job
    return await finish(db, job, JobStatus.COMPLETED, now_ms)


async def request_stop(
    db: aiosqlite.Connection, job: Job, status: JobStatus, now_ms: int, error: JobError | None
) -> Job:
    """Record that the job stops as `status` once its leases settle (first request wins)."""
    states.check(job.status, status)
    row = await one(
        db,
        "UPDATE jobs SET stop_status = coalesce(stop_status, :status),"
        " stop_code = CASE WHEN stop_status IS NULL THEN :code ELSE stop_code END,"
        " stop_message = CASE WHEN stop_status IS NULL THEN :message ELSE stop_message END,"
        " cancel_requested_at = CASE WHEN :status = 'cancelled'"
        "   THEN coalesce(cancel_requested_at, :now) ELSE cancel_requested_at END,"
        f" updated_at = :now, seq = seq + 1 WHERE pk = :pk RETURNING {JOB_COLS}",
        {
            "status": status.value,
            "code": error.code if error else None,
            "message": error.message if error else None,
            "now": now_ms,
            "pk": job.pk,
        },
    )
    return job_from_row(row)


async def finish(db: aiosqlite.Connection, job: Job, status: JobStatus, now_ms: int) -> Job:
    """The terminal transition: pending items become cancelled, then the status moves."""
    if status is not JobStatus.COMPLETED:
        cur = await db.execute(
            "UPDATE items SET status = 'cancelled' WHERE job_pk = ? AND status = 'pending'",
            (job.pk,),
        )
        if cur.rowcount:
            await db.execute(
                "UPDATE jobs SET cancelled = cancelled + ? WHERE pk = ?", (cur.rowcount, job.pk)
            )
    await db.execute("DELETE FROM leases WHERE job_pk = ?", (job.pk,))
    return await transition(db, job.pk, status, now_ms)


_TRANSITION = f"""
UPDATE jobs SET
  status = :target,
  started_at = CASE WHEN :target = 'running' THEN coalesce(started_at, :now) ELSE started_at END,
  completed_at = CASE WHEN :terminal THEN :now ELSE completed_at END,
  expires_at = CASE WHEN :terminal THEN :now + ttl_s * 1000 ELSE expires_at END,
  error_code = coalesce(:code, CASE WHEN :target = stop_status THEN stop_code END, error_code),
  error_message = coalesce(:message,
    CASE WHEN :target = stop_status THEN stop_message END, error_message),
  stop_status = CASE WHEN :terminal THEN NULL ELSE stop_status END,
  updated_at = :now,
  seq = seq + 1
WHERE pk = :pk AND status IN (SELECT value FROM json_each(:sources))
RETURNING {JOB_COLS}
"""


async def transition(
    db: aiosqlite.Connection,
    job_pk: int,
    target: JobStatus,
    now_ms: int,
    error: JobError | None = None,
) -> Job:
    """Move the job to `target` if the state machine allows it from its current status."""
    params = {
        "pk": job_pk,
        "target": target.value,
        "terminal": target.is_terminal,
        "code": error.code if error else None,
        "message": error.message if error else None,
        "now": now_ms,
        "sources": jsonutil.dumps_str([s.value for s in states.sources_of(target)]),
    }
    row = await one(db, _TRANSITION, params)
    if row is None:
        current = await job_by_pk(db, job_pk)
        if current is None:
            raise KeyError(f"job {job_pk} does not exist")
        raise states.IllegalTransition(current.status, target)
    return job_from_row(row)
