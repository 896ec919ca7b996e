"""`GET /bulk-jobs/{id}/events`: a job's progress as Server-Sent Events.

The stream starts with `retry:` and a `snapshot` of the job (or, on resume with
`Last-Event-ID`, the events the client missed), then relays the hub's `progress` and
`status` events, each with `id:` = the job's sequence number, and ends after the
terminal event. aiohttp-sse sends the comment heartbeats and drops a client whose
writes stall past the send timeout; the hub's bounded subscription coalesces while
the handler is blocked on such a client.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from .. import jsonutil
from ..errors import BulkJobsError
from ..models import Job
from ..service.events import EventHub, JobEvent, Subscription
from .auth import tenant_of
from .keys import ENGINE, SERVICE, SETTINGS, STREAMS
from .representation import job_json

routes = web.RouteTableDef()


@routes.get("/bulk-jobs/{job_id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    """Stream the job's events; 204 when a resumed stream of a finished job has nothing new."""
    engine = request.app[ENGINE]
    last_id = last_event_id(request)
    if engine.draining:
        raise BulkJobsError("shutting_down", "The server is shutting down.", retry_after_s=5)
    with request.app[STREAMS].hold():
        # Subscribe before reading the job so no change between the two is missed.
        sub = engine.hub.subscribe(
            request.match_info["job_id"], maxsize=request.app[SETTINGS].sse_buffer_events
        )
        try:
            job = await request.app[SERVICE].get(request.match_info["job_id"], tenant_of(request))
            if job.is_terminal and last_id is not None and last_id >= job.seq:
                # 204 tells an EventSource to stop reconnecting.
                return web.Response(status=204)
            return await _stream(request, job, sub, last_id)
        finally:
            engine.hub.unsubscribe(sub)


def last_event_id(request: web.Request) -> int | None:
    """The client's last seen sequence number: `Last-Event-ID` header or `?last_event_id=`."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise BulkJobsError(
            "invalid_request",
            "`Last-Event-ID` must be a sequence number sent by this stream.",
            parameter="last_event_id",
        )
    return int(raw)


async def _stream(
    request: web.Request, job: Job, sub: Subscription, last_id: int | None
) -> EventSourceResponse:
    settings = request.app[SETTINGS]
    relay = _Relay(request.app[SETTINGS].base_path)
    async with sse_response(
        request,
        ping_interval=settings.sse_heartbeat_s,
        send_timeout=settings.sse_send_timeout_s,
    ) as resp:
        watcher = asyncio.create_task(_close_when_gone(resp, sub))
        try:
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                await resp.write(f"retry: {settings.sse_retry_ms}\r\n\r\n".encode())
                await relay.start(resp, job, request.app[ENGINE].hub, last_id)
                await relay.follow(resp, sub)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    return resp


async def _close_when_gone(resp: EventSourceResponse, sub: Subscription) -> None:
    # The heartbeat task ends when a write fails: the client is gone, stop waiting.
    await resp.wait()
    sub.close()


class _Relay:
    """Sends events in order, never the same sequence number twice (snapshot aside)."""

    def __init__(self, base_path: str) -> None:
        self.base_path = base_path
        self.sent_seq = -1
        self.done = False

    async def start(
        self, resp: EventSourceResponse, job: Job, hub: EventHub, last_id: int | None
    ) -> None:
        missed = None if last_id is None or last_id > job.seq else hub.since(job.id, last_id)
        if missed is None:
            await self._snapshot(resp, job)
            return
        self.sent_seq = last_id if last_id is not None else -1
        for event in missed:
            await self.send(resp, event)

    async def _snapshot(self, resp: EventSourceResponse, job: Job) -> None:
        data = JobEvent(seq=job.seq, job_id=job.id, type="snapshot", job=job).to_dict()
        data["job"] = job_json(job, self.base_path)
        await self._write(resp, job.seq, "snapshot", data)
        self.sent_seq = job.seq
        if job.is_terminal:
            # The terminal transition itself, so every stream ends on a `status` event.
            terminal = JobEvent(seq=job.seq, job_id=job.id, type="status", job=job)
            await self._write(resp, job.seq, "status", terminal.to_dict())
            self.done = True

    async def follow(self, resp: EventSourceResponse, sub: Subscription) -> None:
        """Relay the subscription until the terminal event, shutdown, or a gone client."""
        while not self.done and (event := await sub.get()) is not None:
            await self.send(resp, event)

    async def send(self, resp: EventSourceResponse, event: JobEvent) -> None:
        if self.done or event.seq <= self.sent_seq:
            return
        await resp.send(event.json, id=str(event.seq), event=event.type)
        self.sent_seq = event.seq
        self.done = event.job.is_terminal

    @staticmethod
    async def _write(resp: EventSourceResponse, seq: int, kind: str, data: dict[str, Any]) -> None:
        await resp.send(jsonutil.dumps_str(data), id=str(seq), event=kind)
