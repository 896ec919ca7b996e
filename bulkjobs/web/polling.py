"""Cheap polling of one job: long-poll with `?wait=S` on top of ETags.

`GET /bulk-jobs/{id}?wait=S` answers at once when the client's `If-None-Match` is
already stale or the job is terminal; otherwise it waits on the event hub for the
next change (at most S seconds, S <= `long_poll_max_s`). Without `If-None-Match`
the client's state is taken to be the current one. Over the long-poll caps (in total
and per tenant, `web/waiters.py`) it answers at once, as if `wait` were 0.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BulkJobsError
from ..models import Job
from ..parsing import ascii_decimal
from .auth import tenant_of
from .keys import ENGINE, LONG_POLLS, SERVICE, SETTINGS
from .representation import etag


async def read_job(request: web.Request) -> Job:
    """The job, after waiting for a change when the request asks for a long-poll."""
    wait_s = wait_seconds(request)
    engine = request.app[ENGINE]
    # An active job's latest state is the hub's: no store read (and no wait for the
    # store's thread behind a page of pending items) on the common poll.
    job = active_from_hub(request) or await request.app[SERVICE].get(
        request.match_info["job_id"], tenant_of(request)
    )
    if wait_s == 0 or job.is_terminal or engine.draining:
        return job
    known = request.headers.get("If-None-Match")
    if known is not None and known != etag(job):
        return job  # the client is already behind: answer now
    with request.app[LONG_POLLS].hold(job.tenant) as held:
        if not held:
            return job  # over a cap: answer now; Retry-After paces the next poll
        event = await engine.hub.wait_changed(job.id, job.seq, wait_s)
    return job if event is None else event.job


def active_from_hub(request: web.Request) -> Job | None:
    """The hub's latest state of the request's job while it is active, else None.

    Only active jobs: they cannot be deleted or expire, and every change of theirs
    goes through the hub, so its latest event is the stored state.
    """
    event = request.app[ENGINE].hub.latest(request.match_info["job_id"])
    if event is None:
        return None
    job = event.job
    if job.is_terminal or job.tenant != tenant_of(request):
        return None
    return job


def wait_seconds(request: web.Request) -> float:
    """`?wait=` as seconds (0 when absent); `invalid_request` when out of range."""
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    limit = request.app[SETTINGS].long_poll_max_s
    value = ascii_decimal(raw)
    if value is None or value > limit:
        raise BulkJobsError(
            "invalid_request",
            f"`wait` must be a number of seconds from 0 to {limit:g}.",
            parameter="wait",
        )
    return value
