"""Caps on long polls waiting at once, in total and per tenant (one per app).

A long poll over a cap is not refused: it answers at once with the job as it is (the
client polls again after `Retry-After`), so a cap costs a tenant latency, never an
error, and says nothing about how many others are waiting.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager


class WaitSlots:
    """At most `total` waiters at once, at most `per_tenant` of any one tenant."""

    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.waiting: collections.Counter[str] = collections.Counter()

    @contextmanager
    def hold(self, tenant: str) -> Iterator[bool]:
        """Yield True with a slot held for the block, or False when a cap is reached."""
        full = self.waiting.total() >= self.total or self.waiting[tenant] >= self.per_tenant
        if full:
            yield False
            return
        self.waiting[tenant] += 1
        try:
            yield True
        finally:
            self.waiting[tenant] -= 1
            if not self.waiting[tenant]:
                del self.waiting[tenant]
