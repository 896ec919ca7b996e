"""Durable storage behind the `Store` protocol; backends are imported lazily."""

from __future__ import annotations

from typing import Protocol

from .base import (
    ChunkResult,
    JobFilter,
    Lease,
    NewJob,
    OperationLimits,
    Staging,
    Store,
    WebhookStore,
)

__all__ = [
    "ChunkResult",
    "JobFilter",
    "Lease",
    "NewJob",
    "OperationLimits",
    "Staging",
    "Store",
    "WebhookStore",
    "is_postgres_url",
    "open_store",
]

#: Options only the SQLite backend understands; PostgreSQL ignores them.
_SQLITE_ONLY = ("synchronous", "busy_timeout_ms")


class Backend(Store, WebhookStore, Protocol):
    """A store for jobs and for the webhook outbox: what `open_store` returns."""


def is_postgres_url(url_or_path: str) -> bool:
    return url_or_path.startswith(("postgres://", "postgresql://"))


def open_store(url_or_path: str, **options: object) -> Backend:
    """A store for a `postgresql://` URL (PostgreSQL), else for a path (SQLite).

    The PostgreSQL password comes from the URL, `BULKJOBS_DB_PASSWORD`, `PGPASSWORD`
    or `~/.pgpass`; the URL is never logged with it.
    """
    if is_postgres_url(url_or_path):
        from .postgres import PostgresStore

        pg_options = {k: v for k, v in options.items() if k not in _SQLITE_ONLY}
        return PostgresStore(url_or_path, **pg_options)  # type: ignore[arg-type]
    from .sqlite import SQLiteStore

    path = url_or_path.removeprefix("sqlite://")
    return SQLiteStore(path, **options)  # type: ignore[arg-type]
