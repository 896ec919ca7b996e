"""Webhook subscriptions, the durable outbox and delivery attempts (SQLite).

A job's subscription is written in the transaction that creates the job; outbox
messages are written in the group commit that makes the change they announce
(`enqueue_in`), so a crash between a transition and its delivery loses nothing.
Each message carries a snapshot of the job as it was at that change, so every
attempt sends the same body even after the job was deleted.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

import aiosqlite
import attrs

from .. import jsonutil
from ..models import Job, JobError, JobStatus
from .reader import Reader
from .timestamps import from_ms, to_ms

TERMINAL_EVENTS = ("job.completed", "job.failed", "job.cancelled")
PROGRESS_EVENT = "job.progress"
EVENT_TYPES = (*TERMINAL_EVENTS, PROGRESS_EVENT)
MILESTONES = (25, 50, 75)


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
class Subscription:
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
class Attempt:
    """One try at delivering a message, and what it decided."""

    at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


@attrs.frozen
class AttemptRecord:
    """What the dispatcher writes after a try: the attempt and the message's new state."""

    attempt: Attempt
    status: MessageStatus
    retries: int
    gone: bool = False


class WebhookStore(Protocol):
    """What the webhook dispatcher and the deliveries API need from storage."""

    @property
    def outbox_seq(self) -> int:
        """Grows whenever messages may have been added (a cheap change signal)."""
        ...

    async def due(self, now: datetime, after: tuple[int, int] | None, limit: int) -> list[Message]:
        """Pending messages due by `now`, oldest first, continuing after `(due_ms, pk)`."""
        ...

    async def next_due(self, limit: int) -> list[tuple[int, datetime]]:
        """(pk, due time) of the earliest pending messages."""
        ...

    async def record(self, message_pk: int, rec: AttemptRecord) -> None: ...

    async def subscription(self, job_pk: int) -> Subscription | None: ...

    async def messages(self, job_pk: int, after_pk: int, limit: int) -> list[Message]: ...

    async def attempts(self, message_pks: Sequence[int]) -> dict[int, list[Attempt]]: ...

    async def message(self, job_pk: int, msg_id: str) -> Message | None: ...

    async def redeliver(self, message_pk: int, now: datetime) -> Message:
        """Make a message due now with a fresh retry schedule; re-enable its subscription."""
        ...

    async def count_by_status(self) -> dict[str, int]: ...


# -- job snapshots ---------------------------------------------------------------


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


# -- what a commit enqueues ------------------------------------------------------


def new_message_id(now_ms: int) -> str:
    """`msg_` + millisecond time + 80 random bits, hex (sortable, unguessable)."""
    return f"msg_{now_ms:012x}{os.urandom(10).hex()}"


def milestone(job: Job) -> int:
    """The highest 25/50/75 % milestone the job has reached (0 below 25 %)."""
    reached = [m for m in MILESTONES if job.processed * 100 >= m * job.total_items]
    return reached[-1] if reached else 0


@attrs.frozen
class ProgressState:
    events: frozenset[str]
    interval_ms: int
    last_progress_at: int
    last_milestone: int


def progress_key(state: ProgressState, job: Job, now_ms: int) -> str | None:
    """The dedupe key of a `job.progress` message this commit should send, if any."""
    if PROGRESS_EVENT not in state.events or job.status is not JobStatus.RUNNING:
        return None
    reached = milestone(job)
    if reached > state.last_milestone:
        return f"progress:{reached}%"
    if job.processed and now_ms - state.last_progress_at >= state.interval_ms:
        return f"progress:seq{job.seq}"
    return None


def _due_message(state: ProgressState, job: Job, now_ms: int) -> str | None:
    if job.is_terminal:
        kind = f"job.{job.status.value}"
        return "terminal" if kind in state.events else None
    return progress_key(state, job, now_ms)


# -- SQLite ----------------------------------------------------------------------

_MESSAGE_COLS = (
    "m.pk, m.id, m.job_pk, m.job_id, m.type, m.created_at, m.status, m.attempts, m.retries,"
    " m.next_attempt_at, m.delivered_at, s.url, m.snapshot"
)
_FROM = "webhook_messages m JOIN webhook_subscriptions s ON s.job_pk = m.job_pk"


def _message(row: Sequence[Any]) -> Message:
    return Message(
        pk=row[0],
        id=row[1],
        job_pk=row[2],
        job_id=row[3],
        type=row[4],
        created_at=from_ms(row[5]),
        status=MessageStatus(row[6]),
        attempts=row[7],
        retries=row[8],
        next_attempt_at=from_ms(row[9]),
        delivered_at=from_ms(row[10]),
        url=row[11],
        snapshot=row[12],
    )


