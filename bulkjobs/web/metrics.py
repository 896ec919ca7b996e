"""`GET /metrics`: Prometheus text exposition of the process's counters."""

from __future__ import annotations

from aiohttp import web

from .keys import ENGINE

routes = web.RouteTableDef()


async def webhook_lines(request: web.Request) -> list[str]:
    """Webhook deliveries: attempts and outcomes since start, outbox messages by state."""
    engine = request.app[ENGINE]
    stats = engine.webhooks.stats
    counts = await engine.store.webhooks.count_by_status()
    lines = [
        "# HELP bulkjobs_webhook_attempts_total Webhook delivery attempts since start.",
        "# TYPE bulkjobs_webhook_attempts_total counter",
        f"bulkjobs_webhook_attempts_total {stats.attempts}",
        "# HELP bulkjobs_webhook_outcomes_total Attempt outcomes since start.",
        "# TYPE bulkjobs_webhook_outcomes_total counter",
    ]
    for outcome in ("delivered", "failed", "retrying", "gone"):
        lines.append(
            f'bulkjobs_webhook_outcomes_total{{outcome="{outcome}"}} {getattr(stats, outcome)}'
        )
    lines += [
        "# HELP bulkjobs_webhook_messages Outbox messages by state.",
        "# TYPE bulkjobs_webhook_messages gauge",
    ]
    lines += [f'bulkjobs_webhook_messages{{state="{k}"}} {v}' for k, v in sorted(counts.items())]
    lines += [
        "# HELP bulkjobs_webhook_in_flight Webhook deliveries in progress.",
        "# TYPE bulkjobs_webhook_in_flight gauge",
        f"bulkjobs_webhook_in_flight {engine.webhooks.in_flight}",
    ]
    return lines


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    lines = await webhook_lines(request)
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        headers={"Cache-Control": "no-cache"},
    )
