"""Webhook subscriptions, the durable outbox and delivery attempts (PostgreSQL).

The same tables and rules as `webhooks.py` (SQLite): a subscription is written in the
transaction that creates its job, and outbox messages in the transaction that commits
the change they announce, with the service's injected `OutboxRule`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from ..models import Job
from ..outbox import (
    PROGRESS_EVENT,
    AttemptRecord,
    Deliveries,
    Delivery,
    DeliveryAttempt,
    Due,
    Message,
    MessageStatus,
    NewWebhook,
    OutboxEntry,
    OutboxRule,
    ProgressState,
    WebhookSubscription,
    job_snapshot,
    new_message_id,
)
from .postgres_work import Conn, count
from .timestamps import from_ms, to_ms

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
        snapshot=bytes(row[12]),
    )


class PostgresWebhooks:
    """The webhook tables of a `PostgresStore`: its transactions and its pool."""

    def __init__(
        self,
        txn: Callable[[], AbstractAsyncContextManager[Conn]],
        read: Callable[[], AbstractAsyncContextManager[Conn]],
        rule: OutboxRule,
    ) -> None:
        self._txn = txn
        self._read = read
        self._rule = rule

    # -- inside the store's own transactions ----------------------------------

    async def subscribe_in(
        self, db: Conn, job_pk: int, created_at: datetime, hook: NewWebhook
    ) -> None:
        await db.execute(
            "INSERT INTO webhook_subscriptions (job_pk, url, events, progress_interval_ms,"
            " last_progress_at) VALUES ($1, $2, $3, $4, $5)",
            job_pk,
            hook.url,
            " ".join(hook.events),
            hook.progress_interval_ms,
            to_ms(created_at),
        )

    async def enqueue_in(self, db: Conn, jobs: Sequence[Job], now: datetime) -> int:
        """Add the outbox messages these job changes call for; return how many."""
        if not jobs:
            return 0
        now_ms = to_ms(now)
        rows = await db.fetch(
            "SELECT job_pk, events, progress_interval_ms, last_progress_at, last_milestone"
            " FROM webhook_subscriptions WHERE gone_at IS NULL AND job_pk = ANY($1::bigint[])",
            [j.pk for j in jobs],
        )
        found = {r[0]: ProgressState(frozenset(r[1].split()), r[2], r[3], r[4]) for r in rows}
        added = 0
        for job in jobs:
            state = found.get(job.pk)
            entry = self._rule(state, job, now_ms) if state is not None else None
            if entry is not None:
                added += await self._insert(db, job, entry, now_ms)
        return added

    async def _insert(self, db: Conn, job: Job, entry: OutboxEntry, now_ms: int) -> int:
        kind = f"job.{job.status.value}" if job.is_terminal else PROGRESS_EVENT
        done = await db.execute(
            "INSERT INTO webhook_messages (id, job_pk, job_id, type, dedupe, created_at,"
            " snapshot, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $6)"
            " ON CONFLICT (job_pk, dedupe) DO NOTHING",
            new_message_id(now_ms),
            job.pk,
            job.id,
            kind,
            entry.key,
            now_ms,
            job_snapshot(job),
        )
        if kind == PROGRESS_EVENT:
            await db.execute(
                "UPDATE webhook_subscriptions SET last_progress_at = $1,"
                " last_milestone = greatest(last_milestone, $2) WHERE job_pk = $3",
                now_ms,
                entry.milestone,
                job.pk,
            )
        return count(done)

    # -- dispatcher ------------------------------------------------------------

    async def due(
        self, now: datetime, *, after: tuple[int, int] | None, limit: int, upcoming: int = 0
    ) -> Due:
        where = "m.status = 'pending' AND m.next_attempt_at <= $1"
        args: list[Any] = [to_ms(now)]
        if after is not None:
            where += " AND (m.next_attempt_at, m.pk) > ($3, $4)"
            args.extend(after)
        sql = (
            f"SELECT {_MESSAGE_COLS} FROM {_FROM} WHERE {where}"
            " ORDER BY m.next_attempt_at, m.pk LIMIT $2"
        )
        async with self._read() as db:
            messages = [_message(r) for r in await db.fetch(sql, args[0], limit, *args[1:])]
            soon: list[tuple[int, datetime]] = []
            if upcoming:
                rows = await db.fetch(
                    "SELECT pk, next_attempt_at FROM webhook_messages WHERE status = 'pending'"
                    " ORDER BY next_attempt_at, pk LIMIT $1",
                    upcoming,
                )
                soon = [(r[0], from_ms(r[1])) for r in rows]
        return Due(messages if limit else [], soon)

    async def take(self, message_pk: int, now: datetime, lease_s: float) -> bool:
        """Move the message's due time `lease_s` ahead, if it is still pending and due.

        The row lock makes concurrent takers queue; the second re-checks the condition
        after the first commits and finds the message no longer due, so each attempt is
        made by one process. `record` sets the real next due time; a process that dies
        before recording leaves the message due again when the lease ends (at least
        once, never once per process).
        """
        now_ms = to_ms(now)
        async with self._txn() as db:
            done = await db.execute(
                "UPDATE webhook_messages SET next_attempt_at = $1"
                " WHERE pk = $2 AND status = 'pending' AND next_attempt_at <= $3",
                now_ms + int(lease_s * 1000),
                message_pk,
                now_ms,
            )
        return count(done) == 1

    async def record(self, message_pk: int, rec: AttemptRecord) -> None:
        a = rec.attempt
        nxt = to_ms(a.next_attempt_at) if a.next_attempt_at else None
        delivered = to_ms(a.at) if rec.status is MessageStatus.DELIVERED else None
        async with self._txn() as db:
            row = await db.fetchrow(
                "UPDATE webhook_messages SET attempts = attempts + 1, retries = $1, status = $2,"
                " next_attempt_at = $3, delivered_at = coalesce($4, delivered_at)"
                " WHERE pk = $5 RETURNING attempts, job_pk",
                rec.retries,
                rec.status.value,
                nxt,
                delivered,
                message_pk,
            )
            if row is None:
                return
            await db.execute(
                "INSERT INTO webhook_attempts (message_pk, n, at, duration_ms, status_code,"
                " error, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                message_pk,
                row[0],
                to_ms(a.at),
                a.duration_ms,
                a.status_code,
                a.error,
                nxt,
            )
            if rec.gone:
                await _stop_subscription(db, row[1], to_ms(a.at))

    # -- deliveries API --------------------------------------------------------

    async def deliveries(
        self, job_pk: int, *, after_pk: int, limit: int, message_id: str | None = None
    ) -> Deliveries:
        where = "m.job_pk = $1 AND m.pk > $2 AND ($4::text IS NULL OR m.id = $4)"
        sql = f"SELECT {_MESSAGE_COLS} FROM {_FROM} WHERE {where} ORDER BY m.pk LIMIT $3"
        async with self._read() as db:
            messages = [
                _message(r) for r in await db.fetch(sql, job_pk, after_pk, limit, message_id)
            ]
            rows = await db.fetch(
                "SELECT message_pk, at, duration_ms, status_code, error, next_attempt_at"
                " FROM webhook_attempts WHERE message_pk = ANY($1::bigint[])"
                " ORDER BY message_pk, n",
                [m.pk for m in messages],
            )
            sub = await db.fetchrow(
                "SELECT job_pk, url, events, gone_at FROM webhook_subscriptions WHERE job_pk = $1",
                job_pk,
            )
        attempts: dict[int, list[DeliveryAttempt]] = {m.pk: [] for m in messages}
        for r in rows:
            attempts[r[0]].append(DeliveryAttempt(from_ms(r[1]), r[2], r[3], r[4], from_ms(r[5])))
        subscription = (
            WebhookSubscription(sub[0], sub[1], tuple(sub[2].split()), from_ms(sub[3]))
            if sub
            else None
        )
        return Deliveries(subscription, [Delivery(m, attempts[m.pk]) for m in messages])

    async def redeliver(self, job_pk: int, message_id: str, now: datetime) -> bool:
        async with self._txn() as db:
            pk = await db.fetchval(
                "UPDATE webhook_messages SET status = 'pending', retries = 0, next_attempt_at = $1"
                " WHERE job_pk = $2 AND id = $3 RETURNING pk",
                to_ms(now),
                job_pk,
                message_id,
            )
            if pk is None:
                return False
            await db.execute(
                "UPDATE webhook_subscriptions SET gone_at = NULL WHERE job_pk = $1", job_pk
            )
        return True

    async def count_by_status(self) -> dict[str, int]:
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying'"
                " ELSE status END, count(*) FROM webhook_messages GROUP BY 1"
            )
        counts = {"pending": 0, "retrying": 0, "delivered": 0, "failed": 0}
        counts.update({r[0]: r[1] for r in rows})
        return counts


async def _stop_subscription(db: Conn, job_pk: int, now_ms: int) -> None:
    """410 Gone: no more messages for this subscription; pending ones fail."""
    await db.execute(
        "UPDATE webhook_subscriptions SET gone_at = $1 WHERE job_pk = $2", now_ms, job_pk
    )
    await db.execute(
        "UPDATE webhook_messages SET status = 'failed', next_attempt_at = NULL"
        " WHERE job_pk = $1 AND status = 'pending'",
        job_pk,
    )
