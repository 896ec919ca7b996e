"""A counter of open event streams with a cap for the server and one per tenant (one
per app, under an AppKey). A refusal names only the caller's own count, never the
server's: no message reveals another tenant's load (DESIGN.md, fairness)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BulkJobsError


class StreamSlots:
    """Admits at most `limit` concurrent holders, at most `per_tenant` of one tenant
    (0: no tenant cap); the next one is refused with a problem and `Retry-After`."""

    def __init__(self, limit: int, per_tenant: int = 0, retry_after_s: int = 5) -> None:
        self.limit = limit
        self.per_tenant = per_tenant
        self.retry_after_s = retry_after_s
        self.open = 0
        self._by_tenant: collections.Counter[str] = collections.Counter()

    def open_for(self, tenant: str) -> int:
        """The tenant's open streams (its own load, safe to show it)."""
        return self._by_tenant[tenant]

    @contextmanager
    def hold(self, tenant: str, per_tenant: int | None = None) -> Iterator[None]:
        """Take a slot for the duration of the block, or raise a 429/503 problem;
        `per_tenant` overrides the tenant cap given at construction."""
        cap = self.per_tenant if per_tenant is None else per_tenant
        mine = self._by_tenant[tenant]
        if cap and mine >= cap:
            raise BulkJobsError(
                "too_many_open_streams",
                f"You have {mine} event streams open, your limit; close one or poll instead.",
                retry_after_s=self.retry_after_s,
            )
        if self.open >= self.limit:
            raise BulkJobsError(
                "too_many_streams",
                "The server has no event stream free; poll the job or retry later.",
                retry_after_s=self.retry_after_s,
            )
        self.open += 1
        self._by_tenant[tenant] += 1
        try:
            yield
        finally:
            self.open -= 1
            self._by_tenant[tenant] -= 1
            if not self._by_tenant[tenant]:
                del self._by_tenant[tenant]
