"""Result downloads: every item outcome of a job, read in keyset pages so memory stays
flat however large the job is. Encoding is the web layer's business."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from ..errors import BulkJobsError
from ..models import ItemRow, ItemStatus, Job
from ..store import Store

PAGE_ROWS = 2000


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
    """Pages of raw outcomes in request order, from the store's reader connection."""
    after = -1
    while True:
        rows = await store.list_items(job.pk, status=status, after_index=after, limit=page_rows)
        if rows:
            yield rows
        if len(rows) < page_rows:
            return
        after = rows[-1].idx
