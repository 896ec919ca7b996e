"""`GET /bulk-jobs/{id}/events`: a job's progress as Server-Sent Events; `GET /events`:
every job of the caller's tenant in one stream.

The stream starts with `retry:` and a `snapshot` of the job (or, on resume with
`Last-Event-ID`, the events the client missed), then relays the hub's `progress` and
`status` events, each with `id:` = the job's sequence number, and ends after the
terminal event. aiohttp-sse sends the comment heartbeats and drops a client whose
writes stall past the send timeout; the hub's bounded subscription coalesces while
the handler is blocked on such a client.

Fan-out is the hot path (1,000 streams of one job): each event's message is built
once (`JobEvent.sse`), and while a stream is idle and its socket has nothing queued,
the hub writes the message straight to the socket through the subscription's sink
instead of waking the handler; anything else (a socket with data still queued, a
closing one) goes through the buffer and the handler's timed write as before.

The tenant-wide stream lives at `/events`, beside `/bulk-jobs` rather than under it, so
no job id can ever name it. It starts with a `snapshot` of the tenant's active jobs
(or, on resume with a `Last-Event-ID` this process still holds, the missed events),
then sends `created`, `progress` and `status` events of every job, each with the id
`<epoch>-<n>` of the hub; it never ends on its own. A subscriber too slow to keep its
bounded buffer gets a fresh snapshot instead of the events it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web
from aiohttp.http import StreamWriter
from aiohttp_sse import EventSourceResponse

from .. import jsonutil, paths
from ..errors import BulkJobsError
from ..models import Job, JobStatus
from ..parsing import ascii_uint
from ..service.events import EventHub, JobEvent, Subscription, TenantSubscription
from .auth import tenant_of
from .keys import ENGINE, SERVICE, SETTINGS, STREAMS
from .polling import active_from_hub
from .representation import job_json

routes = web.RouteTableDef()


@routes.get(paths.JOB_EVENTS)
async def job_events(request: web.Request) -> web.StreamResponse:
    """Stream the job's events; 204 when a resumed stream of a finished job has nothing new."""
    engine = request.app[ENGINE]
    last_id = last_event_id(request)
    if engine.draining:
        raise BulkJobsError("shutting_down", "The server is shutting down.", retry_after_s=5)
    settings = request.app[SETTINGS]
    with request.app[STREAMS].hold(tenant_of(request), settings.sse_max_streams_per_tenant):
        # Subscribe before reading the job so no change between the two is missed.
        sub = engine.hub.subscribe(
            request.match_info["job_id"], maxsize=request.app[SETTINGS].sse_buffer_events
        )
        try:
            # An active job's latest state is in the hub: no store read per subscriber.
            job = active_from_hub(request) or await request.app[SERVICE].get(
                request.match_info["job_id"], tenant_of(request)
            )
            if job.is_terminal and last_id is not None and last_id >= job.seq:
                # 204 tells an EventSource to stop reconnecting.
                return web.Response(status=204)
            return await _stream(request, job, sub, last_id)
        finally:
            engine.hub.unsubscribe(sub)


#: Most active jobs a tenant-stream snapshot lists (newest first); it says when it cut.
SNAPSHOT_MAX_JOBS = 500


@routes.get(paths.EVENTS)
async def tenant_events(request: web.Request) -> web.StreamResponse:
    """Stream created, progress and status events of every job of the caller's tenant."""
    engine = request.app[ENGINE]
    settings = request.app[SETTINGS]
    tenant = tenant_of(request)
    resume_from = tenant_last_event_id(request)
    if engine.draining:
        raise BulkJobsError("shutting_down", "The server is shutting down.", retry_after_s=5)
    with request.app[STREAMS].hold(tenant, settings.sse_max_streams_per_tenant):
        # Subscribe before the snapshot is read so no change in between is missed.
        sub = engine.hub.subscribe_tenant(tenant, maxsize=settings.sse_buffer_events)
        try:
            missed = None if resume_from is None else engine.hub.tenant_since(tenant, resume_from)
            if missed is not None:
                first = b"".join(e.sse for e in missed)
            else:
                first = await tenant_snapshot(request, tenant)
            return await _stream_tenant(request, sub, first)
        finally:
            engine.hub.unsubscribe_tenant(sub)


