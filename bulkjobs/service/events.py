"""The event hub: every committed job change becomes an event with the job's sequence
number, kept in a short per-job history and fanned out to bounded subscribers.

A slow subscriber never grows memory: its buffer holds at most `maxsize` events and,
when full, progress events are coalesced (only the latest counts are kept) while
status transitions are always kept.

Progress is also coalesced at the source: a job fans out at most one progress event
per `progress_interval_s` (the newest one held back is delivered when the interval
ends), so 1,000 subscribers of a job committing 200 times a second cost 10 fan-outs a
second, not 200. The hub also caps progress deliveries per second across all jobs
(`fanout_per_s`): with many subscribers the interval stretches (1,000 subscribers at
2,000 deliveries/s get two progress events a second), so watching a job never takes
the loop from the workers. Status transitions are never held back.

A subscriber may offer a `sink` that takes an event synchronously (an SSE stream
writing to an idle socket); while its consumer waits with an empty buffer, the hub
hands events to the sink instead of waking the consumer, so a fan-out to 1,000 idle
streams is 1,000 socket writes, not 1,000 task wake-ups.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs

from .. import jsonutil
from ..models import Job, JobStatus, format_ts

HISTORY_PER_JOB = 64
HISTORY_PER_TENANT = 256
PROGRESS_INTERVAL_S = 0.1
#: Progress deliveries per second across all subscribers of all jobs (see module doc).
FANOUT_PER_S = 2000.0
_FORGET_AFTER_S = 300.0


@attrs.frozen
class JobEvent:
    """One change of one job; `seq` increases by at least one per committed change."""

    seq: int
    job_id: str
    type: str  # "snapshot" | "progress" | "status"
    job: Job
    #: The job's first event after its submit (tenant streams call it `created`).
    created: bool = False

    @functools.cached_property
    def json(self) -> str:
        """`to_dict()` serialized once, however many subscribers send it."""
        return jsonutil.dumps_str(self.to_dict())

    @functools.cached_property
    def sse(self) -> bytes:
        """The event as one Server-Sent Events message, built once for every stream."""
        return f"id: {self.seq}\r\nevent: {self.type}\r\ndata: {self.json}\r\n\r\n".encode()

    def to_dict(self) -> dict[str, Any]:
        j = self.job
        return {
            "seq": self.seq,
            "job_id": j.id,
            "type": self.type,
            "status": j.status.value,
            "total_items": j.total_items,
            "processed": j.processed,
            "succeeded": j.succeeded,
            "failed": j.failed,
            "cancelled": j.cancelled,
            "progress": j.progress,
            "at": format_ts(j.updated_at),
        }


class Subscription:
    """A bounded buffer of events for one subscriber of one job."""

    def __init__(self, hub: EventHub, job_id: str, maxsize: int) -> None:
        self._hub = hub
        self.job_id = job_id
        self._maxsize = maxsize
        self._buffer: collections.deque[JobEvent] = collections.deque()
        self._ready = asyncio.Event()
        self._waiting = False
        self.sink: Callable[[JobEvent], bool] | None = None
        self.closed = False
        self.coalesced = 0

    def push(self, event: JobEvent) -> None:
        """Add an event; when full, replace the newest progress event instead of growing."""
        # The sink only while the consumer is parked in `get` with nothing buffered: it
        # then holds no event of its own, so the sink's write keeps the order.
        if self._waiting and not self._buffer and self.sink is not None and self.sink(event):
            return
        if self._buffer and len(self._buffer) >= self._maxsize:
            self._coalesce(event)
        else:
            self._buffer.append(event)
        self._ready.set()

    def _coalesce(self, event: JobEvent) -> None:
        self.coalesced += 1
        for i in range(len(self._buffer) - 1, -1, -1):
            if self._buffer[i].type == "progress":
                del self._buffer[i]
                self._buffer.append(event)
                return
        # Only status events are buffered: keep the newest, drop the oldest.
        self._buffer.popleft()
        self._buffer.append(event)

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._buffer)

    async def get(self) -> JobEvent | None:
        """The next event, or None once the subscription is closed and drained."""
        while not self._buffer:
            if self.closed:
                return None
            self._ready.clear()
            self._waiting = True
            try:
                await self._ready.wait()
            finally:
                self._waiting = False
        return self._buffer.popleft()

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[JobEvent]:
        while (event := await self.get()) is not None:
            yield event


@attrs.frozen
class TenantEvent:
    """A job event as a tenant-wide stream sends it: `id` is `<epoch>-<n>`."""

    n: int
    epoch: str
    event: JobEvent

    @property
    def id(self) -> str:
        return f"{self.epoch}-{self.n}"

    @property
    def type(self) -> str:
        return "created" if self.event.created else self.event.type

    @functools.cached_property
    def sse(self) -> bytes:
        """One Server-Sent Events message, built once for all of the tenant's streams."""
        data = jsonutil.dumps_str(tenant_event_json(self.event))
        return f"id: {self.id}\r\nevent: {self.type}\r\ndata: {data}\r\n\r\n".encode()


