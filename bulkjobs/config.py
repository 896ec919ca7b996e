"""Settings for one bulkjobs process: every flag, its environment variable, its default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

ENV_PREFIX = "BULKJOBS_"


@attrs.frozen
class Settings:
    """Everything a running service needs to know; built by `from_env` or the CLI."""

    host: str = "127.0.0.1"
    port: int = 8080
    db_path: str = "bulkjobs.sqlite3"
    workers: int = 4
    app: str = "bulkjobs.demo:registry"
    base_path: str = ""
    # intake limits
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout_s: float = 30.0  # a request body must start arriving within this (408)
    body_min_rate_bytes_s: int = 1024  # ... and then keep at least this rate (408)
    max_items: int = 1_000_000
    max_pending_items: int = 5_000_000
    max_pending_items_per_tenant: int = 0  # items waiting in one tenant's jobs; 0 = no cap
    max_stored_items_per_tenant: int = 0  # items in one tenant's stored jobs; 0 = no cap
    # retention
    default_ttl_s: int = 7 * 24 * 3600
    min_ttl_s: int = 60
    max_ttl_s: int = 90 * 24 * 3600
    tombstone_s: int = 7 * 24 * 3600  # deleted/expired job URLs answer 410, then 404
    idempotency_ttl_s: int = 24 * 3600  # Idempotency-Key records are kept at least this long
    janitor_interval_s: float = 30.0
    janitor_batch_jobs: int = 100
    purge_batch_items: int = 2000  # items of removed jobs deleted per transaction
    purge_pause_ms: float = 5.0  # pause between purge batches, room for the writer
    # scheduling and group commit
    queue_chunks: int = 0  # 0 = 2 x workers
    commit_max_rows: int = 2000
    commit_linger_ms: float = 5.0
    load_page_items: int = 2000  # items per lease (a claim), cut into batch_size chunks
    lease_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(1.0))
    # lifecycle
    shutdown_grace_s: float = 10.0
    cancel_wait_s: float = 5.0
    sqlite_synchronous: str = attrs.field(
        default="NORMAL", validator=attrs.validators.in_({"OFF", "NORMAL", "FULL", "EXTRA"})
    )
    busy_timeout_ms: int = 10_000
    retry_after_s: int = 1
    # live progress (SSE and long-poll)
    progress_interval_ms: float = 100.0  # progress fan-out per job: at most ~10/s
    sse_heartbeat_s: float = 15.0
    sse_retry_ms: int = 3000
    sse_max_streams: int = 1000
    sse_max_streams_per_tenant: int = 100  # open event streams of one tenant; 0 = no cap
    sse_buffer_events: int = 32
    sse_send_timeout_s: float = 30.0
    long_poll_max_s: float = 60.0
    long_poll_max_waiting: int = 1000  # long polls waiting at once; beyond, answer at once
    long_poll_max_per_tenant: int = 100  # the same, per tenant
    # webhooks: whsec_ secrets (space/comma separated, all used to sign), retry delays
    webhook_secrets: str = attrs.field(default="", validator=lambda _i, _a, v: _check_secrets(v))
    webhook_allow_private: bool = False  # allow loopback/private targets (local use, tests)
    webhook_allowed_ports: str = attrs.field(
        default="", validator=lambda _i, _a, v: _check_ports(v)
    )  # comma list or "*"; empty: 80 and 443, any port when private targets are allowed
    webhook_timeout_s: float = 15.0
    webhook_retry_schedule_s: str = "5,300,1800,7200,18000,36000,50400,72000,86400"
    webhook_concurrency: int = 16
    webhook_concurrency_per_tenant: int = 0  # with API keys; 0 = half of webhook_concurrency
    webhook_progress_interval_s: float = 10.0

    # security and admission (issue 6): keys are `tenant:sha256:<hex>` lines
    api_keys_file: str = ""
    api_keys: str = ""  # the same lines, comma separated (env BULKJOBS_API_KEYS)
    insecure_open: bool = False  # allow serving without keys on a non-loopback address
    events_token_ttl_s: int = 3600
    submit_rate_per_s: float = 20.0  # per tenant; 0 = unlimited
    submit_burst: int = 40
    max_active_jobs: int = 100  # pending or running jobs per tenant; 0 = unlimited
    min_free_disk_bytes: int = 100 * 1024 * 1024
    access_log: bool = True
    # open mode (no API keys): Host names answered besides loopback ones; `*` = any
    allowed_hosts: str = ""
    log_format: str = attrs.field(default="text", validator=attrs.validators.in_({"text", "json"}))
    # sync handlers' thread pool; 0 = 2 x workers (at most `workers` calls run at once,
    # the other half is headroom for threads stuck in handlers past their timeout)
    handler_threads: int = attrs.field(default=0, validator=attrs.validators.ge(0))

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
