"""The webhook dispatcher: one task that sends due outbox messages, each delivery in
its own task, at most `concurrency` at once, at most `per_host` to one host name (any
port) and, with API keys, at most `per_tenant` of one tenant's, so a slow or failing
endpoint never holds up others (nor one tenant's receivers another tenant's webhooks)
and never touches the workers.

Every attempt is recorded with its outcome and the time of the next one, its error as a
class (`connect_refused`, `timeout`, `tls_error`, `bad_response`, `http_status`,
`forbidden_target`, `dns_error`, `internal_error`) and never bytes the peer sent (a
tenant reads attempts back: a banner of an internal service must not show); a message
in flight when the process dies is still pending in the outbox and is sent again
(same `webhook-id`) after a restart: delivery is at least once.

Several processes on one PostgreSQL database read the same outbox: each attempt first
takes its message in the store (`WebhookStore.take`: its due time moves `take_s`
ahead, under the row lock), so one process makes it; the others find it no longer due.
A process that dies mid-attempt leaves the message due again after `take_s`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import attrs
from yarl import URL

from ... import jsonutil
from ...config import Settings
from ...models import Job, format_ts, utcnow
from ...outbox import AttemptRecord, DeliveryAttempt, Message, MessageStatus
from ...signing import parse_secrets, sign, tenant_key
from ...store import WebhookStore
from .policy import Verdict, judge, next_attempt, parse_schedule, retry_after_s
from .targets import ForbiddenTarget, GuardedResolver, check_target, parse_ports, port_problem

logger = logging.getLogger(__name__)

RenderJob = Callable[[Job], dict[str, Any]]
USER_AGENT = "bulkjobs-webhooks/1"
_SCAN_PAGE = 200
_MAX_SCAN = 5000
_MAX_IDLE_S = 60.0
_MIN_TAKE_S = 10.0


@attrs.frozen
class DispatcherConfig:
    keys: tuple[bytes, ...]
    schedule: tuple[float, ...]
    timeout_s: float
    concurrency: int
    allow_private: bool
    allowed_ports: frozenset[int] | None = None  # None: any port
    per_tenant_keys: bool = False  # API keys configured: sign with each tenant's own keys
    concurrency_per_tenant: int = 0  # 0: half of `concurrency`

    @property
    def per_host(self) -> int:
        return max(1, self.concurrency // 2)

    @property
    def take_s(self) -> float:
        """How long a taken message is reserved for its attempt: well past the attempt's
        timeout (DNS check, POST, recording), so only a dead process lets it go again."""
        return max(_MIN_TAKE_S, 2 * self.timeout_s + 10)

    @property
    def per_tenant(self) -> int | None:
        """Deliveries of one tenant in flight at once; None without API keys (one tenant)."""
        if not self.per_tenant_keys:
            return None
        return self.concurrency_per_tenant or max(1, self.concurrency // 2)

    @classmethod
    def from_settings(cls, s: Settings) -> DispatcherConfig:
        return cls(
            keys=tuple(parse_secrets(s.webhook_secrets)),
            schedule=parse_schedule(s.webhook_retry_schedule_s),
            timeout_s=s.webhook_timeout_s,
            concurrency=max(1, s.webhook_concurrency),
            allow_private=s.webhook_allow_private,
            allowed_ports=parse_ports(s.webhook_allowed_ports, s.webhook_allow_private),
            per_tenant_keys=bool(s.api_keys_file or s.api_keys),
            concurrency_per_tenant=max(0, s.webhook_concurrency_per_tenant),
        )

    def keys_of(self, tenant: str) -> list[bytes]:
        """The keys that sign `tenant`'s messages (see bulkjobs.signing)."""
        if not self.per_tenant_keys:
            return list(self.keys)
        return [tenant_key(k, tenant) for k in self.keys]


@attrs.define
class DeliveryStats:
    """Counters since start (exported as metrics)."""

    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    retrying: int = 0  # retries scheduled
    gone: int = 0


@attrs.frozen
class _Answer:
    status_code: int | None = None
    error: str | None = None
    retry_after: str | None = None
    forbidden: bool = False


def plain_job(job: Job) -> dict[str, Any]:
    """A minimal representation, for engines built without the web layer's renderer."""
    return {"id": job.id, "status": job.status.value, "progress": job.progress}


