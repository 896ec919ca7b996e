"""Domain types: job and item states, ids, records. No I/O here (transitions: states.py)."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import attrs

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class ItemStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _encode_base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_job_id(now_ms: int | None = None) -> str:
    """`job_` + 48-bit millisecond time (sortable) + 80 random bits (unguessable)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    return "job_" + _encode_base32(ms, 10) + _encode_base32(rand, 16)


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_ts(value: datetime | None) -> str | None:
    """RFC 3339 UTC with a `Z` suffix and millisecond precision."""
    if value is None:
        return None
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


@attrs.frozen
class ItemError:
    """Why one item failed: a stable machine code and a human message."""

    code: str
    message: str


@attrs.frozen
class JobError:
    """Why a job as a whole failed."""

    code: str
    message: str


@attrs.frozen
class Job:
    """A job as stored: identity, counters and lifecycle timestamps."""

    id: str
    operation: str
    status: JobStatus
    total_items: int
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    tenant: str = "default"
    created_at: datetime = attrs.field(factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime = attrs.field(factory=utcnow)
    expires_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    error: JobError | None = None
    seq: int = 0
    ttl_s: int = 7 * 24 * 3600
    pk: int = 0  # the store's key; 0 until stored
    #: Failed items beyond which the job stops as `failed` (None: never).
    max_failed: int | None = None
    #: A terminal status asked for while items were still out (cancel, threshold).
    stop_requested: JobStatus | None = None

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def progress(self) -> float:
        if self.total_items == 0:
            return 1.0
        return round(self.processed / self.total_items, 4)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@attrs.frozen
class ItemRecord:
    """One item's stored outcome, as listed by the items endpoint."""

    index: int
    item_id: str | None
    status: ItemStatus
    result: Any = None
    error: ItemError | None = None
    attempts: int = 0


@attrs.frozen
class WorkItem:
    """One item handed to a worker: its position and its payload as JSON text."""

    index: int
    item_id: str | None
    payload_json: str | bytes


@attrs.frozen
class NewItems:
    """The items of a new job, column by column; an item's index is its position."""

    ids: Sequence[str | None] = ()
    payloads: Sequence[str] = ()  # JSON text

    def __len__(self) -> int:
        return len(self.payloads)


class ItemOutcome(NamedTuple):
    """A finished item as a worker hands it to the store (field order is the UPDATE's)."""

    status: str
    result_json: str | None
    error_code: str | None
    error_message: str | None
    attempts: int
    job_pk: int
    idx: int


class ItemRow(NamedTuple):
    """One stored item outcome; `result_json` stays encoded (downloads stream it as is)."""

    idx: int
    item_id: str | None
    status: str
    result_json: str | None
    error_code: str | None
    error_message: str | None
    attempts: int
