"""The public paths of the HTTP API, defined once: routes, links, the OpenAPI document
and the client all build from these (relative to the configured base path)."""

from __future__ import annotations

from urllib.parse import quote

JOBS = "/bulk-jobs"
JOB = JOBS + "/{job_id}"
JOB_ITEMS = JOB + "/items"
JOB_EVENTS = JOB + "/events"
JOB_RESULTS = JOB + "/results"
JOB_CANCEL = JOB + "/cancel"
JOB_RETRY = JOB + "/retry"
JOB_DELIVERIES = JOB + "/webhook-deliveries"
JOB_REDELIVER = JOB_DELIVERIES + "/{msg_id}/redeliver"
EVENTS = "/events"  # every job of the caller; beside /bulk-jobs, so no job id can name it
OVERVIEW = "/overview"
OPERATIONS = "/operations"


def job_path(template: str, job_id: str, base: str = "") -> str:
    """A job path template filled in: `job_path(JOB_ITEMS, "job_x")`."""
    return base + template.format(job_id=quote(job_id, safe=""))