def tenant_last_event_id(request: web.Request) -> str | None:
    """`Last-Event-ID` (or `?last_event_id=`) of a tenant stream: `<epoch>-<n>`."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not raw:
        return None
    epoch, _, n = raw.partition("-")
    if not (epoch.isascii() and epoch.isalnum() and len(epoch) <= 16) or ascii_uint(n) is None:
        raise BulkJobsError(
            "invalid_request",
            "`Last-Event-ID` must be an event id sent by this stream (`<epoch>-<n>`).",
            parameter="last_event_id",
        )
    return raw


async def tenant_snapshot(request: web.Request, tenant: str) -> bytes:
    """A `snapshot` event listing the tenant's pending and running jobs, read from the
    store; its id is the hub's position when read, so a resume from it misses nothing."""
    hub = request.app[ENGINE].hub
    cursor = hub.tenant_cursor()
    base = request.app[SETTINGS].base_path
    jobs: list[Job] = []
    truncated = False
    for status in (JobStatus.RUNNING, JobStatus.PENDING):
        page = await request.app[SERVICE].list_jobs(
            tenant=tenant, status=status.value, limit=SNAPSHOT_MAX_JOBS
        )
        jobs += page.data
        truncated = truncated or page.next_cursor is not None
    data = {
        "jobs": [{"seq": j.seq, "job": job_json(j, base)} for j in jobs[:SNAPSHOT_MAX_JOBS]],
        "truncated": truncated or len(jobs) > SNAPSHOT_MAX_JOBS,
    }
    return f"id: {cursor}\r\nevent: snapshot\r\ndata: {jsonutil.dumps_str(data)}\r\n\r\n".encode()


async def _stream_tenant(
    request: web.Request, sub: TenantSubscription, first: bytes
) -> EventSourceResponse:
    settings = request.app[SETTINGS]
    resp = EventSourceResponse(
        ping_interval=settings.sse_heartbeat_s, send_timeout=settings.sse_send_timeout_s
    )
    await resp.prepare(request)
    relay = _Relay(settings.base_path, settings.sse_send_timeout_s, request.transport)
    async with resp:
        watcher = asyncio.create_task(_close_when_gone(resp, sub))
        try:
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                await relay.write(resp, f"retry: {settings.sse_retry_ms}\r\n\r\n".encode() + first)
                while (batch := await sub.next_batch()) is not None:
                    if sub.take_lagged():
                        message = await tenant_snapshot(request, sub.tenant)
                    else:
                        message = b"".join(e.sse for e in batch)
                    await relay.write(resp, message)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    return resp


