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
from .models import Event, RemoteJob, RemoteJobError
from .transport import RequestRetry

# The names of 0.1, kept for existing scripts: the classes were renamed so that no two
# classes of the package share a name (the server has its own Job and JobError).
Job = RemoteJob
JobError = RemoteJobError
RetryPolicy = RequestRetry

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
    "RemoteJob",
    "RemoteJobError",
    "RequestRetry",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WaitTimeout",
]
