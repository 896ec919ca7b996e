"""Webhook subscriptions, the durable outbox and delivery attempts (SQLite).

A job's subscription is written in the transaction that creates the job; outbox
messages are written in the transaction that commits the change they announce
(`enqueue_in`, which applies the service's `OutboxRule`), so a crash between a
transition and its delivery loses nothing. Each message carries a snapshot of the
job as it was at that change, so every attempt sends the same body even after the
job was deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import aiosqlite

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
from .reader import Reader
from .timestamps import from_ms, to_ms

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
    """The webhook tables of a `SQLiteStore`: shares its writer lock and reader."""

    def __init__(self, txn: TxnFactory, reader: Callable[[], Reader], rule: OutboxRule) -> None:
        self._txn = txn
        self._reader = reader
        self._rule = rule

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
            entry = self._rule(state, job, now_ms) if state is not None else None
            if entry is not None:
                added += await self._insert(db, job, entry, now_ms)
        return added

    async def _states(self, db: aiosqlite.Connection, pks: list[int]) -> dict[int, ProgressState]:
        if not pks:
            return {}
        marks = ",".join("?" * len(pks))
        sql = (
            "SELECT job_pk, events, progress_interval_ms, last_progress_at, last_milestone"
            f" FROM webhook_subscriptions WHERE gone_at IS NULL AND job_pk IN ({marks})"
        )
        rows = await db.execute_fetchall(sql, pks)
        return {r[0]: ProgressState(frozenset(r[1].split()), r[2], r[3], r[4]) for r in rows}

    async def _insert(
        self, db: aiosqlite.Connection, job: Job, entry: OutboxEntry, now_ms: int
    ) -> int:
        key = entry.key
        kind = f"job.{job.status.value}" if job.is_terminal else PROGRESS_EVENT
        cur = await db.execute(
            "INSERT OR IGNORE INTO webhook_messages (id, job_pk, job_id, type, dedupe,"
            " created_at, snapshot, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (new_message_id(now_ms), job.pk, job.id, kind, key, now_ms, job_snapshot(job), now_ms),
        )
        if kind == PROGRESS_EVENT:
            await db.execute(
                "UPDATE webhook_subscriptions SET last_progress_at = ?,"
                " last_milestone = max(last_milestone, ?) WHERE job_pk = ?",
                (now_ms, entry.milestone, job.pk),
            )
        return cur.rowcount

    # -- dispatcher ------------------------------------------------------------

    async def due(
        self, now: datetime, *, after: tuple[int, int] | None, limit: int, upcoming: int = 0
    ) -> Due:
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
        messages: list[Message] = []
        if limit:
            async with self._reader().execute(sql, (*args, limit)) as cur:
                messages = [_message(r) for r in await cur.fetchall()]
        return Due(messages, await self._upcoming(upcoming) if upcoming else [])

    async def _upcoming(self, limit: int) -> list[tuple[int, datetime]]:
        sql = (
            "SELECT pk, next_attempt_at FROM webhook_messages WHERE status = 'pending'"
            " ORDER BY next_attempt_at, pk LIMIT ?"
        )
        async with self._reader().execute(sql, (limit,)) as cur:
            return [(r[0], from_ms(r[1])) for r in await cur.fetchall()]

    async def take(self, message_pk: int, now: datetime, lease_s: float) -> bool:
        """Always True: the file is owned by one process (its flock), so no other
        dispatcher can send the message, and one still due after a crash goes at once."""
        return True

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

    async def deliveries(
        self, job_pk: int, *, after_pk: int, limit: int, message_id: str | None = None
    ) -> Deliveries:
        where = "m.job_pk = ? AND m.pk > ?"
        args: list[Any] = [job_pk, after_pk]
        if message_id is not None:
            where += " AND m.id = ?"
            args.append(message_id)
        sql = f"SELECT {_MESSAGE_COLS} FROM {_FROM} WHERE {where} ORDER BY m.pk LIMIT ?"
        async with self._reader().execute(sql, (*args, limit)) as cur:
            messages = [_message(r) for r in await cur.fetchall()]
        attempts = await self._attempts([m.pk for m in messages])
        data = [Delivery(m, attempts[m.pk]) for m in messages]
        return Deliveries(await self._subscription(job_pk), data)

    async def _subscription(self, job_pk: int) -> WebhookSubscription | None:
        sql = "SELECT job_pk, url, events, gone_at FROM webhook_subscriptions WHERE job_pk = ?"
        async with self._reader().execute(sql, (job_pk,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return WebhookSubscription(row[0], row[1], tuple(row[2].split()), from_ms(row[3]))

    async def _attempts(self, message_pks: Sequence[int]) -> dict[int, list[DeliveryAttempt]]:
        found: dict[int, list[DeliveryAttempt]] = {pk: [] for pk in message_pks}
        if not message_pks:
            return found
        marks = ",".join("?" * len(message_pks))
        sql = (
            "SELECT message_pk, at, duration_ms, status_code, error, next_attempt_at"
            f" FROM webhook_attempts WHERE message_pk IN ({marks}) ORDER BY message_pk, n"
        )
        async with self._reader().execute(sql, list(message_pks)) as cur:
            for r in await cur.fetchall():
                attempt = DeliveryAttempt(from_ms(r[1]), r[2], r[3], r[4], from_ms(r[5]))
                found[r[0]].append(attempt)
        return found

    async def redeliver(self, job_pk: int, message_id: str, now: datetime) -> bool:
        async with self._txn() as db:
            async with db.execute(
                "UPDATE webhook_messages SET status = 'pending', retries = 0, next_attempt_at = ?"
                " WHERE job_pk = ? AND id = ? RETURNING pk",
                (to_ms(now), job_pk, message_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return False
            await db.execute(
                "UPDATE webhook_subscriptions SET gone_at = NULL WHERE job_pk = ?", (job_pk,)
            )
        return True

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
