"""How jobs and items look on the wire: JSON shapes, links, ETags, Retry-After."""

from __future__ import annotations

from typing import Any

from .. import jsonutil, paths
from ..models import ItemRecord, ItemRow, Job, format_ts
from .schemas import Wire, ref

#: Poll hints are kept between these bounds (seconds).
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 30


#: The keys of `job_links`; `results.with_lineage` may add `LINEAGE_LINKS`.
JOB_LINKS = ("self", "events", "items", "failures", "results", "cancel", "retry")
LINEAGE_LINKS = ("retry_of", "retried_by")
JOB_ID_PATTERN = "^job_[0-9a-z]{26}$"  # models.new_job_id


def job_links(job: Job, base: str) -> dict[str, str]:
    def link(template: str) -> str:
        return paths.job_path(template, job.id, base)

    return {
        "self": link(paths.JOB),
        "events": link(paths.JOB_EVENTS),
        "items": link(paths.JOB_ITEMS),
        "failures": link(paths.JOB_ITEMS) + "?status=failed",
        "results": link(paths.JOB_RESULTS),
        "cancel": link(paths.JOB_CANCEL),
        "retry": link(paths.JOB_RETRY),
    }


def job_json(job: Job, base: str, events_token: str | None = None) -> dict[str, Any]:
    """The public job resource (DESIGN.md, "Job resource")."""
    links = job_links(job, base)
    if events_token is not None:
        # browsers cannot send headers on EventSource: the link carries its own token
        links["events"] += f"?token={events_token}"
    body: dict[str, Any] = {
        "id": job.id,
        "operation": job.operation,
        "status": job.status.value,
        "total_items": job.total_items,
        "processed": job.processed,
        "succeeded": job.succeeded,
        "failed": job.failed,
        "cancelled": job.cancelled,
        "progress": job.progress,
        "created_at": format_ts(job.created_at),
        "started_at": format_ts(job.started_at),
        "completed_at": format_ts(job.completed_at),
        "updated_at": format_ts(job.updated_at),
        "expires_at": format_ts(job.expires_at),
        "cancel_requested_at": format_ts(job.cancel_requested_at),
        "links": links,
    }
    if job.is_terminal:
        body["result_url"] = links["results"]
    if job.error is not None:
        body["error"] = {"code": job.error.code, "message": job.error.message}
    return body


_COUNTERS = ("total_items", "processed", "succeeded", "failed", "cancelled")
_TIMESTAMPS = (
    *("created_at", "started_at", "completed_at", "updated_at"),
    *("expires_at", "cancel_requested_at"),
)

#: What `job_json` shows of a `Job` and what it adds: the OpenAPI `Job` schema.
JOB_WIRE = Wire(
    Job,
    ("id", "operation", "status", *_COUNTERS, "progress", *_TIMESTAMPS, "error"),
    omit_none=frozenset({"error"}),
    added={"links": ref("JobLinks"), "result_url": str},
    optional=frozenset({"result_url"}),
    refine={
        "id": {"pattern": JOB_ID_PATTERN},
        **{name: {"minimum": 0} for name in _COUNTERS},
        "progress": {"minimum": 0, "maximum": 1},
    },
)


def item_json(item: ItemRow) -> dict[str, Any]:
    body: dict[str, Any] = {"index": item.idx}
    if item.item_id is not None:
        body["id"] = item.item_id
    body["status"] = item.status
    if item.result_json is not None:
        body["result"] = jsonutil.loads(item.result_json)
    if item.error_code is not None:
        body["error"] = {"code": item.error_code, "message": item.error_message or ""}
    body["attempts"] = item.attempts
    return body


#: What `item_json` shows of an item outcome (the domain `ItemRecord`; the store's `ItemRow`
#: carries the same fields, encoded): the OpenAPI `Item` schema.
ITEM_WIRE = Wire(
    ItemRecord,
    ("index", "item_id", "status", "result", "error", "attempts"),
    rename={"item_id": "id"},
    omit_none=frozenset({"item_id", "result", "error"}),
    refine={"index": {"minimum": 0}, "attempts": {"minimum": 0}},
)


def etag(job: Job) -> str:
    """A strong validator: changes whenever the job's sequence number does."""
    return f'"{job.id[4:]}-{job.seq}"'


def poll_hint_s(job: Job) -> int | None:
    """A poll hint for a job that is still running; None once it is terminal."""
    if job.is_terminal:
        return None
    if job.started_at is None or job.processed == 0:
        return MIN_RETRY_AFTER_S
    elapsed = (job.updated_at - job.started_at).total_seconds()
    rate = job.processed / max(elapsed, 1e-3)
    eta = (job.total_items - job.processed) / rate
    # Aim for a handful of polls over the remaining time.
    return int(min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, eta / 4)))
