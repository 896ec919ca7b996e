"""bulkjobs: bulk operations as durable asynchronous jobs.

Register operations on a `Registry`, then serve them with `bulkjobs serve --app
module:registry`.
"""

from .models import ItemStatus, JobStatus
from .registry import (
    BatchContext,
    ItemContext,
    ItemFailed,
    LifespanInfo,
    Registry,
    RetryableItemError,
    RetryPolicy,
)

__all__ = [
    "BatchContext",
    "ItemContext",
    "ItemFailed",
    "ItemStatus",
    "JobStatus",
    "LifespanInfo",
    "Registry",
    "RetryPolicy",
    "RetryableItemError",
]
__version__ = "0.1.0"