TxnFactory = Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]]


class SQLiteWebhooks:
    """The `WebhookStore` of a `SQLiteStore`: shares its writer lock and reader."""

    def __init__(self, txn: TxnFactory, reader: Callable[[], Reader]) -> None:
        self._txn = txn
        self._reader = reader
        self._outbox_seq = 0

    @property
    def outbox_seq(self) -> int:
        return self._outbox_seq

    # -- inside the store's own transactions ----------------------------------

    async def subscribe_in(
        self, db: aiosqlite.Connection, job_pk: int, created_at: datetime, hook: NewWebhook
    ) -> None:
        """Record a job's subscription inside the transaction that creates the job."""
        await db.execute(
            "INSERT INTO webhook_subscriptions (job_pk, url, events, progress_interval_ms,"
            " last_progress_at) VALUES (?, ?, ?, ?, ?)",
            (job_pk, hook.url, " ".join(hook.events), hook.progress_interval_ms, to_ms(created_at)),
        )

    async def enqueue_in(self, db: aiosqlite.Connection, jobs: Sequence[Job], now: datetime) -> int:
        """Add the outbox messages these committed job changes call for; return how many."""
        now_ms = to_ms(now)
        states = await self._states(db, [j.pk for j in jobs])
        added = 0
        for job in jobs:
            state = states.get(job.pk)
            key = _due_message(state, job, now_ms) if state is not None else None
            if key is not None:
                added += await self._insert(db, job, key, now_ms)
        if added:
            self._outbox_seq += 1
        return added

    async def _states(self, db: aiosqlite.Connection, pks: list[int]) -> dict[int, ProgressState]:
        if not pks:
            return {}
        marks = ",".join("?" * len(pks))
        sql = (
            "SELECT job_pk, events, progress_interval_ms, last_progress_at, last_milestone"
            f" FROM webhook_subscriptions WHERE gone_at IS NULL AND job_pk IN ({marks})"
        )
        async with db.execute(sql, pks) as cur:
            rows = await cur.fetchall()
        return {r[0]: ProgressState(frozenset(r[1].split()), r[2], r[3], r[4]) for r in rows}

    async def _insert(self, db: aiosqlite.Connection, job: Job, key: str, now_ms: int) -> int:
        kind = f"job.{job.status.value}" if key == "terminal" else PROGRESS_EVENT
        cur = await db.execute(
            "INSERT OR IGNORE INTO webhook_messages (id, job_pk, job_id, type, dedupe,"
            " created_at, snapshot, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (new_message_id(now_ms), job.pk, job.id, kind, key, now_ms, job_snapshot(job), now_ms),
        )
        if kind == PROGRESS_EVENT:
            await db.execute(
                "UPDATE webhook_subscriptions SET last_progress_at = ?,"
                " last_milestone = max(last_milestone, ?) WHERE job_pk = ?",
                (now_ms, milestone(job), job.pk),
            )
        return cur.rowcount

    # -- dispatcher ------------------------------------------------------------

    async def due(self, now: datetime, after: tuple[int, int] | None, limit: int) -> list[Message]:
        # 'pending' is inlined so that the partial index applies.
        where = "m.status = 'pending' AND m.next_attempt_at <= ?"
        args: list[Any] = [to_ms(now)]
        if after is not None:
            where += " AND (m.next_attempt_at, m.pk) > (?, ?)"
            args.extend(after)
        sql = (
            f"SELECT {_MESSAGE_COLS} FROM {_FROM} WHERE {where}"
            " ORDER BY m.next_attempt_at, m.pk LIMIT ?"
        )
        async with self._reader().execute(sql, (*args, limit)) as cur:
            return [_message(r) for r in await cur.fetchall()]

    async def next_due(self, limit: int) -> list[tuple[int, datetime]]:
        sql = (
            "SELECT pk, next_attempt_at FROM webhook_messages WHERE status = 'pending'"
            " ORDER BY next_attempt_at, pk LIMIT ?"
        )
        async with self._reader().execute(sql, (limit,)) as cur:
            return [(r[0], from_ms(r[1])) for r in await cur.fetchall()]

    async def record(self, message_pk: int, rec: AttemptRecord) -> None:
        a = rec.attempt
        nxt = to_ms(a.next_attempt_at) if a.next_attempt_at else None
        delivered = to_ms(a.at) if rec.status is MessageStatus.DELIVERED else None
        async with self._txn() as db:
            async with db.execute(
                "UPDATE webhook_messages SET attempts = attempts + 1, retries = ?, status = ?,"
                " next_attempt_at = ?, delivered_at = COALESCE(?, delivered_at)"
                " WHERE pk = ? RETURNING attempts, job_pk",
                (rec.retries, rec.status.value, nxt, delivered, message_pk),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return
            await db.execute(
                "INSERT INTO webhook_attempts (message_pk, n, at, duration_ms, status_code,"
                " error, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_pk, row[0], to_ms(a.at), a.duration_ms, a.status_code, a.error, nxt),
            )
            if rec.gone:
                await _stop_subscription(db, row[1], to_ms(a.at))

    # -- deliveries API --------------------------------------------------------

    async def subscription(self, job_pk: int) -> Subscription | None:
        sql = "SELECT job_pk, url, events, gone_at FROM webhook_subscriptions WHERE job_pk = ?"
        async with self._reader().execute(sql, (job_pk,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return Subscription(row[0], row[1], tuple(row[2].split()), from_ms(row[3]))

    async def messages(self, job_pk: int, after_pk: int, limit: int) -> list[Message]:
        sql = (
            f"SELECT {_MESSAGE_COLS} FROM {_FROM} WHERE m.job_pk = ? AND m.pk > ?"
            " ORDER BY m.pk LIMIT ?"
        )
        async with self._reader().execute(sql, (job_pk, after_pk, limit)) as cur:
            return [_message(r) for r in await cur.fetchall()]

    async def attempts(self, message_pks: Sequence[int]) -> dict[int, list[Attempt]]:
        found: dict[int, list[Attempt]] = {pk: [] for pk in message_pks}
        if not message_pks:
            return found
        marks = ",".join("?" * len(message_pks))
        sql = (
            "SELECT message_pk, at, duration_ms, status_code, error, next_attempt_at"
            f" FROM webhook_attempts WHERE message_pk IN ({marks}) ORDER BY message_pk, n"
        )
        async with self._reader().execute(sql, list(message_pks)) as cur:
            for r in await cur.fetchall():
                found[r[0]].append(Attempt(from_ms(r[1]), r[2], r[3], r[4], from_ms(r[5])))
        return found

    async def message(self, job_pk: int, msg_id: str) -> Message | None:
        sql = f"SELECT {_MESSAGE_COLS} FROM {_FROM} WHERE m.job_pk = ? AND m.id = ?"
        async with self._reader().execute(sql, (job_pk, msg_id)) as cur:
            row = await cur.fetchone()
        return _message(row) if row else None

    async def redeliver(self, message_pk: int, now: datetime) -> Message:
        async with self._txn() as db:
            async with db.execute(
                "UPDATE webhook_messages SET status = 'pending', retries = 0, next_attempt_at = ?"
                " WHERE pk = ? RETURNING job_pk",
                (to_ms(now), message_pk),
            ) as cur:
                row = await cur.fetchone()
            assert row is not None, f"webhook message {message_pk} vanished"
            await db.execute(
                "UPDATE webhook_subscriptions SET gone_at = NULL WHERE job_pk = ?", (row[0],)
            )
        self._outbox_seq += 1
        sql = f"SELECT {_MESSAGE_COLS} FROM {_FROM} WHERE m.pk = ?"
        async with self._reader().execute(sql, (message_pk,)) as cur:
            fresh = await cur.fetchone()
        assert fresh is not None
        return _message(fresh)

    async def count_by_status(self) -> dict[str, int]:
        sql = (
            "SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END,"
            " count(*) FROM webhook_messages GROUP BY 1"
        )
        async with self._reader().execute(sql) as cur:
            rows: Iterable[Sequence[Any]] = await cur.fetchall()
        counts = {"pending": 0, "retrying": 0, "delivered": 0, "failed": 0}
        counts.update({r[0]: r[1] for r in rows})
        return counts


async def _stop_subscription(db: aiosqlite.Connection, job_pk: int, now_ms: int) -> None:
    """410 Gone: no more messages for this subscription; pending ones fail."""
    await db.execute(
        "UPDATE webhook_subscriptions SET gone_at = ? WHERE job_pk = ?", (now_ms, job_pk)
    )
    await db.execute(
        "UPDATE webhook_messages SET status = 'failed', next_attempt_at = NULL"
        " WHERE job_pk = ? AND status = 'pending'",
        (job_pk,),
    )
