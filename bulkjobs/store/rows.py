"""SQLite rows to domain records: the job columns every query selects, in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import Job, JobError, JobStatus
from .timestamps import from_ms

JOB_COLS = (
    "pk, id, tenant, operation, status, total_items, succeeded, failed, cancelled, created_at,"
    " started_at, completed_at, updated_at, expires_at, cancel_requested_at, error_code,"
    " error_message, seq, ttl_s, max_failed, stop_status"
)


def job_from_row(row: Sequence[Any]) -> Job:
    """A Job from a row selected with `JOB_COLS`."""
    return Job(
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
        error=JobError(row[15], row[16] or "") if row[15] else None,
        seq=row[17],
        ttl_s=row[18],
        pk=row[0],
        max_failed=row[19],
        stop_requested=JobStatus(row[20]) if row[20] else None,
    )
