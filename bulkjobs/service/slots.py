"""Counted slots with a cap for the server and one per tenant: event streams, uploads.

A refusal names only the caller's own count, never the server's: no message reveals
another tenant's load (DESIGN.md, fairness)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BulkJobsError


class Slots:
    """Admits at most `limit` concurrent holders, at most `per_tenant` of one tenant
    (0: no tenant cap); the next one is refused with the problem a subclass names."""

    def __init__(self, limit: int, per_tenant: int = 0) -> None:
        self.limit = limit
        self.per_tenant = per_tenant
        self.open = 0
        self._by_tenant: collections.Counter[str] = collections.Counter()

    def open_for(self, tenant: str) -> int:
        """The tenant's slots in use (its own load, safe to show it)."""
        return self._by_tenant[tenant]

    @contextmanager
    def hold(self, tenant: str, per_tenant: int | None = None) -> Iterator[None]:
        """Take a slot for the duration of the block, or raise the refusal;
        `per_tenant` overrides the tenant cap given at construction."""
        cap = self.per_tenant if per_tenant is None else per_tenant
        mine = self._by_tenant[tenant]
        if cap and mine >= cap:
            raise self.tenant_full(mine)
        if self.open >= self.limit:
            raise self.server_full()
        self.open += 1
        self._by_tenant[tenant] += 1
        try:
            yield
        finally:
            self.open -= 1
            self._by_tenant[tenant] -= 1
            if not self._by_tenant[tenant]:
                del self._by_tenant[tenant]

    def tenant_full(self, mine: int) -> BulkJobsError:
        raise NotImplementedError

    def server_full(self) -> BulkJobsError:
        raise NotImplementedError