def tenant_event_json(event: JobEvent) -> dict[str, Any]:
    """A job event with what a list of jobs shows (operation, times), for tenant streams."""
    j = event.job
    return {
        **event.to_dict(),
        "operation": j.operation,
        "created_at": format_ts(j.created_at),
        "started_at": format_ts(j.started_at),
        "completed_at": format_ts(j.completed_at),
    }


class TenantSubscription:
    """The newest event of each changed job of one tenant, at most `maxsize` jobs."""

    def __init__(self, tenant: str, maxsize: int) -> None:
        self.tenant = tenant
        self._maxsize = maxsize
        self._buffer: dict[str, TenantEvent] = {}  # job id -> newest event, oldest first
        self._ready = asyncio.Event()
        self.closed = False
        self.lagged = False

    def push(self, event: TenantEvent) -> None:
        """Keep the newest event per job; past `maxsize` jobs, drop all and mark `lagged`."""
        job_id = event.event.job_id
        old = self._buffer.pop(job_id, None)  # re-inserted last: ids stay in order
        if old is not None and old.event.created and not event.event.created:
            event = attrs.evolve(event, event=attrs.evolve(event.event, created=True))
        if self.lagged:
            return
        if len(self._buffer) >= self._maxsize:
            self._buffer.clear()
            self.lagged = True
        else:
            self._buffer[job_id] = event
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._buffer)

    async def next_batch(self) -> list[TenantEvent] | None:
        """Everything buffered, oldest first, once there is something (or `lagged` is
        set: then the list is empty); None once closed."""
        while not self._buffer and not self.lagged:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.closed:
            return None
        batch = list(self._buffer.values())
        self._buffer.clear()
        return batch

    def take_lagged(self) -> bool:
        """True once after the buffer overflowed (the stream owes a snapshot)."""
        lagged, self.lagged = self.lagged, False
        return lagged


