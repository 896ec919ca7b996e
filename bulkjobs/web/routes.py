"""HTTP handlers for the job API. They parse, call the service, and shape responses;
errors are raised and mapped to problems by the middleware."""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from email.utils import format_datetime
from typing import Any

import attrs
from aiohttp import web
from multidict import MultiMapping

from .. import jsonutil, paths
from ..errors import BulkJobsError
from ..models import Job
from ..parsing import ascii_uint
from ..service.engine import Engine
from ..service.jobs import MAX_PAGE, Form, Page
from .auth import tenant_of
from .bodies import BodyReader, check_encoding
from .keys import ENGINE, SERVICE, SETTINGS
from .polling import read_job
from .render import render_job
from .representation import etag, item_json, poll_hint_s
from .results import with_lineage

routes = web.RouteTableDef()

READY_TIMEOUT_S = 1.0
READY_CACHE_S = 1.0

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=jsonutil.dumps(body), content_type="application/json", headers=headers
    )


def _base(request: web.Request) -> str:
    return request.app[SETTINGS].base_path


def _job_headers(request: web.Request, job: Job) -> dict[str, str]:
    headers = {"ETag": etag(job), "Cache-Control": "no-cache"}
    hint = poll_hint_s(job)
    if hint is not None:
        headers["Retry-After"] = str(hint)
    if job.expires_at is not None:
        headers["Expires"] = format_datetime(job.expires_at, usegmt=True)
    return headers


def page_limit(query: MultiMapping[str]) -> int:
    """`?limit=` of a collection: 1 to MAX_PAGE, default 100."""
    limit = ascii_uint(query.get("limit", "100"), max_digits=6)
    if limit is None or not 1 <= limit <= MAX_PAGE:
        raise BulkJobsError(
            "invalid_request",
            f"`limit` must be an integer from 1 to {MAX_PAGE}.",
            parameter="limit",
        )
    return limit


def _page_response(request: web.Request, page: Page[Any], data: list[Any]) -> web.Response:
    headers: dict[str, str] = {}
    nxt = None
    if page.next_cursor is not None:
        nxt = str(request.rel_url.update_query(cursor=page.next_cursor))
        headers["Link"] = f'<{nxt}>; rel="next"'
    return json_response({"data": data, "links": {"next": nxt}}, headers=headers)


@routes.post(paths.JOBS)
async def create_job(request: web.Request) -> web.Response:
    """Accept a job: 202, `Location`, `Retry-After`, the pending job as the body."""
    form, body = _upload(request)
    key = request.headers.get("Idempotency-Key")
    job, replayed = await request.app[SERVICE].submit(body, form, tenant_of(request), key)
    doc = render_job(request, job)
    headers = _job_headers(request, job)
    headers["Location"] = doc["links"]["self"]
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(doc, status=200 if replayed else 202, headers=headers)


def _upload(request: web.Request) -> tuple[Form, BodyReader]:
    """What a submit sends, checked before a byte of its body is read (or inflated)."""
    if request.content_type not in JSON_TYPES | NDJSON_TYPES:
        raise BulkJobsError(
            "unsupported_media_type",
            f"Content-Type {request.content_type!r} is not supported;"
            " send application/json or application/x-ndjson.",
        )
    gzip = check_encoding(request)
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BulkJobsError(
            "payload_too_large",
            f"The body is {request.content_length} bytes; the limit is {limit}.",
            headers={"Connection": "close"},
        )
    form = Form(
        ndjson=request.content_type in NDJSON_TYPES,
        params=dict(request.query),
        length=None if gzip else request.content_length,
    )
    # read while it is parsed: a deadline and a minimum rate (408 when slower), limits
    return form, BodyReader(request, gzip=gzip)


@routes.get(paths.JOBS)
async def list_jobs(request: web.Request) -> web.Response:
    q = request.query
    page = await request.app[SERVICE].list_jobs(
        tenant=tenant_of(request),
        status=q.get("status"),
        operation=q.get("operation"),
        cursor=q.get("cursor"),
        limit=page_limit(q),
    )
    return _page_response(request, page, [render_job(request, j) for j in page.data])


@routes.get(paths.JOB)
async def get_job(request: web.Request) -> web.Response:
    job = await read_job(request)  # honours ?wait= (long-poll)
    headers = _job_headers(request, job)
    if request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    body = await with_lineage(request, job, render_job(request, job))
    return json_response(body, headers=headers)


@routes.get(paths.JOB_ITEMS)
async def list_items(request: web.Request) -> web.Response:
    q = request.query
    page = await request.app[SERVICE].list_items(
        request.match_info["job_id"],
        tenant=tenant_of(request),
        status=q.get("status"),
        cursor=q.get("cursor"),
        limit=page_limit(q),
    )
    return _page_response(request, page, [item_json(i) for i in page.data])


@routes.post(paths.JOB_CANCEL)
async def cancel_job(request: web.Request) -> web.Response:
    """200 with the cancelled job, or 202 while in-flight items are still finishing."""
    job = await request.app[SERVICE].cancel(request.match_info["job_id"], tenant_of(request))
    status = 200 if job.is_terminal else 202
    return json_response(
        render_job(request, job), status=status, headers=_job_headers(request, job)
    )


@routes.delete(paths.JOB)
async def delete_job(request: web.Request) -> web.Response:
    await request.app[SERVICE].delete(request.match_info["job_id"], tenant_of(request))
    return web.Response(status=204)


@routes.get(paths.OPERATIONS)
async def list_operations(request: web.Request) -> web.Response:
    ops = request.app[ENGINE].registry.operations
    return json_response({"data": [op.describe() for op in ops]})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@attrs.define
class _StoreCheck:
    """The last store check of one engine: its answer and when it was taken."""

    answer: str = "ok"
    at: float = -math.inf


#: Per engine (weakly held): probes every second or so cost one write, not one each.
_STORE_CHECKS: weakref.WeakKeyDictionary[Engine, _StoreCheck] = weakref.WeakKeyDictionary()


async def _store_check(engine: Engine) -> str:
    """The answer "ok" when the store took a write (a lease heartbeat) within
    READY_CACHE_S, else the error; bounded by READY_TIMEOUT_S, so an unreachable
    database answers fast."""
    check = _STORE_CHECKS.setdefault(engine, _StoreCheck())
    now = time.monotonic()
    if now - check.at < READY_CACHE_S:
        return check.answer
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await engine.check_writable()
        answer = "ok"
    except Exception as exc:  # any failure means "not ready", never a 500
        answer = f"error: {type(exc).__name__}"
    check.answer, check.at = answer, time.monotonic()
    return answer


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when the store takes writes, every background loop runs, and not draining."""
    engine = request.app[ENGINE]
    checks: dict[str, object] = {"store": "ok", "tasks_alive": engine.alive}
    checks["draining"] = engine.draining
    if engine.dead_loops:
        checks["dead_loops"] = sorted(engine.dead_loops)
    checks["store"] = await _store_check(engine)
    ready = checks["store"] == "ok" and engine.alive and not engine.draining
    return json_response({"ready": ready, **checks}, status=200 if ready else 503)
