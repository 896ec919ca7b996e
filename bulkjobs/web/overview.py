"""`GET /overview`: the caller's own load at a glance, for the dashboard.

Counts come from the store (the tenant's pending and running jobs, their items still
to run) and from this process (the tenant's open event streams); nothing here reads
or reveals another tenant's load. `links.events` opens the tenant-wide stream; with
API keys it carries a signed token, because browsers cannot set headers on it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..models import Job, JobStatus, utcnow
from .auth import TENANT_EVENTS_PATH, tenant_events_token, tenant_of
from .keys import SERVICE, SETTINGS, STREAMS

#: Most active jobs counted per status; `capped` says when a count stopped there.
MAX_COUNTED = 1000


async def overview(request: web.Request) -> web.Response:
    """The tenant's backlog, running jobs, throughput and open streams."""
    tenant = tenant_of(request)
    counts: dict[str, list[Job]] = {}
    capped = False
    for status in (JobStatus.PENDING, JobStatus.RUNNING):
        page = await request.app[SERVICE].list_jobs(
            tenant=tenant, status=status.value, limit=MAX_COUNTED
        )
        counts[status.value] = page.data
        capped = capped or page.next_cursor is not None
    active = counts["pending"] + counts["running"]
    return web.json_response(
        {
            "pending_jobs": len(counts["pending"]),
            "running_jobs": len(counts["running"]),
            "backlog_items": sum(j.total_items - j.processed for j in active),
            "items_per_s": round(sum(_rate(j) for j in counts["running"]), 1),
            "open_streams": request.app[STREAMS].open_for(tenant),
            "capped": capped,
            "links": _links(request),
        }
    )


def _rate(job: Job) -> float:
    """A running job's items per second since it started."""
    if job.started_at is None:
        return 0.0
    elapsed_s = (utcnow() - job.started_at).total_seconds()
    return job.processed / elapsed_s if elapsed_s > 0 else 0.0


def _links(request: web.Request) -> dict[str, Any]:
    events = request.app[SETTINGS].base_path + TENANT_EVENTS_PATH
    token = tenant_events_token(request)
    return {"events": events if token is None else f"{events}?token={token}"}
