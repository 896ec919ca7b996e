"""Admission limits: per-tenant submit rate and active jobs, and free disk space.

Each check raises a `BulkJobsError` with `Retry-After` where waiting helps. The rate
limiter is a token bucket per tenant, so many small requests cannot bypass it.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict

import attrs

from ..errors import BulkJobsError

_MAX_TRACKED_TENANTS = 10_000
_DISK_CHECK_EVERY_S = 1.0


@attrs.define
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token bucket per tenant: `rate_per_s` sustained, `burst` at once."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, tenant: str, now: float | None = None) -> None:
        """Spend one token or raise 429 `rate_limited` with the wait in Retry-After."""
        if self.rate_per_s <= 0:
            return
        now = time.monotonic() if now is None else now
        bucket = self._bucket(tenant, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate_per_s)
        bucket.at = now
        if bucket.tokens < 1:
            wait_s = math.ceil((1 - bucket.tokens) / self.rate_per_s)
            raise BulkJobsError(
                "rate_limited",
                f"More than {self.rate_per_s:g} submits per second; slow down.",
                retry_after_s=max(1, wait_s),
            )
        bucket.tokens -= 1

    def _bucket(self, tenant: str, now: float) -> _Bucket:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(float(self.burst), now)
            if len(self._buckets) > _MAX_TRACKED_TENANTS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(tenant)
        return bucket


class DiskGuard:
    """Refuses new jobs while the database's file system is nearly full."""

    def __init__(self, db_path: str, min_free_bytes: int) -> None:
        self._dir = os.path.dirname(os.path.abspath(db_path)) or "."
        # A database URL (PostgreSQL) is not on this host's disks: nothing to guard here.
        self.min_free_bytes = 0 if "://" in db_path else min_free_bytes
        self._checked_at = -math.inf
        self._free = math.inf

    def free_bytes(self) -> float:
        now = time.monotonic()
        if now - self._checked_at >= _DISK_CHECK_EVERY_S:
            # statvfs is one cheap syscall; cached so a burst of submits makes one.
            st = os.statvfs(self._dir)
            self._free = st.f_bavail * st.f_frsize
            self._checked_at = now
        return self._free

    def check(self) -> None:
        if self.min_free_bytes > 0 and self.free_bytes() < self.min_free_bytes:
            raise BulkJobsError(
                "insufficient_storage",
                "The server is low on disk space; running jobs continue, new ones are refused.",
                retry_after_s=60,
            )


def check_active_jobs(active: int, limit: int) -> None:
    if limit > 0 and active >= limit:
        raise BulkJobsError(
            "too_many_active_jobs",
            f"{active} jobs are still pending or running; at most {limit} are allowed.",
            retry_after_s=5,
        )
