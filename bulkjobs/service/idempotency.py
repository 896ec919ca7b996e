"""Idempotent submits: the `Idempotency-Key` rules and the request fingerprint.

A key names one submission of one tenant. The first request stores its job, its key
and a hash of its body in one transaction; a retry with the same key and the same body
gets that job back, a different body is refused. Concurrent twins serialize on the
store's write transaction, so exactly one job is created.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from ..errors import BulkJobsError
from ..store.base import IdempotencyRecord

MAX_KEY_CHARS = 255


def check_key(key: str) -> str:
    """The key itself, or `invalid_idempotency_key` when empty, too long or not ASCII."""
    printable = all(" " <= ch <= "~" for ch in key)
    if not key.strip() or len(key) > MAX_KEY_CHARS or not printable:
        raise BulkJobsError(
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters"
            f" (got {len(key)}).",
        )
    return key


def request_hash(raw: bytes) -> str:
    """Fingerprint of the request body (byte for byte)."""
    return hashlib.sha256(raw).hexdigest()


def new_record(
    tenant: str, key: str, digest: str, job_id: str, now: datetime, ttl_s: int
) -> IdempotencyRecord:
    return IdempotencyRecord(tenant, key, digest, job_id, now, now + timedelta(seconds=ttl_s))


def matching_job_id(record: IdempotencyRecord, digest: str) -> str:
    """The job created under the key, or `idempotency_key_reused` for another body."""
    if record.request_hash != digest:
        raise BulkJobsError(
            "idempotency_key_reused",
            f"Idempotency-Key {record.key!r} was used for a different request body"
            f" (job {record.job_id}).",
            job_id=record.job_id,
        )
    return record.job_id
