"""Job changes across processes on PostgreSQL: NOTIFY at commit, one LISTEN connection,
and a poll as the safety net.

Every transaction that changes a job's visible state (create, pending -> running,
outcomes, stop, terminal) sends one `pg_notify` on `bulkjobs_jobs` just before it
commits (`notify_in`): the payload is the sender's clock in ms and the changed job pks,
`1733170000123:12,15` (each pk once per transaction; split below NOTIFY's 8000 bytes).
PostgreSQL delivers it at commit, and never for a rolled-back transaction.

Each process keeps ONE connection of its own for LISTEN (outside the pool, named
`bulkjobs-listen` in `pg_stat_activity`). Notified pks are read back in batches (at most
one read per 50 ms) and handed to the engine, which feeds its event hub (stale seqs are
ignored there) and stops local work on jobs asked to stop.

NOTIFY is best effort: a listener that reconnects misses what was sent meanwhile, and
PgBouncer in transaction mode cannot LISTEN at all (`listen=False`). So the jobs this
process watches (streams, long polls, jobs it works, tenants with a stream) are also
read every `poll_s` when they changed, and at once after every (re)connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from ..models import Job
from .base import JobWatch, Watched
from .postgres_work import Conn
from .rows import JOB_COLS, job_from_row

logger = logging.getLogger(__name__)

CHANNEL = "bulkjobs_jobs"
#: `application_name` of the LISTEN connection, `bulkjobs-listen:<pid>` in `pg_stat_activity`.
APPLICATION_NAME = "bulkjobs-listen"
_PAYLOAD_MAX = 7900  # NOTIFY's limit is 8000 bytes
_BATCH_S = 0.05  # at most one read of notified jobs per this
_MAX_PENDING = 10_000  # notified pks waiting for a read; beyond, poll instead
_PING_S = 10.0  # a silent LISTEN connection is checked this often
_BACKOFF_S = (0.05, 5.0)  # reconnect backoff: first, most
_TENANT_MARGIN_MS = 2000  # clocks of the fleet may differ this much
_TENANT_POLL_MAX = 500

Connect = Callable[[], Awaitable[Conn]]


async def notify_in(db: Conn, job_pks: Iterable[int]) -> None:
    """Announce changed jobs at the commit of `db`'s transaction (nothing on rollback)."""
    pks = sorted(set(job_pks))
    if pks:
        for payload in _payloads(int(time.time() * 1000), pks):
            await db.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)


def _payloads(sent_ms: int, pks: list[int]) -> Iterator[str]:
    head = f"{sent_ms}:"
    part: list[str] = []
    size = len(head)
    for pk in pks:
        text = str(pk)
        if part and size + len(text) + 1 > _PAYLOAD_MAX:
            yield head + ",".join(part)
            part, size = [], len(head)
        part.append(text)
        size += len(text) + 1
    yield head + ",".join(part)


def parse_payload(payload: str) -> tuple[int, list[int]]:
    """(sent at, ms since the epoch; job pks) of a notification."""
    sent, _, pks = payload.partition(":")
    return int(sent), [int(pk) for pk in pks.split(",") if pk]