def last_event_id(request: web.Request) -> int | None:
    """The client's last seen sequence number: `Last-Event-ID` header or `?last_event_id=`."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    seq = ascii_uint(raw)
    if seq is None:
        raise BulkJobsError(
            "invalid_request",
            "`Last-Event-ID` must be a sequence number sent by this stream.",
            parameter="last_event_id",
        )
    return seq


async def _stream(
    request: web.Request, job: Job, sub: Subscription, last_id: int | None
) -> EventSourceResponse:
    settings = request.app[SETTINGS]
    resp = EventSourceResponse(
        ping_interval=settings.sse_heartbeat_s, send_timeout=settings.sse_send_timeout_s
    )
    writer = await resp.prepare(request)
    relay = _Relay(settings.base_path, settings.sse_send_timeout_s, request.transport)
    async with resp:
        watcher = asyncio.create_task(_close_when_gone(resp, sub))
        try:
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                retry = f"retry: {settings.sse_retry_ms}\r\n\r\n".encode()
                await relay.start(resp, retry, job, request.app[ENGINE].hub, last_id)
                if isinstance(writer, StreamWriter) and writer.chunked:
                    sub.sink = relay.offer
                await relay.follow(resp, sub)
        finally:
            sub.sink = None
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    return resp


async def _close_when_gone(
    resp: EventSourceResponse, sub: Subscription | TenantSubscription
) -> None:
    # The heartbeat task ends when a write fails: the client is gone, stop waiting.
    await resp.wait()
    sub.close()


class _Relay:
    """Sends events in order, never the same sequence number twice (snapshot aside)."""

    def __init__(
        self, base_path: str, send_timeout_s: float, transport: asyncio.Transport | None
    ) -> None:
        self.base_path = base_path
        self.send_timeout_s = send_timeout_s
        self.transport = transport
        self.sent_seq = -1
        self.done = False

    async def start(
        self,
        resp: EventSourceResponse,
        head: bytes,
        job: Job,
        hub: EventHub,
        last_id: int | None,
    ) -> None:
        """Send `head`, then the snapshot or the missed events, in one write."""
        missed = None if last_id is None or last_id > job.seq else hub.since(job.id, last_id)
        if missed is None:
            await self.write(resp, head + self._snapshot(job))
            return
        self.sent_seq = last_id if last_id is not None else -1
        fresh = [e for e in missed if e.seq > self.sent_seq]
        await self.write(resp, b"".join([head, *(e.sse for e in fresh)]))
        if fresh:
            self.sent_seq = fresh[-1].seq
            self.done = fresh[-1].job.is_terminal

    def _snapshot(self, job: Job) -> bytes:
        data = JobEvent(seq=job.seq, job_id=job.id, type="snapshot", job=job).to_dict()
        data["job"] = job_json(job, self.base_path)
        message = _message(job.seq, "snapshot", data)
        self.sent_seq = job.seq
        if job.is_terminal:
            # The terminal transition itself, so every stream ends on a `status` event.
            terminal = JobEvent(seq=job.seq, job_id=job.id, type="status", job=job)
            message += _message(job.seq, "status", terminal.to_dict())
            self.done = True
        return message

    async def follow(self, resp: EventSourceResponse, sub: Subscription) -> None:
        """Relay the subscription until the terminal event, shutdown, or a gone client."""
        while not self.done and (event := await sub.get()) is not None:
            await self.send(resp, event)

    async def send(self, resp: EventSourceResponse, event: JobEvent) -> None:
        if self.done or event.seq <= self.sent_seq:
            return
        await self.write(resp, event.sse)
        self.sent_seq = event.seq
        self.done = event.job.is_terminal

    def offer(self, event: JobEvent) -> bool:
        """The subscription's sink: write `event` now if the socket has nothing queued.

        Called by the hub only while `follow` waits on an empty buffer, so nothing of
        this stream is pending in between. Writes one HTTP/1.1 chunk, as aiohttp's
        chunked writer would; False hands the event to the handler's timed write.
        """
        if self.done or event.seq <= self.sent_seq:
            return True
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        message = event.sse
        transport.write(b"%x\r\n%b\r\n" % (len(message), message))
        self.sent_seq = event.seq
        self.done = event.job.is_terminal
        return True

    async def write(self, resp: EventSourceResponse, message: bytes) -> None:
        """`EventSourceResponse.send` for a prebuilt message: a stalled client past the
        send timeout is dropped (its connection aborted), a gone one ends the stream."""
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await resp.write(message)
        except ConnectionResetError:
            resp.stop_streaming()
            raise
        except TimeoutError:
            resp.stop_streaming()
            if self.transport is not None:
                self.transport.abort()  # a stalled peer never drains: do not wait for it
            raise


def _message(seq: int, kind: str, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\r\nevent: {kind}\r\ndata: {jsonutil.dumps_str(data)}\r\n\r\n".encode()
