"""`GET /metrics`: the engine's Prometheus registry in the text exposition format.

Gauges that describe current state (queue depth, backlog, jobs by status, streams,
webhook outbox) are refreshed at scrape time; counters and histograms are updated
where the work happens.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..models import JobStatus
from ..store.postgres import PostgresStore
from .keys import ENGINE, STREAMS

routes = web.RouteTableDef()


async def _refresh(app: web.Application) -> None:
    engine = app[ENGINE]
    m = engine.metrics
    m.queue_chunks.set(engine.queue.qsize())
    m.workers_busy.set(engine.workers.busy)
    m.sse_subscribers.set(app[STREAMS].open)
    m.webhook_in_flight.set(engine.webhooks.in_flight)
    stats = await engine.stats()
    m.backlog_items.set(stats.backlog_items)
    for status in JobStatus:
        m.jobs.labels(status.value).set(stats.jobs_by_status.get(status.value, 0))
    for state, n in stats.webhooks_by_status.items():
        m.webhook_messages.labels(state).set(n)
    if isinstance(engine.store, PostgresStore):  # pool and leases of a shared database
        m.observe_scale_out(await engine.store.scale_stats())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    await _refresh(request.app)
    body = generate_latest(request.app[ENGINE].metrics.registry)
    resp = web.Response(body=body, headers={"Cache-Control": "no-cache"})
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
