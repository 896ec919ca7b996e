"""HTTP handlers for webhook deliveries: list a job's messages with every attempt,
and send one again."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import paths
from ..models import format_ts
from ..outbox import DeliveryAttempt, MessageStatus, WebhookSubscription
from ..service.jobs import decode_cursor, encode_cursor
from ..service.webhooks import Delivery
from .auth import tenant_of
from .keys import SERVICE, SETTINGS
from .routes import json_response, page_limit

routes = web.RouteTableDef()


def attempt_json(a: DeliveryAttempt) -> dict[str, Any]:
    return {
        "at": format_ts(a.at),
        "status_code": a.status_code,
        "error": a.error,
        "duration_ms": a.duration_ms,
        "next_attempt_at": format_ts(a.next_attempt_at),
    }


def delivery_json(d: Delivery, href: str) -> dict[str, Any]:
    """One message: its state, when it is tried next, and every attempt so far."""
    m = d.message
    pending = m.status is MessageStatus.PENDING
    return {
        "id": m.id,
        "type": m.type,
        "status": m.status.value,
        "created_at": format_ts(m.created_at),
        "delivered_at": format_ts(m.delivered_at),
        "next_attempt_at": format_ts(m.next_attempt_at) if pending else None,
        "attempt_count": m.attempts,
        "attempts": [attempt_json(a) for a in d.attempts],
        "links": {"redeliver": f"{href}/{m.id}/redeliver"},
    }


def subscription_json(sub: WebhookSubscription | None) -> dict[str, Any] | None:
    if sub is None:
        return None
    return {
        "url": sub.url,
        "events": list(sub.events),
        "status": "gone" if sub.gone_at else "active",
        "gone_at": format_ts(sub.gone_at),
    }


def _href(request: web.Request, job_id: str) -> str:
    return f"{request.app[SETTINGS].base_path}/bulk-jobs/{job_id}/webhook-deliveries"


@routes.get(paths.JOB_DELIVERIES)
async def list_deliveries(request: web.Request) -> web.Response:
    """The job's webhook messages, oldest first, each with all its attempts."""
    service = request.app[SERVICE]
    limit = page_limit(request.query)
    after = decode_cursor("w", request.query.get("cursor")) or 0
    job = await service.get(request.match_info["job_id"], tenant_of(request))
    page = await service.webhooks.list(job, after, limit)
    href = _href(request, job.id)
    nxt, headers = None, {}
    if page.next_after is not None:
        nxt = str(request.rel_url.update_query(cursor=encode_cursor("w", page.next_after)))
        headers["Link"] = f'<{nxt}>; rel="next"'
    body = {
        "webhook": subscription_json(page.subscription),
        "data": [delivery_json(d, href) for d in page.data],
        "links": {"next": nxt},
    }
    return json_response(body, headers=headers)


@routes.post(paths.JOB_REDELIVER)
async def redeliver(request: web.Request) -> web.Response:
    """Send a message again now, with the same `webhook-id`: 202 and the message."""
    service = request.app[SERVICE]
    job = await service.get(request.match_info["job_id"], tenant_of(request))
    delivery = await service.webhooks.redeliver(job, request.match_info["msg_id"])
    return json_response(delivery_json(delivery, _href(request, job.id)), status=202)
