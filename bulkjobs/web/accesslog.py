"""Access log: one structured record per request, without query strings (they may
carry event-stream tokens) and without any header values."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .keys import TENANT

logger = logging.getLogger("bulkjobs.access")


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        job_id = _job_id(request)
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "method": request.method,
                "path": request.path,
                "http_status": response.status,
                "duration_ms": round(time * 1000, 2),
                "remote": request.remote,
                "tenant": request.get(TENANT),
                "job_id": job_id,
            },
        )


def _job_id(request: web.BaseRequest) -> str | None:
    """The routed job id; None for a request refused before routing."""
    try:
        match = getattr(request, "match_info", None)
    except AssertionError:  # aiohttp asserts when the request never reached the router
        return None
    return match.get("job_id") if match is not None else None
