"""One small hierarchy of domain errors and the catalog of every problem code.

Core code raises `BulkJobsError` subclasses; the web layer maps them to RFC 9457
problems in one place. The catalog is the single source of truth for codes, their
HTTP status and their meaning (the README table is generated from it).
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class ProblemType:
    code: str
    status: int
    title: str
    description: str


CATALOG: dict[str, ProblemType] = {
    p.code: p
    for p in (
        ProblemType("malformed_json", 400, "Malformed JSON", "The request body is not valid JSON."),
        ProblemType(
            "invalid_request",
            400,
            "Invalid request",
            "A query parameter or header has a value the endpoint does not accept.",
        ),
        ProblemType(
            "invalid_cursor", 400, "Invalid cursor", "The pagination cursor is malformed or stale."
        ),
        ProblemType("not_found", 404, "Not found", "No such resource."),
        ProblemType("job_not_found", 404, "Job not found", "No job with this id exists."),
        ProblemType(
            "method_not_allowed", 405, "Method not allowed", "The resource does not allow it."
        ),
        ProblemType(
            "job_terminal",
            409,
            "Job already finished",
            "The job is completed, failed or cancelled; it can no longer be changed.",
        ),
        ProblemType(
            "job_not_terminal",
            409,
            "Job still active",
            "The job is pending or running; deleting it, retrying its failures or downloading"
            " its results needs a finished job (results also accept `partial=true`).",
        ),
        ProblemType(
            "no_failed_items",
            409,
            "Nothing to retry",
            "The job has no failed items, so a retry job would be empty.",
        ),
        ProblemType(
            "job_deleted",
            410,
            "Job deleted",
            "The job was deleted (see `deleted_at`); its URL answers 410 for a while, then 404.",
        ),
        ProblemType(
            "job_expired",
            410,
            "Job expired",
            "The job outlived its retention period and was removed (see `deleted_at`).",
        ),
        ProblemType(
            "unsupported_format",
            400,
            "Unsupported result format",
            "`format` must be `ndjson` or `csv`.",
        ),
        ProblemType(
            "not_acceptable",
            406,
            "Not acceptable",
            "The `Accept` header names no format this resource offers"
            " (`application/x-ndjson`, `text/csv`).",
        ),
        ProblemType(
            "invalid_status_filter",
            400,
            "Invalid status filter",
            "`status` must be one of `succeeded`, `failed`, `cancelled`, `pending`.",
        ),
        ProblemType(
            "invalid_idempotency_key",
            400,
            "Invalid Idempotency-Key",
            "The `Idempotency-Key` header must be 1 to 255 printable ASCII characters.",
        ),
        ProblemType(
            "idempotency_key_reused",
            422,
            "Idempotency-Key reused",
            "This `Idempotency-Key` was already used with a different request body.",
        ),
        ProblemType(
            "payload_too_large",
            413,
            "Request body too large",
            "The request body exceeds the server's configured size limit.",
        ),
        ProblemType(
            "invalid_ttl",
            422,
            "Invalid ttl_seconds",
            "`ttl_seconds` must be a whole number of seconds within the server's bounds.",
        ),
        ProblemType(
            "too_many_items",
            413,
            "Too many items",
            "The job has more items than the server's configured maximum.",
        ),
        ProblemType(
            "unsupported_media_type",
            415,
            "Unsupported media type",
            "Send the job as `application/json` or `application/x-ndjson`.",
        ),
        ProblemType(
            "unsupported_content_encoding",
            415,
            "Unsupported content encoding",
            "Send the job uncompressed, or gzip-compressed when the server accepts it"
            " (`--accept-gzip`); the response's `Accept-Encoding` says which.",
        ),
        ProblemType(
            "too_many_uploads",
            429,
            "Too many uploads of yours",
            "The caller's tenant has as many submissions being received as allowed"
            " (`--max-uploads-per-tenant`); retry after `Retry-After`.",
        ),
        ProblemType(
            "validation_error",
            422,
            "Validation failed",
            "The request is well-formed JSON but its content is invalid; see `errors`.",
        ),
        ProblemType(
            "unknown_operation",
            422,
            "Unknown operation",
            "The `operation` is missing or not registered; see GET /operations.",
        ),
        ProblemType(
            "server_busy",
            503,
            "Server busy",
            "Too many items are waiting, or too many uploads are being received; retry"
            " after the time in `Retry-After`.",
        ),
        ProblemType(
            "too_many_streams",
            503,
            "Too many event streams",
            "The server's cap on open event streams is reached; retry after `Retry-After`"
            " or poll the job instead.",
        ),
        ProblemType(
            "too_many_open_streams",
            429,
            "Too many event streams of yours",
            "The caller's tenant has as many event streams open as allowed"
            " (`--sse-max-streams-per-tenant`); close one (the tenant-wide `GET /events`"
            " follows every job in one stream) or poll, and retry after `Retry-After`.",
        ),
        ProblemType(
            "shutting_down",
            503,
            "Shutting down",
            "The server is draining and takes no new jobs; retry against another instance.",
        ),
        ProblemType(
            "service_degraded",
            503,
            "Service degraded",
            "A background loop of this server died, so accepted work could not run; the"
            " server takes no new jobs until it is restarted. `/readyz` names the loop.",
        ),
        ProblemType(
            "store_unavailable",
            503,
            "Store unavailable",
            "The database did not answer (restarting, unreachable, or out of connections)."
            " Retry after `Retry-After`: a change cut off by the outage is either whole or"
            " absent, and a submit retried with its `Idempotency-Key` is stored once."
            " `/readyz` answers 503 meanwhile.",
        ),
        ProblemType(
            "webhook_message_not_found",
            404,
            "Webhook message not found",
            "The job has no webhook message with this id; see its webhook-deliveries.",
        ),
        ProblemType(
            "webhook_url_forbidden",
            422,
            "Webhook target not allowed",
            "The webhook URL resolves to a loopback, private, link-local, multicast or other"
            " non-public address, which this server does not call (the detail does not say"
            " which), or uses a port outside `--webhook-allowed-ports`.",
        ),
        ProblemType(
            "webhook_url_unresolvable",
            422,
            "Webhook host unknown",
            "The webhook URL's host name does not resolve.",
        ),
        ProblemType(
            "webhooks_not_configured",
            422,
            "Webhooks not configured",
            "This server has no webhook signing secret (BULKJOBS_WEBHOOK_SECRETS), so it"
            " cannot send signed webhooks; follow the job by polling or SSE.",
        ),
        ProblemType(
            "unauthorized",
            401,
            "Unauthorized",
            "A valid API key is required: send `Authorization: Bearer <key>`.",
        ),
        ProblemType(
            "rate_limited",
            429,
            "Too many submits",
            "The tenant submits faster than its configured rate; retry after `Retry-After`.",
        ),
        ProblemType(
            "too_many_active_jobs",
            429,
            "Too many active jobs",
            "The tenant has as many pending or running jobs as allowed; wait for some to finish.",
        ),
        ProblemType(
            "tenant_backlog_full",
            429,
            "Too many items waiting",
            "The tenant's active jobs have as many items waiting as its quota allows"
            " (`--max-pending-items-per-tenant`); retry after `Retry-After`.",
        ),
        ProblemType(
            "tenant_storage_full",
            507,
            "Storage quota reached",
            "The tenant's stored jobs hold as many items as its quota allows"
            " (`--max-stored-items-per-tenant`); delete finished jobs or let them expire.",
        ),
        ProblemType(
            "request_timeout",
            408,
            "Request timeout",
            "The request body arrived too slowly (see `--body-timeout-s` and"
            " `--body-min-rate-bytes-s`); the connection is closed.",
        ),
        ProblemType(
            "host_not_allowed",
            403,
            "Host not allowed",
            "Without API keys the server answers only loopback `Host` names (a guard against"
            " DNS rebinding); list others with `--allowed-hosts`.",
        ),
        ProblemType(
            "cross_site_request",
            403,
            "Cross-site request refused",
            "Without API keys the server refuses POST and DELETE requests that a browser marks"
            " as coming from another site (`Origin`, `Sec-Fetch-Site: cross-site`).",
        ),
        ProblemType(
            "insufficient_storage",
            507,
            "Insufficient storage",
            "Free disk space is below the configured threshold; new jobs are refused.",
        ),
        ProblemType(
            "internal_error", 500, "Internal error", "An unexpected error; it has been logged."
        ),
    )
}

#: Codes that a handler's failed item may carry when the framework itself fails it.
ITEM_ERROR_CODES: dict[str, str] = {
    "internal_error": "The handler raised an unexpected exception.",
    "timeout": "The handler did not finish within the operation's per-item timeout.",
    "invalid_item": "The stored item no longer matches the operation's item type.",
    "retries_exhausted": "A retryable error persisted through every attempt.",
}


class BulkJobsError(Exception):
    """A domain error with a catalog code, a human detail and optional extra members."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if code not in CATALOG:
            raise ValueError(f"unknown problem code {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.headers = headers or {}
        self.extra = extra

    @property
    def problem_type(self) -> ProblemType:
        return CATALOG[self.code]


def job_not_found(job_id: str) -> BulkJobsError:
    return BulkJobsError("job_not_found", f"No job {job_id!r}.")


def catalog_markdown() -> str:
    """The error catalog as a Markdown table (for the README)."""
    lines = ["| code | HTTP | meaning |", "|---|---|---|"]
    for p in CATALOG.values():
        lines.append(f"| `{p.code}` | {p.status} | {p.description} |")
    return "\n".join(lines)
