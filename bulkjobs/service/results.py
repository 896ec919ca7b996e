"""Result downloads: every item outcome of a job, read in keyset pages so memory stays
flat however large the job is. Encoding is the web layer's business."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from ..errors import BulkJobsError
from ..models import ItemRow, ItemStatus, Job
from ..store import Store

PAGE_ROWS = 4000  # one page: ~1-2 ms of encoding on the loop, ~1 MB of records


def parse_status_filter(value: str | None) -> ItemStatus | None:
    """The `status` filter of a download; `invalid_status_filter` for anything else."""
    if value is None:
        return None
    try:
        return ItemStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in ItemStatus)
        raise BulkJobsError(
            "invalid_status_filter",
            f"`status` must be one of: {allowed}.",
            parameter="status",
        ) from None


def require_downloadable(job: Job, partial: bool) -> None:
    """Results of an unfinished job only with an explicit `partial=true`."""
    if not job.is_terminal and not partial:
        raise BulkJobsError(
            "job_not_terminal",
            f"Job {job.id} is {job.status.value}; results are complete once it finishes"
            " (or ask for `partial=true`).",
            job_status=job.status.value,
        )


async def result_pages(
    store: Store, job: Job, status: ItemStatus | None, page_rows: int = PAGE_ROWS
) -> AsyncGenerator[list[ItemRow], None]:
    """Pages of raw outcomes in request order, from the store's reader connection.

    The next page is read while the caller encodes and sends this one (one page ahead,
    no more: memory stays flat): the reader's thread and the loop work at the same
    time instead of in turn."""

    def read(after: int) -> asyncio.Task[list[ItemRow]]:
        return asyncio.ensure_future(
            store.list_items(job.pk, status=status, after_index=after, limit=page_rows)
        )

    ahead = read(-1)
    try:
        while True:
            rows = await ahead
            if len(rows) == page_rows:
                ahead = read(rows[-1].idx)
            if rows:
                yield rows
            if len(rows) < page_rows:
                return
    finally:
        if not ahead.done():
            ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ahead
