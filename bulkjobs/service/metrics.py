"""Prometheus metrics of one engine, in a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..store.postgres import ScaleStats

_LATENCY_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120)
_NOTIFY_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_ROWS_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


class Metrics:
    """Every metric the service exports; the engine and its parts update them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.items = Counter(
            "bulkjobs_items",
            "Items finished, by operation and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.item_seconds = Histogram(
            "bulkjobs_item_seconds",
            "Mean handler time per item, one sample per chunk of items.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_submitted = Counter(
            "bulkjobs_jobs_submitted",
            "Jobs accepted with a 202, by operation.",
            ["operation"],
            registry=r,
        )
        self.jobs = Gauge("bulkjobs_jobs", "Stored jobs, by status.", ["status"], registry=r)
        self.queue_chunks = Gauge(
            "bulkjobs_queue_chunks", "Chunks waiting for a worker.", registry=r
        )
        self.backlog_items = Gauge(
            "bulkjobs_backlog_items", "Items accepted but not finished yet.", registry=r
        )
        self.workers_busy = Gauge("bulkjobs_workers_busy", "Workers working a chunk.", registry=r)
        self.handler_threads_stuck = Gauge(
            "bulkjobs_handler_threads_stuck",
            "Handler threads still in a sync call nobody waits for (timed out, or worker stopped).",
            registry=r,
        )
        self.commit_rows = Histogram(
            "bulkjobs_commit_rows",
            "Item outcomes per group commit.",
            buckets=_ROWS_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "bulkjobs_commit_seconds", "Group commit latency.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.sse_subscribers = Gauge("bulkjobs_sse_subscribers", "Open event streams.", registry=r)
        self.rejected = Counter(
            "bulkjobs_requests_rejected",
            "Requests refused by a limit, by problem code.",
            ["code"],
            registry=r,
        )
        self.webhook_messages = Gauge(
            "bulkjobs_webhook_messages", "Webhook outbox messages, by state.", ["state"], registry=r
        )
        self.webhook_in_flight = Gauge(
            "bulkjobs_webhook_in_flight", "Webhook deliveries in progress.", registry=r
        )
        self._init_scale_out()
        self._init_events_across()

    # -- scale-out on PostgreSQL: the pool and the leases (set at each scrape) ------

    def _init_scale_out(self) -> None:
        r = self.registry
        self.db_pool_connections = Gauge(
            "bulkjobs_db_pool_connections",
            "This process's database connections, by state (in_use, idle); PostgreSQL.",
            ["state"],
            registry=r,
        )
        self.db_pool_max = Gauge(
            "bulkjobs_db_pool_max", "The cap of this process's connection pool.", registry=r
        )
        self.leases = Gauge(
            "bulkjobs_leases",
            "Leases in the database (every process's), by state (held, expired: not yet"
            " taken over).",
            ["state"],
            registry=r,
        )
        self.lease_oldest_age = Gauge(
            "bulkjobs_lease_oldest_age_seconds",
            "Age of the oldest lease in the database since it was granted.",
            registry=r,
        )
        self.leases_reclaimed = Counter(
            "bulkjobs_leases_reclaimed",
            "Expired leases this process took over (their owner stopped renewing them).",
            registry=r,
        )
        self._reclaimed_seen = 0

    def observe_scale_out(self, stats: ScaleStats) -> None:
        """Set the pool and lease metrics from a `PostgresStore.scale_stats()`."""
        self.db_pool_connections.labels("in_use").set(stats.pool_size - stats.pool_idle)
        self.db_pool_connections.labels("idle").set(stats.pool_idle)
        self.db_pool_max.set(stats.pool_max)
        self.leases.labels("held").set(stats.leases - stats.leases_expired)
        self.leases.labels("expired").set(stats.leases_expired)
        self.lease_oldest_age.set(stats.oldest_lease_s)
        grew = stats.leases_reclaimed - self._reclaimed_seen
        if grew > 0:
            self.leases_reclaimed.inc(grew)
            self._reclaimed_seen = stats.leases_reclaimed

    # -- events across processes (PostgreSQL NOTIFY) --------------------------------

    def _init_events_across(self) -> None:
        self.notify_lag = Histogram(
            "bulkjobs_notify_lag_seconds",
            "From a job change's commit (the sender's clock) to its NOTIFY arriving here.",
            buckets=_NOTIFY_LAG_BUCKETS,
            registry=self.registry,
        )

    def watch_webhooks(self, stats: object) -> None:
        """Export the dispatcher's cumulative attempt counts (read at each scrape)."""
        self.registry.register(_WebhookCollector(stats))


class _WebhookCollector(Collector):
    def __init__(self, stats: object) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        attempts = CounterMetricFamily(
            "bulkjobs_webhook_attempts", "Webhook delivery attempts since start."
        )
        attempts.add_metric([], getattr(self._stats, "attempts", 0))
        yield attempts
        outcomes = CounterMetricFamily(
            "bulkjobs_webhook_outcomes", "Webhook attempt outcomes since start.", labels=["outcome"]
        )
        for outcome in ("delivered", "failed", "retrying", "gone"):
            outcomes.add_metric([outcome], getattr(self._stats, outcome, 0))
        yield outcomes