class JobFeed:
    """One process's view of other processes' job changes; `run` until cancelled."""

    def __init__(self, pool: Any, connect: Connect, watch: JobWatch) -> None:
        self._pool = pool
        self._connect = connect
        self._watch = watch
        self._pending: set[int] = set()
        self._overflow = False
        self._catch_up = True  # poll at once after (re)connecting
        self._wake = asyncio.Event()
        self._tenants_since_ms: int | None = None
        self.connected = asyncio.Event()  # set while the LISTEN connection is up

    async def run(self) -> None:
        """Read notified and polled changes; the listener runs beside, reconnecting."""
        listener = asyncio.create_task(self._listen_forever()) if self._watch.listen else None
        try:
            await self._read_forever()
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    # -- reading -------------------------------------------------------------

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_poll - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            if self._pending:
                pks, self._pending = sorted(self._pending), set()
                self._report(await self._read_pks(pks))
            if self._catch_up or self._overflow or loop.time() >= next_poll:
                self._catch_up = self._overflow = False
                self._report(await self._poll(self._watch.watched()))
                next_poll = loop.time() + self._watch.poll_s
            await asyncio.sleep(_BATCH_S)  # notifications arriving now make one batch

    def _report(self, jobs: list[Job]) -> None:
        if jobs:
            self._watch.on_jobs(jobs)

    async def _read_pks(self, pks: list[int]) -> list[Job]:
        async with self._pool.acquire() as db:
            rows = await db.fetch(f"SELECT {JOB_COLS} FROM jobs WHERE pk = ANY($1::bigint[])", pks)
        return [job_from_row(r) for r in rows]

    async def _poll(self, watched: Watched) -> list[Job]:
        """Watched jobs that changed since their seq, worked jobs asked to stop, and the
        recently changed jobs of tenants with a stream."""
        found: dict[int, Job] = {}
        now_ms = int(time.time() * 1000)
        async with self._pool.acquire() as db:
            if watched.seqs:
                ids, seqs = zip(*watched.seqs.items(), strict=True)
                rows = await db.fetch(_CHANGED_SINCE, list(ids), list(seqs))
                found.update((r[0], job_from_row(r)) for r in rows)
            if watched.working:
                rows = await db.fetch(_STOPPING, sorted(watched.working))
                found.update((r[0], job_from_row(r)) for r in rows)
            if watched.tenants:
                since = self._tenants_since_ms if self._tenants_since_ms is not None else now_ms
                rows = await db.fetch(
                    _TENANTS_CHANGED,
                    sorted(watched.tenants),
                    since - _TENANT_MARGIN_MS,
                    _TENANT_POLL_MAX,
                )
                found.update((r[0], job_from_row(r)) for r in rows)
        self._tenants_since_ms = now_ms if watched.tenants else None
        return list(found.values())

    # -- listening -------------------------------------------------------------

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            sent_ms, pks = parse_payload(payload)
        except ValueError:
            logger.warning("ignored a malformed %s payload %.60r", CHANNEL, payload)
            return
        self._watch.on_lag(max(0.0, time.time() - sent_ms / 1000))
        if len(self._pending) + len(pks) > _MAX_PENDING:
            self._overflow = True  # the poll covers what is watched
        else:
            self._pending.update(pks)
        self._wake.set()

    async def _listen_forever(self) -> None:
        """Hold the LISTEN connection; reconnect with a doubling backoff when it drops."""
        delay = _BACKOFF_S[0]
        while True:
            started = time.monotonic()
            try:
                await self._listen_once()
            except Exception as exc:  # any failure: reconnect after the backoff
                logger.warning("LISTEN %s lost (%r); reconnecting in %.2fs", CHANNEL, exc, delay)
            finally:
                self.connected.clear()
            if time.monotonic() - started > 30:
                delay = _BACKOFF_S[0]
            await asyncio.sleep(delay)
            delay = min(_BACKOFF_S[1], delay * 2)

    async def _listen_once(self) -> None:
        conn = await self._connect()
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(CHANNEL, self._on_notify)
            # Listening from here on: read what changed while we were not.
            self._catch_up = True
            self._wake.set()
            self.connected.set()
            logger.info("listening on %s for other processes' job changes", CHANNEL)
            while not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_PING_S):
                        await lost.wait()
                async with asyncio.timeout(_PING_S):
                    await conn.execute("SELECT 1")  # a half-open socket fails here
        finally:
            if not conn.is_closed():
                conn.terminate()  # synchronous: nothing to await when cancelled
        raise ConnectionError("the LISTEN connection closed")


_CHANGED_SINCE = f"""
SELECT {JOB_COLS} FROM jobs WHERE pk IN (
  SELECT j.pk FROM jobs j JOIN unnest($1::text[], $2::bigint[]) AS w(id, seq) ON j.id = w.id
  WHERE j.seq > w.seq)
"""

_STOPPING = f"""
SELECT {JOB_COLS} FROM jobs WHERE pk = ANY($1::bigint[]) AND stop_status IS NOT NULL
"""

_TENANTS_CHANGED = f"""
SELECT {JOB_COLS} FROM jobs WHERE tenant = ANY($1::text[])
  AND updated_at >= $2
ORDER BY updated_at DESC LIMIT $3
"""
