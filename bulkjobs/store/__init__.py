"""Durable storage behind the `Store` protocol; backends are imported lazily."""

from __future__ import annotations

from typing import Protocol

from .base import ChunkResult, JobFilter, Lease, NewJob, OperationLimits, Store, WebhookStore

__all__ = [
    "ChunkResult",
    "JobFilter",
    "Lease",
    "NewJob",
    "OperationLimits",
    "Store",
    "WebhookStore",
    "open_store",
]


class Backend(Store, WebhookStore, Protocol):
    """A store for jobs and for the webhook outbox: what `open_store` returns."""


def open_store(url_or_path: str, **options: object) -> Backend:
    """A store for a path (SQLite); other schemes are for backends added later."""
    if url_or_path.startswith(("postgres://", "postgresql://")):
        raise ValueError("the PostgreSQL backend is not part of this build")
    from .sqlite import SQLiteStore

    path = url_or_path.removeprefix("sqlite://")
    return SQLiteStore(path, **options)  # type: ignore[arg-type]
