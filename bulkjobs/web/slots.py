"""The open event streams of an app (one counter per app, under an AppKey)."""

from __future__ import annotations

from ..errors import BulkJobsError
from ..service.slots import Slots


class StreamSlots(Slots):
    """Open event streams: 429 `too_many_open_streams` past the tenant's cap, 503
    `too_many_streams` past the server's, both with `Retry-After`."""

    def __init__(self, limit: int, per_tenant: int = 0, retry_after_s: int = 5) -> None:
        super().__init__(limit, per_tenant)
        self.retry_after_s = retry_after_s

    def tenant_full(self, mine: int) -> BulkJobsError:
        return BulkJobsError(
            "too_many_open_streams",
            f"You have {mine} event streams open, your limit; close one or poll instead.",
            retry_after_s=self.retry_after_s,
        )

    def server_full(self) -> BulkJobsError:
        return BulkJobsError(
            "too_many_streams",
            "The server has no event stream free; poll the job or retry later.",
            retry_after_s=self.retry_after_s,
        )
