"""The webhook outbox's records: subscriptions, messages, attempts, job snapshots.

Domain types only (no I/O): the stores persist them, the service decides and
delivers them, the HTTP layer shows them. Which commit calls for which message is
the service's rule (`service/webhooks/rules.py`), handed to the store as an
`OutboxRule`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import attrs

from . import jsonutil
from .models import Job, JobError, JobStatus

TERMINAL_EVENTS = ("job.completed", "job.failed", "job.cancelled")
PROGRESS_EVENT = "job.progress"
EVENT_TYPES = (*TERMINAL_EVENTS, PROGRESS_EVENT)


class MessageStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@attrs.frozen
class NewWebhook:
    """A subscription as submitted with a job."""

    url: str
    events: tuple[str, ...]
    progress_interval_ms: int


@attrs.frozen
class WebhookSubscription:
    """A job's webhook subscription as stored (`gone_at`: stopped by a 410)."""

    job_pk: int
    url: str
    events: tuple[str, ...]
    gone_at: datetime | None


@attrs.frozen
class Message:
    """One logical webhook message (stable `id` across attempts)."""

    pk: int
    id: str
    job_pk: int
    job_id: str
    type: str
    created_at: datetime
    status: MessageStatus
    attempts: int
    retries: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    url: str
    snapshot: bytes

    @property
    def job(self) -> Job:
        return job_from_snapshot(self.snapshot)


@attrs.frozen
class DeliveryAttempt:
    """One try at delivering a message, and what it decided."""

    at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


@attrs.frozen
class AttemptRecord:
    """What the dispatcher writes after a try: the attempt and the message's new state."""

    attempt: DeliveryAttempt
    status: MessageStatus
    retries: int
    gone: bool = False


@attrs.frozen
class Due:
    """Messages due now, and (pk, due time) of the earliest pending ones."""

    messages: list[Message] = attrs.field(factory=list)
    upcoming: list[tuple[int, datetime]] = attrs.field(factory=list)


@attrs.frozen
class Delivery:
    """One message and its attempts, as listed."""

    message: Message
    attempts: list[DeliveryAttempt]


@attrs.frozen
class Deliveries:
    """A page of a job's messages with their attempts, and its subscription."""

    subscription: WebhookSubscription | None
    data: Sequence[Delivery]


@attrs.frozen
class ProgressState:
    events: frozenset[str]
    interval_ms: int
    last_progress_at: int
    last_milestone: int


@attrs.frozen
class OutboxEntry:
    """A message a committed change calls for: its dedupe key (one message per key and
    job) and the progress milestone it reports (recorded on the subscription)."""

    key: str
    milestone: int = 0


#: Which message, if any, a committed change of a job calls for (service/webhooks/rules).
OutboxRule = Callable[[ProgressState, Job, int], OutboxEntry | None]


def job_snapshot(job: Job) -> bytes:
    return jsonutil.dumps(attrs.asdict(job))


def job_from_snapshot(raw: bytes) -> Job:
    data: dict[str, Any] = jsonutil.loads(raw)
    names = {f.name for f in attrs.fields(Job)}
    values = {k: v for k, v in data.items() if k in names}
    for key, value in values.items():
        if key.endswith("_at") and isinstance(value, str):
            values[key] = datetime.fromisoformat(value)
    values["status"] = JobStatus(values["status"])
    if values.get("error"):
        values["error"] = JobError(**values["error"])
    return Job(**values)


def new_message_id(now_ms: int) -> str:
    """`msg_` + millisecond time + 80 random bits, hex (sortable, unguessable)."""
    return f"msg_{now_ms:012x}{os.urandom(10).hex()}"