class EventHub:
    """Per-job histories and subscribers; all methods run on the event loop."""

    def __init__(
        self,
        history: int = HISTORY_PER_JOB,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        fanout_per_s: float = FANOUT_PER_S,
    ) -> None:
        self._history: dict[str, collections.deque[JobEvent]] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._last_status: dict[str, str] = {}
        self._terminal_at: dict[str, float] = {}
        self._history_len = history
        self._progress_interval_s = progress_interval_s
        self._fanout_per_s = fanout_per_s
        self._subscriber_count = 0
        # Resume is possible from any seq >= floor: events after it are all in history.
        self._floor: dict[str, int] = {}
        self._fanned_at: dict[str, float] = {}
        self._held: dict[str, JobEvent] = {}
        self._flush_timers: dict[str, asyncio.TimerHandle] = {}
        # Tenant-wide streams: one counter for the hub, a short history per tenant.
        self.epoch = secrets.token_hex(4)
        self.tenant_seq = 0
        self._tenant_history: dict[str, collections.deque[TenantEvent]] = {}
        self._tenant_floor: dict[str, int] = {}
        self._tenant_subscribers: dict[str, set[TenantSubscription]] = {}

    def publish(self, job: Job) -> JobEvent:
        """Record a committed change of `job` and hand it to every subscriber.

        A change older than the newest one seen (a lower `seq`) is ignored: commits
        reach the hub from several paths, and only the newest state counts."""
        latest = self.latest(job.id)
        if latest is not None and latest.seq >= job.seq:
            return latest
        previous = self._last_status.get(job.id)
        kind = "status" if previous != job.status.value else "progress"
        self._last_status[job.id] = job.status.value
        created = previous is None and job.status is JobStatus.PENDING
        event = JobEvent(seq=job.seq, job_id=job.id, type=kind, job=job, created=created)
        if kind == "progress" and self._hold(event):
            return event
        self._deliver(event)
        if job.is_terminal:
            self._mark_terminal(job.id)
        return event

    def _hold(self, event: JobEvent) -> bool:
        """Hold back a progress event when its job fanned one out less than an interval ago."""
        loop = asyncio.get_running_loop()
        last = self._fanned_at.get(event.job_id)
        interval_s = self._interval_s()
        if last is None or loop.time() >= last + interval_s:
            return False
        self._held[event.job_id] = event
        if event.job_id not in self._flush_timers:
            due = last + interval_s
            self._flush_timers[event.job_id] = loop.call_at(due, self._flush, event.job_id)
        return True

    def _interval_s(self) -> float:
        """The progress interval, stretched so all jobs together stay within the budget
        (an interval of 0 turns coalescing at the source off, budget included)."""
        base = self._progress_interval_s
        return base and max(base, self._subscriber_count / self._fanout_per_s)

    def _flush(self, job_id: str) -> None:
        self._flush_timers.pop(job_id, None)
        event = self._held.pop(job_id, None)
        if event is not None:
            self._deliver(event)

    def _drop_held(self, job_id: str) -> None:
        self._held.pop(job_id, None)
        timer = self._flush_timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def _deliver(self, event: JobEvent) -> None:
        self._drop_held(event.job_id)  # a newer event supersedes held progress
        if event.type == "progress":
            self._fanned_at[event.job_id] = asyncio.get_running_loop().time()
        hist = self._history.get(event.job_id)
        if hist is None:
            hist = self._history[event.job_id] = collections.deque(maxlen=self._history_len)
            self._floor[event.job_id] = event.seq - 1
        elif len(hist) == hist.maxlen:
            self._floor[event.job_id] = hist[0].seq
        hist.append(event)
        for sub in self._subscribers.get(event.job_id, ()):
            sub.push(event)
        self._deliver_tenant(event)

    def _deliver_tenant(self, event: JobEvent) -> None:
        tenant = event.job.tenant
        self.tenant_seq += 1
        tevent = TenantEvent(n=self.tenant_seq, epoch=self.epoch, event=event)
        hist = self._tenant_history.get(tenant)
        if hist is None:
            hist = self._tenant_history[tenant] = collections.deque(maxlen=HISTORY_PER_TENANT)
            self._tenant_floor[tenant] = 0  # nothing of this tenant came before
        elif len(hist) == hist.maxlen:
            self._tenant_floor[tenant] = hist[0].n
        hist.append(tevent)
        for sub in self._tenant_subscribers.get(tenant, ()):
            sub.push(tevent)

    def tenant_since(self, tenant: str, event_id: str) -> list[TenantEvent] | None:
        """The tenant's events after `event_id` (`<epoch>-<n>` of this hub), or None when
        the id is another hub's or the history no longer reaches back that far."""
        epoch, _, raw = event_id.partition("-")
        if epoch != self.epoch or not raw.isdigit() or int(raw) > self.tenant_seq:
            return None
        n = int(raw)
        hist = self._tenant_history.get(tenant)
        if hist is None:
            return []
        if n < self._tenant_floor[tenant]:
            return None
        return [e for e in hist if e.n > n]

    def tenant_cursor(self) -> str:
        """The id of a snapshot taken now: a resume from it replays what came after."""
        return f"{self.epoch}-{self.tenant_seq}"

    def subscribe_tenant(self, tenant: str, maxsize: int = 32) -> TenantSubscription:
        sub = TenantSubscription(tenant, maxsize)
        self._tenant_subscribers.setdefault(tenant, set()).add(sub)
        self._subscriber_count += 1
        return sub

    def unsubscribe_tenant(self, sub: TenantSubscription) -> None:
        subs = self._tenant_subscribers.get(sub.tenant)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._subscriber_count -= 1
            if not subs:
                del self._tenant_subscribers[sub.tenant]
        sub.close()

    def _mark_terminal(self, job_id: str) -> None:
        now = asyncio.get_running_loop().time()
        self._terminal_at[job_id] = now
        for sub in list(self._subscribers.get(job_id, ())):
            sub.close()
        for old, at in list(self._terminal_at.items()):
            if now - at > _FORGET_AFTER_S:
                self.forget(old)

    def forget(self, job_id: str) -> None:
        """Drop a job's history (it was deleted, or finished long ago)."""
        self._drop_held(job_id)
        self._history.pop(job_id, None)
        self._last_status.pop(job_id, None)
        self._terminal_at.pop(job_id, None)
        self._floor.pop(job_id, None)
        self._fanned_at.pop(job_id, None)

    def latest(self, job_id: str) -> JobEvent | None:
        """The newest event of the job, including progress still held back."""
        held = self._held.get(job_id)
        if held is not None:
            return held
        hist = self._history.get(job_id)
        return hist[-1] if hist else None

    def since(self, job_id: str, seq: int) -> list[JobEvent] | None:
        """Events fanned out after `seq`, or None when the history no longer reaches back
        that far (seqs have gaps where progress was coalesced, hence the floor)."""
        hist = self._history.get(job_id)
        if not hist or seq < self._floor[job_id]:
            return None
        return [e for e in hist if e.seq > seq]

    def buffered(self, job_id: str) -> list[int]:
        """How many events each subscriber of the job has waiting (for tests and metrics)."""
        return [len(sub) for sub in self._subscribers.get(job_id, ())]

    def subscribe(self, job_id: str, maxsize: int = 32) -> Subscription:
        sub = Subscription(self, job_id, maxsize)
        self._subscribers.setdefault(job_id, set()).add(sub)
        self._subscriber_count += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.job_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._subscriber_count -= 1
            if not subs:
                del self._subscribers[sub.job_id]
        sub.close()

    def watched(self) -> tuple[dict[str, int], set[str]]:
        """Jobs someone here follows or may ask about (subscribed, or active in the
        history) with the newest seq seen (0: none yet), and tenants with a stream."""
        seqs = {job_id: 0 for job_id in self._subscribers}
        for job_id, status in self._last_status.items():
            if job_id in seqs or status in ("pending", "running"):
                latest = self.latest(job_id)
                seqs[job_id] = latest.seq if latest is not None else 0
        return seqs, set(self._tenant_subscribers)

    def follows(self, job: Job) -> bool:
        """True when the hub has use for a change of `job` made elsewhere: it has seen
        the job before, someone subscribed to it, or to its tenant's stream."""
        return (
            job.id in self._last_status
            or job.id in self._subscribers
            or job.tenant in self._tenant_subscribers
        )

    @property
    def subscriber_count(self) -> int:
        return self._subscriber_count

    def close_all(self) -> None:
        """Close every subscription (server shutdown)."""
        for subs in self._subscribers.values():
            for sub in subs:
                sub.close()
        self._subscribers.clear()
        for tsubs in self._tenant_subscribers.values():
            for tsub in tsubs:
                tsub.close()
        self._tenant_subscribers.clear()
        self._subscriber_count = 0

    async def wait_changed(self, job_id: str, after_seq: int, timeout_s: float) -> JobEvent | None:
        """The first event past `after_seq`, or None after `timeout_s`."""
        latest = self.latest(job_id)
        if latest is not None and latest.seq > after_seq:
            return latest
        sub = self.subscribe(job_id, maxsize=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for event in sub:
                    if event.seq > after_seq:
                        return event
        except TimeoutError:
            return None
        finally:
            self.unsubscribe(sub)
        return None
