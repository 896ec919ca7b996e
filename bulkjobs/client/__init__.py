"""Clients for a bulkjobs server: the async `BulkJobsClient`, a thin sync wrapper, and
the `bulkjobs submit/status/list/cancel/results` commands."""

from __future__ import annotations

from .api import BulkJobsClient
from .errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Gone,
    NotFound,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from .models import Event, Job, JobError
from .transport import RetryPolicy

__all__ = [
    "ApiError",
    "BadRequest",
    "BulkJobsClient",
    "ClientError",
    "Conflict",
    "Event",
    "Gone",
    "Job",
    "JobError",
    "NotFound",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WaitTimeout",
]
