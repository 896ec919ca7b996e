"""A consistency checker over a bulkjobs SQLite file: the invariants that must hold
after any crash, any concurrency, any restart.

    problems = check(db_path)   # [] when the file is consistent
    assert_consistent(db_path)

It opens its own `sqlite3` connection (WAL: readers see the last committed state and
never block the writer), so it can run against the file of a live server, a killed
one, or a stopped one. Synchronous: call it from a thread inside async code.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing

JOB_STATUSES = frozenset({"pending", "running", "completed", "failed", "cancelled"})
TERMINAL = frozenset({"completed", "failed", "cancelled"})
ITEM_STATUSES = frozenset({"pending", "succeeded", "failed", "cancelled"})

#: One row per job: its own columns, then what its items say.
_PER_JOB = """
SELECT j.id, j.status, j.total_items, j.succeeded, j.failed, j.cancelled,
       j.completed_at, j.expires_at, j.error_code, j.seq,
       count(i.idx),
       coalesce(sum(i.status = 'succeeded'), 0),
       coalesce(sum(i.status = 'failed'), 0),
       coalesce(sum(i.status = 'cancelled'), 0),
       coalesce(sum(i.status = 'pending'), 0),
       min(i.idx), max(i.idx)
FROM jobs j LEFT JOIN items i ON i.job_pk = j.pk
GROUP BY j.pk
"""

_BAD_ITEMS = """
SELECT job_pk, idx, status FROM items WHERE
  status NOT IN ('pending', 'succeeded', 'failed', 'cancelled')
  OR (status = 'failed' AND error_code IS NULL)
  OR (status = 'succeeded' AND error_code IS NOT NULL)
  OR (status = 'pending' AND (attempts != 0 OR result IS NOT NULL OR error_code IS NOT NULL))
LIMIT 20
"""

_ORPHANS = """
SELECT DISTINCT job_pk FROM items
WHERE job_pk NOT IN (SELECT pk FROM jobs) AND job_pk NOT IN (SELECT job_pk FROM purge_queue)
LIMIT 20
"""


def check(db_path: str) -> list[str]:
    """Every broken invariant of the file, as readable lines (empty when consistent)."""
    with closing(sqlite3.connect(db_path, timeout=30)) as db:
        db.execute("PRAGMA query_only = ON")
        problems = list(_check_jobs(db))
        problems += [f"item {r}: illegal item row" for r in db.execute(_BAD_ITEMS)]
        problems += [
            f"items of job_pk {r[0]}: no job and not queued for purge" for r in db.execute(_ORPHANS)
        ]
        problems += [
            f"purge_queue {r[0]}: its job still exists"
            for r in db.execute(
                "SELECT job_pk FROM purge_queue WHERE job_pk IN (SELECT pk FROM jobs)"
            )
        ]
        problems += [
            f"tombstone {r[0]}: its job still exists"
            for r in db.execute(
                "SELECT job_id FROM tombstones WHERE job_id IN (SELECT id FROM jobs)"
            )
        ]
    return problems


def _check_jobs(db: sqlite3.Connection) -> Iterator[str]:
    for row in db.execute(_PER_JOB):
        (
            job_id,
            status,
            total,
            ok,
            failed,
            cancelled,
            completed_at,
            expires_at,
            error_code,
            seq,
            n_items,
            n_ok,
            n_failed,
            n_cancelled,
            n_pending,
            lo,
            hi,
        ) = row
        for problem in _job_problems(
            status,
            total,
            (ok, failed, cancelled),
            (n_ok, n_failed, n_cancelled, n_pending),
            (n_items, lo, hi),
            (completed_at, expires_at, error_code, seq),
        ):
            yield f"{job_id} ({status}): {problem}"


def _job_problems(
    status: str,
    total: int,
    counters: tuple[int, int, int],
    outcomes: tuple[int, int, int, int],
    rows: tuple[int, int | None, int | None],
    extra: tuple[int | None, int | None, str | None, int],
) -> Iterator[str]:
    n_items, lo, hi = rows
    n_pending = outcomes[3]
    completed_at, expires_at, error_code, seq = extra
    if status not in JOB_STATUSES:
        yield "illegal job status"
    if n_items != total or (total and (lo, hi) != (0, total - 1)):
        yield f"half-stored: {n_items} item rows (idx {lo}..{hi}) for total_items {total}"
    if counters != outcomes[:3]:
        yield f"counters {counters} != item outcomes {outcomes[:3]}"
    if sum(counters) > total:
        yield f"processed {sum(counters)} > total_items {total}"
    if status in TERMINAL and n_pending:
        yield f"terminal with {n_pending} pending items"
    if status == "completed" and counters[0] + counters[1] != total:
        yield f"completed but succeeded+failed = {counters[0] + counters[1]} != {total}"
    if status == "failed" and not error_code:
        yield "failed without an error code"
    if (status in TERMINAL) != (completed_at is not None):
        yield f"completed_at {completed_at} does not match the status"
    if status in TERMINAL and expires_at is None:
        yield "terminal without expires_at"
    if seq < 1:
        yield f"seq {seq} < 1"


def assert_consistent(db_path: str) -> None:
    """Fail with every broken invariant listed."""
    problems = check(db_path)
    assert not problems, f"{len(problems)} inconsistencies:\n" + "\n".join(problems[:30])


def job_counts(db_path: str) -> dict[str, int]:
    """Jobs per status, for reports."""
    with closing(sqlite3.connect(db_path, timeout=30)) as db:
        return dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
