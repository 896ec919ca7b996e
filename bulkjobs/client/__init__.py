"""Clients for a bulkjobs server: the async `BulkJobsClient`, the blocking `SyncClient`
(same methods, its own loop thread), and the `bulkjobs submit/watch/status/...` commands."""

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
    ServerUnreachable,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from .models import Event, RemoteJob, RemoteJobError
from .sync import SyncClient
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
    "ServerUnreachable",
    "SyncClient",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WaitTimeout",
]
