"""A counter of open event streams with a cap (one per app, under an AppKey)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BulkJobsError


class StreamSlots:
    """Admits at most `limit` concurrent holders; the next one gets `too_many_streams`."""

    def __init__(self, limit: int, retry_after_s: int = 5) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.open = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Take a slot for the duration of the block, or raise a 503 problem."""
        if self.open >= self.limit:
            raise BulkJobsError(
                "too_many_streams",
                f"{self.open} event streams are open; the limit is {self.limit}.",
                retry_after_s=self.retry_after_s,
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
