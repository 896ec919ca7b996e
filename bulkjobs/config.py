"""Settings for one bulkjobs process: every flag, its environment variable, its default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

ENV_PREFIX = "BULKJOBS_"


def setting(default: Any, help: str, *, flag: str | None = "", **kw: Any) -> Any:
    """A settings field and its one description: the `bulkjobs serve` flag (derived
    from the name unless `flag` says otherwise; None: environment only) and its help."""
    return attrs.field(default=default, metadata={"help": help, "flag": flag}, **kw)


def flag_of(field: attrs.Attribute[Any]) -> str | None:
    """The command-line flag of a settings field (None: environment only)."""
    flag = field.metadata.get("flag", "")
    return "--" + field.name.replace("_", "-") if flag == "" else flag


@attrs.frozen
class Settings:
    """Everything a running service needs to know; built by `from_env` or the CLI."""

    host: str = setting(default="127.0.0.1", help="interface to bind")
    port: int = setting(default=8080, help="TCP port")
    db_path: str = setting(
        default="bulkjobs.sqlite3",
        help="SQLite file, or a postgresql:// URL, for jobs (and the demo's orders)",
        flag="--db",
    )
    workers: int = setting(default=4, help="number of worker coroutines")
    app: str = setting(
        default="bulkjobs.demo:registry", help="operations to serve, as module:registry"
    )
    base_path: str = setting(default="", help="URL prefix for every route, e.g. /api")
    # intake limits
    max_body_bytes: int = setting(default=64 * 1024 * 1024, help="largest accepted request body")
    body_timeout_s: float = setting(
        default=30.0, help="seconds for a request body to start arriving (408)"
    )
    body_min_rate_bytes_s: int = setting(
        default=1024, help="slowest accepted request body, bytes per second (408)"
    )
    accept_gzip: bool = setting(
        default=False, help="accept `Content-Encoding: gzip` submits (else 415)"
    )
    max_inflated_bytes: int = setting(
        default=64 * 1024 * 1024, help="largest gzip submit body once inflated"
    )
    max_inflate_ratio: int = setting(
        default=100, help="most a gzip submit body may inflate, times its compressed size"
    )
    max_uploads: int = setting(default=4, help="submit bodies received at once (more: 503)")
    max_uploads_per_tenant: int = setting(
        default=2, help="submit bodies of one tenant received at once (more: 429; 0 = no limit)"
    )
    max_items: int = setting(default=1_000_000, help="most items in one job")
    max_pending_items: int = setting(
        default=5_000_000, help="items waiting across all jobs before 503"
    )
    max_pending_items_per_tenant: int = setting(
        default=0, help="items waiting in one tenant's jobs before 429 (0 = no limit)"
    )
    max_stored_items_per_tenant: int = setting(
        default=0, help="items in one tenant's stored jobs before 507 (0 = no limit)"
    )
    # retention
    default_ttl_s: int = setting(
        default=7 * 24 * 3600, help="how long finished jobs are kept, by default"
    )
    min_ttl_s: int = setting(default=60, help="shortest ttl_seconds a job may ask for")
    max_ttl_s: int = setting(default=90 * 24 * 3600, help="longest ttl_seconds a job may ask for")
    tombstone_s: int = setting(
        default=7 * 24 * 3600, help="how long a removed job's URL answers 410 before 404"
    )
    idempotency_ttl_s: int = setting(
        default=24 * 3600, help="how long Idempotency-Key records are kept"
    )
    janitor_interval_s: float = setting(
        default=30.0, help="seconds between sweeps for expired jobs"
    )
    janitor_batch_jobs: int = setting(default=100, help="expired jobs removed per janitor sweep")
    purge_batch_items: int = setting(default=2000, help="items deleted per purge transaction")
    purge_pause_ms: float = setting(default=5.0, help="pause between purge transactions")
    # scheduling and group commit
    queue_chunks: int = setting(
        default=0, help="bounded work queue size in chunks (0 = 2 x workers)"
    )
    commit_max_rows: int = setting(default=2000, help="most item outcomes in one group commit")
    commit_linger_ms: float = setting(
        default=5.0, help="how long a group commit waits for more rows"
    )
    load_page_items: int = setting(
        default=2000, help="items claimed per lease, cut into batch chunks"
    )
    lease_s: float = setting(
        default=30.0,
        validator=attrs.validators.gt(1.0),
        help="lease on claimed items; renewed every third of it",
    )
    # lifecycle
    shutdown_grace_s: float = setting(
        default=10.0, help="how long SIGTERM waits for items in flight"
    )
    cancel_wait_s: float = setting(
        default=5.0, help="how long POST .../cancel waits before answering 202"
    )
    sqlite_synchronous: str = setting(
        help="NORMAL (crash-safe) or FULL (power-safe)",
        default="NORMAL",
        validator=attrs.validators.in_({"OFF", "NORMAL", "FULL", "EXTRA"}),
    )
    busy_timeout_ms: int = setting(default=10_000, help="SQLite busy timeout")
    retry_after_s: int = setting(default=1, help="Retry-After sent with server_busy")
    # live progress (SSE and long-poll)
    progress_interval_ms: float = setting(default=100.0, help="least time between progress events")
    sse_heartbeat_s: float = setting(default=15.0, help="seconds between SSE comment heartbeats")
    sse_retry_ms: int = setting(default=3000, help="reconnect delay the SSE stream advises")
    sse_max_streams: int = setting(default=1000, help="open SSE streams before 503")
    sse_max_streams_per_tenant: int = setting(
        default=100, help="open SSE streams of one tenant before 429 (0 = no cap)"
    )
    sse_buffer_events: int = setting(default=32, help="events buffered per SSE client")
    sse_send_timeout_s: float = setting(default=30.0, help="a stalled SSE client is dropped after")
    long_poll_max_s: float = setting(
        default=60.0, help="longest accepted ?wait= on GET /bulk-jobs/{id}"
    )
    long_poll_max_waiting: int = setting(
        default=1000, help="long polls waiting at once; beyond, ?wait= answers at once"
    )
    long_poll_max_per_tenant: int = setting(
        default=100, help="long polls one tenant may have waiting; beyond, ?wait= answers at once"
    )
    # webhooks: whsec_ secrets (space/comma separated, all used to sign), retry delays
    webhook_secrets: str = setting(
        default="",
        validator=lambda _i, _a, v: _check_secrets(v),
        help="whsec_<base64> signing secrets, space or comma separated",
        flag=None,
    )
    webhook_allow_private: bool = setting(
        default=False, help="allow loopback/private webhook targets"
    )
    webhook_allowed_ports: str = setting(
        help="ports webhooks may use, comma list or * (default 80,443; any with allow-private)",
        default="",
        validator=lambda _i, _a, v: _check_ports(v),
    )  # comma list or "*"; empty: 80 and 443, any port when private targets are allowed
    webhook_timeout_s: float = setting(
        default=15.0, help="seconds a webhook endpoint has to answer"
    )
    webhook_retry_schedule_s: str = setting(
        default="5,300,1800,7200,18000,36000,50400,72000,86400",
        help="webhook retry delays, comma list",
    )
    webhook_concurrency: int = setting(default=16, help="webhook deliveries in flight at once")
    webhook_concurrency_per_tenant: int = setting(
        default=0,
        help="one tenant's webhook deliveries in flight (0 = half of --webhook-concurrency)",
    )
    webhook_progress_interval_s: float = setting(
        default=10.0, help="least time between job.progress webhooks"
    )

    # security and admission (issue 6): keys are `tenant:sha256:<hex>` lines
    api_keys_file: str = setting(
        default="", help="file of 'tenant:sha256:<hex>' lines; none = open"
    )
    api_keys: str = setting(
        default="",
        help="'tenant:sha256:<hex>' lines, comma separated (or --api-keys-file)",
        flag=None,
    )
    insecure_open: bool = setting(
        default=False, help="serve without API keys on a non-loopback address (anyone can reach it)"
    )
    events_token_ttl_s: int = setting(default=3600, help="lifetime of signed events-link tokens")
    submit_rate_per_s: float = setting(
        default=20.0, help="submits per second per tenant (0 = no limit)"
    )
    submit_burst: int = setting(default=40, help="submits a tenant may send at once")
    max_active_jobs: int = setting(
        default=100, help="pending/running jobs per tenant (0 = no limit)"
    )
    min_free_disk_bytes: int = setting(
        default=100 * 1024 * 1024, help="below this free space new jobs get 507"
    )
    access_log: bool = setting(default=True, help="log every request (true/false)")
    # open mode (no API keys): Host names answered besides loopback ones; `*` = any
    allowed_hosts: str = setting(
        default="", help="open mode: Host names answered besides loopback, comma list ('*' = any)"
    )
    log_format: str = setting(
        default="text",
        validator=attrs.validators.in_({"text", "json"}),
        help="text or json (one object per line)",
    )
    # scale-out on PostgreSQL (issue 11): other processes' job changes, worker-only mode
    pg_listen: bool = setting(
        default=True,
        help="PostgreSQL: LISTEN for other processes' job changes (false: poll only,"
        " e.g. behind PgBouncer in transaction mode)",
    )
    job_poll_s: float = setting(
        default=1.0,
        validator=attrs.validators.gt(0),
        help="PostgreSQL: seconds between reads of watched jobs changed elsewhere"
        " (the safety net of LISTEN)",
    )
    no_http: bool = setting(
        default=False,
        help="run the engine only (workers, dispatcher, leases, maintenance, webhooks);"
        " bind no port",
    )
    # sync handlers' thread pool; 0 = 2 x workers (at most `workers` calls run at once,
    # the other half is headroom for threads stuck in handlers past their timeout)
    handler_threads: int = setting(
        default=0,
        validator=attrs.validators.ge(0),
        help="threads for sync handlers (0 = 2 x workers)",
    )

    @property
    def queue_size(self) -> int:
        return self.queue_chunks or 2 * self.workers

    @property
    def handler_pool_size(self) -> int:
        return self.handler_threads or 2 * self.workers

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `BULKJOBS_*` environment variables, then explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _coerce(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _check_secrets(value: str) -> None:
    from .signing import parse_secrets

    parse_secrets(value)


def _check_ports(value: str) -> None:
    from .service.webhooks.targets import parse_ports

    parse_ports(value, allow_private=False)


def _coerce(field: attrs.Attribute[Any], raw: str) -> Any:
    kind: type[Any] = type(field.default)
    if kind is bool:
        return raw.lower() in {"1", "true", "yes", "on"}
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{field.name.upper()} must be a number") from None
    return raw