class WebhookDispatcher:
    """Sends outbox messages; owned and cancelled by the engine."""

    def __init__(
        self, store: WebhookStore, config: DispatcherConfig, render_job: RenderJob = plain_job
    ) -> None:
        self._store = store
        self.config = config
        self._render_job = render_job
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._host_load: collections.Counter[str] = collections.Counter()
        self._tenant_load: collections.Counter[str] = collections.Counter()
        self._held: dict[int, float] = {}  # pk -> loop time before which it is not sent
        self.stats = DeliveryStats()

    def notify(self) -> None:
        """Called when a commit added messages to the outbox."""
        self.wake()

    def wake(self) -> None:
        self._quiet.clear()
        self._wake.set()

    async def wait_quiet(self) -> None:
        """Until nothing is in flight and nothing is due (for tests and benchmarks)."""
        await self._quiet.wait()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled; deliveries in flight are cancelled with it."""
        async with self._open_session() as session:
            try:
                await self._loop(session)
            finally:
                await self._cancel_inflight()

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.config.allow_private),
            limit=self.config.concurrency,
            use_dns_cache=False,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
        )

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            self._wake.clear()
            started = await self._start_due(session)
            delay = await self._idle_delay(started)
            if not self._inflight and (delay is None or delay > 0) and not self._wake.is_set():
                self._quiet.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _start_due(self, session: aiohttp.ClientSession) -> int:
        started = scanned = 0
        after: tuple[int, int] | None = None
        now = utcnow()
        while self._free_slots() and scanned < _MAX_SCAN:
            page = (await self._store.due(now, after=after, limit=_SCAN_PAGE)).messages
            started += sum(self._maybe_start(session, m) for m in page)
            scanned += len(page)
            if len(page) < _SCAN_PAGE:
                break
            last = page[-1]
            assert last.next_attempt_at is not None
            after = (int(last.next_attempt_at.timestamp() * 1000), last.pk)
        return started

    def _free_slots(self) -> int:
        return self.config.concurrency - len(self._inflight)

    def _maybe_start(self, session: aiohttp.ClientSession, m: Message) -> bool:
        # the host name, not the origin: two ports of one host share its slots
        host = str(URL(m.url).host)
        if m.pk in self._inflight or not self._free_slots() or self._is_held(m.pk):
            return False
        if self._host_load[host] >= self.config.per_host:
            return False
        per_tenant = self.config.per_tenant
        tenant = m.job.tenant if per_tenant is not None else ""
        if per_tenant is not None and self._tenant_load[tenant] >= per_tenant:
            return False
        self._quiet.clear()
        task = asyncio.create_task(self._deliver(session, m), name=f"webhook-{m.id}")
        self._inflight[m.pk] = task
        self._host_load[host] += 1
        self._tenant_load[tenant] += 1
        task.add_done_callback(lambda t: self._finished(t, m.pk, host, tenant))
        return True

    def _finished(self, task: asyncio.Task[None], pk: int, host: str, tenant: str) -> None:
        self._inflight.pop(pk, None)
        for load, key in ((self._host_load, host), (self._tenant_load, tenant)):
            load[key] -= 1
            if load[key] <= 0:
                del load[key]
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("webhook delivery %s crashed", task.get_name(), exc_info=task.exception())

    async def _idle_delay(self, started: int) -> float | None:
        """How long to wait for a wake-up: until the next due message, or for a slot."""
        if not self._free_slots():
            return None  # a finishing delivery wakes us
        wanted = len(self._inflight) + len(self._held) + 1
        upcoming = (await self._store.due(utcnow(), after=None, limit=0, upcoming=wanted)).upcoming
        skip = self._inflight.keys() | self._held.keys()
        due = next((at for pk, at in upcoming if pk not in skip), None)
        held_s = self._held_delay()
        if due is None:
            # Look again now and then: on a shared database another process may add
            # messages (or die holding one) without waking this dispatcher.
            return held_s if held_s is not None else _MAX_IDLE_S
        delay = (due - utcnow()).total_seconds()
        if delay <= 0 and not started:
            return held_s  # due but held back by a per-host/tenant limit: wait for a finish
        return min(max(delay, 0.0), _MAX_IDLE_S, held_s if held_s is not None else _MAX_IDLE_S)

    def _held_delay(self) -> float | None:
        """Until the first held message may go again (expired holds are dropped)."""
        now = asyncio.get_running_loop().time()
        self._held = {pk: until for pk, until in self._held.items() if until > now}
        return min(self._held.values()) - now if self._held else None

    def _hold(self, pk: int) -> None:
        delay_s = self.config.schedule[0] if self.config.schedule else _MAX_IDLE_S
        self._held[pk] = asyncio.get_running_loop().time() + max(delay_s, 1.0)

    def _is_held(self, pk: int) -> bool:
        until = self._held.get(pk)
        if until is None:
            return False
        if until > asyncio.get_running_loop().time():
            return True
        del self._held[pk]
        return False

    async def _cancel_inflight(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one delivery ----------------------------------------------------------------

    async def _deliver(self, session: aiohttp.ClientSession, m: Message) -> None:
        if not await self._take(m):
            return
        at = utcnow()
        started = time.perf_counter()
        answer = await self._guarded_try(session, m)
        duration_ms = int((time.perf_counter() - started) * 1000)
        attempt = DeliveryAttempt(at, duration_ms, answer.status_code, answer.error)
        try:
            record = self._decide(m, attempt, answer)
        except Exception:
            logger.exception("webhook message %s: deciding the next attempt failed", m.id)
            record = self._decide(m, attempt, _Answer(error="internal_error"))
        try:
            await self._store.record(m.pk, record)
        except Exception:
            # Not recorded, so the store still says "due now": hold it back in memory
            # for the schedule's first delay rather than sending it again at once.
            self._hold(m.pk)
            raise
        self._count(record)

    async def _take(self, m: Message) -> bool:
        """Take the message in the store for this attempt, so that no other process
        sends it too; False when another one has (or the store did not answer)."""
        try:
            return await self._store.take(m.pk, utcnow(), self.config.take_s)
        except Exception as exc:
            logger.warning("webhook message %s: taking it failed (%r); later", m.id, exc)
            self._hold(m.pk)
            return False

    async def _guarded_try(self, session: aiohttp.ClientSession, m: Message) -> _Answer:
        """One attempt; any exception is an answer like a network error (retry later)."""
        try:
            return await self._try(session, m)
        except Exception as exc:
            logger.exception("webhook message %s: delivery attempt crashed", m.id)
            return _Answer(error=f"internal_error: {type(exc).__name__}")

    async def _try(self, session: aiohttp.ClientSession, m: Message) -> _Answer:
        if port_problem(m.url, self.config.allowed_ports) is not None:
            return _Answer(error="forbidden_target", forbidden=True)
        try:
            await check_target(m.url, self.config.allow_private)
        except ForbiddenTarget:
            return _Answer(error="forbidden_target", forbidden=True)
        except (OSError, TimeoutError) as exc:
            logger.info("webhook message %s: DNS failed: %r", m.id, exc)
            return _Answer(error="dns_error")
        return await self._post(session, m)

    async def _post(self, session: aiohttp.ClientSession, m: Message) -> _Answer:
        body = self.body(m)
        headers = self.headers(m.id, int(time.time()), body, m.job.tenant)
        try:
            async with session.post(
                m.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                error = None if 200 <= resp.status < 300 else "http_status"
                return _Answer(resp.status, error, resp.headers.get("Retry-After"))
        except TimeoutError:
            return _Answer(error="timeout")
        except aiohttp.ClientError as exc:
            kind = classify(exc)
            # the peer's bytes (a banner, a status line) go to the operator's log only
            logger.info("webhook message %s: attempt failed (%s): %.300r", m.id, kind, exc)
            return _Answer(error=kind, forbidden=kind == "forbidden_target")

    def body(self, m: Message) -> bytes:
        """The message's payload: the same bytes on every attempt."""
        payload = {
            "type": m.type,
            "timestamp": format_ts(m.created_at),
            "tenant": m.job.tenant,
            "data": self._render_job(m.job),
        }
        return jsonutil.dumps(payload)

    def headers(
        self, msg_id: str, timestamp_s: int, body: bytes, tenant: str = "default"
    ) -> dict[str, str]:
        keys = self.config.keys_of(tenant)
        return {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp_s),
            "webhook-signature": sign(keys, msg_id, timestamp_s, body),
        }

    def _decide(self, m: Message, attempt: DeliveryAttempt, answer: _Answer) -> AttemptRecord:
        verdict = Verdict.FAILED if answer.forbidden else judge(answer.status_code)
        if verdict is Verdict.RETRY:
            now = utcnow()
            asked = retry_after_s(answer.retry_after, now)
            due = next_attempt(self.config.schedule, m.retries, asked, now)
            if due is not None:
                return AttemptRecord(
                    attrs.evolve(attempt, next_attempt_at=due), MessageStatus.PENDING, m.retries + 1
                )
            verdict = Verdict.FAILED
        status = MessageStatus.DELIVERED if verdict is Verdict.DELIVERED else MessageStatus.FAILED
        return AttemptRecord(attempt, status, m.retries, gone=verdict is Verdict.GONE)

    def _count(self, record: AttemptRecord) -> None:
        self.stats.attempts += 1
        if record.status is MessageStatus.DELIVERED:
            self.stats.delivered += 1
        elif record.status is MessageStatus.PENDING:
            self.stats.retrying += 1
        else:
            self.stats.failed += 1
        self.stats.gone += record.gone


def classify(exc: aiohttp.ClientError) -> str:
    """The class of a failed attempt, as stored and shown (never the peer's bytes)."""
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
        return "tls_error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ForbiddenTarget):
            return "forbidden_target"
        if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(
            exc.os_error, socket.gaierror
        ):
            return "dns_error"
        return "connect_refused"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timeout"
    return "bad_response"
