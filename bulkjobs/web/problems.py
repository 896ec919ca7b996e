"""The one place that turns errors into RFC 9457 `application/problem+json` responses."""

from __future__ import annotations

import difflib
import logging
from typing import Any

from aiohttp import web

from .. import jsonutil
from ..errors import CATALOG, BulkJobsError
from ..store.postgres import UNAVAILABLE
from .keys import ENGINE, SETTINGS

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: Statuses that mean "refused by a limit": counted in bulkjobs_requests_rejected.
_REFUSALS = frozenset({413, 429, 503, 507})

#: Retry-After of a 503 `store_unavailable`: a restart of PostgreSQL takes seconds.
STORE_RETRY_AFTER_S = 2

_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def problem_response(
    request: web.Request,
    code: str,
    detail: str,
    *,
    retry_after_s: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A problem+json response for a catalog code."""
    ptype = CATALOG[code]
    base = request.app[SETTINGS].base_path
    body: dict[str, Any] = {
        "type": f"{base}/errors/{code}",
        "title": ptype.title,
        "status": ptype.status,
        "detail": detail,
        "code": code,
        "instance": request.path,
        **extra,
    }
    hdrs = dict(headers or {})
    if retry_after_s is not None:
        hdrs["Retry-After"] = str(retry_after_s)
    return web.Response(
        status=ptype.status, body=jsonutil.dumps(body), content_type=PROBLEM_JSON, headers=hdrs
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map domain errors and aiohttp's HTTP errors to problems; never leak a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except BulkJobsError as err:
        if err.problem_type.status in _REFUSALS:
            request.app[ENGINE].metrics.rejected.labels(err.code).inc()
        return problem_response(
            request,
            err.code,
            err.detail,
            retry_after_s=err.retry_after_s,
            headers=err.headers,
            **err.extra,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(request, exc)
    except UNAVAILABLE as exc:
        if request.transport is None or request.transport.is_closing():
            raise  # the client went away (a reset of its own socket): nobody to answer
        # The database is restarting or unreachable: the client retries, no traceback.
        logger.warning("store unavailable on %s %s: %r", request.method, request.path, exc)
        request.app[ENGINE].metrics.rejected.labels("store_unavailable").inc()
        return problem_response(
            request,
            "store_unavailable",
            "The database is not answering; retry shortly.",
            retry_after_s=STORE_RETRY_AFTER_S,
        )
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(request, "internal_error", "An unexpected error occurred.")


def _from_http(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status)
    if code is None:
        code = "invalid_request" if exc.status < 500 else "internal_error"
    detail = (
        exc.text
        if exc.text and not exc.text.startswith(str(exc.status))
        else CATALOG[code].description
    )
    if exc.status == 404:
        detail = _not_found_detail(request, detail)
    headers = {}
    if exc.status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    return problem_response(request, code, detail, headers=headers)


def _not_found_detail(request: web.Request, detail: str) -> str:
    """Name the nearest route when a path looks like a typo of one (`/bulk-job`)."""
    templates = {
        r.canonical for r in request.app.router.resources() if not r.canonical.endswith("}")
    }
    near = difflib.get_close_matches(request.path, templates, n=1, cutoff=0.75)
    return f"{detail} Did you mean {near[0]}?" if near else detail
