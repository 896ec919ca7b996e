"""The OpenAPI 3.1 document of the whole HTTP surface, built from the code it describes:
problem codes from `errors.CATALOG`, request bodies from the registered operations'
item schemas, TTL bounds from the settings. A test validates live responses against
it and checks that every mounted route is in it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import __version__
from ..config import Settings
from ..errors import CATALOG, ITEM_ERROR_CODES
from ..models import ItemStatus, JobStatus
from ..registry import Registry
from ..store.webhooks import EVENT_TYPES

Schema = dict[str, Any]

JSON = "application/json"
PROBLEM = "application/problem+json"
JOB_ID_PATTERN = "^job_[0-9a-z]{26}$"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def build_document(
    settings: Settings, registry: Registry, mounted: set[tuple[str, str]] | None = None
) -> Schema:
    """The document for one running app (its base path, operations and limits); with
    `mounted` ((METHOD, path) pairs), only the endpoints the app really serves."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bulkjobs",
            "version": __version__,
            "description": "Bulk operations as durable asynchronous jobs. Errors are RFC 9457"
            " problems; each `type` is a URI under /errors naming a code of the catalog.",
        },
        "servers": [{"url": settings.base_path or "/"}],
        "paths": only_mounted(with_auth(paths()), mounted),
        "components": {
            "schemas": schemas(settings, registry),
            "headers": HEADERS,
            "parameters": parameters(settings),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed when the server has API keys configured",
                }
            },
        },
    }


#: Paths served without an API key even when keys are configured (see web/auth.py).
PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/errors/{code}"}
)


def with_auth(all_paths: dict[str, Schema]) -> dict[str, Schema]:
    """Every non-public operation may answer 401 and accepts a bearer key (or none)."""
    for path, ops in all_paths.items():
        if path in PUBLIC_PATHS:
            continue
        for operation in ops.values():
            operation["responses"].update(problems("unauthorized"))
            operation["security"] = [{"apiKey": []}, {}]
    return all_paths


def only_mounted(
    all_paths: dict[str, Schema], mounted: set[tuple[str, str]] | None
) -> dict[str, Schema]:
    if mounted is None:
        return all_paths
    out: dict[str, Schema] = {}
    for path, ops in all_paths.items():
        kept = {m: o for m, o in ops.items() if (m.upper(), path) in mounted}
        if kept:
            out[path] = kept
    return out


def mounted_routes(routes: Iterable[Any], base: str) -> set[tuple[str, str]]:
    """(METHOD, path template without the base path) of an app's routes."""
    out = set()
    for route in routes:
        path = route.resource.canonical if route.resource is not None else ""
        out.add((route.method, path[len(base) :] or "/"))
    return out


# -- responses -----------------------------------------------------------------


def problem(*codes: str) -> Schema:
    """One status's problem response; `code` is limited to the listed catalog codes."""
    statuses = {CATALOG[c].status for c in codes}
    assert len(statuses) == 1, codes
    listing = "; ".join(f"`{c}`: {CATALOG[c].title}" for c in codes)
    schema = {"allOf": [ref("Problem"), {"properties": {"code": {"enum": list(codes)}}}]}
    return {"description": f"Problem ({listing})", "content": {PROBLEM: {"schema": schema}}}


def problems(*codes: str) -> dict[str, Schema]:
    """Problem responses keyed by status, grouping the codes that share one."""
    by_status: dict[int, list[str]] = {}
    for code in (c for c in codes if c in CATALOG):
        by_status.setdefault(CATALOG[code].status, []).append(code)
    return {str(status): problem(*group) for status, group in sorted(by_status.items())}


def json_body(
    description: str, schema: Schema, headers: tuple[str, ...] = (), media: str = JSON
) -> Schema:
    out: Schema = {"description": description, "content": {media: {"schema": schema}}}
    if headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return out


def text_body(description: str, *media: str) -> Schema:
    return {
        "description": description,
        "content": {m: {"schema": {"type": "string"}} for m in media},
    }


def op(
    op_id: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    params: tuple[str, ...] = (),
    body: Schema | None = None,
) -> Schema:
    out: Schema = {"operationId": op_id, "summary": summary, "responses": responses}
    if params:
        out["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in params]
    if body is not None:
        out["requestBody"] = body
    return out


JOB_HEADERS = ("ETag", "Retry-After", "Expires", "Cache-Control")
MISSING_JOB = ("not_found", "job_not_found", "job_deleted", "job_expired")
TENANT_LIMITS = ("rate_limited", "too_many_active_jobs", "insufficient_storage")
WEBHOOK_SUBMIT = ("webhook_url_forbidden", "webhook_url_unresolvable", "webhooks_not_configured")


# -- paths ---------------------------------------------------------------------


def paths() -> dict[str, Schema]:
    return {**job_paths(), **job_child_paths(), **webhook_paths(), **meta_paths()}


def webhook_paths() -> dict[str, Schema]:
    return {
        "/bulk-jobs/{job_id}/webhook-deliveries": {
            "get": op(
                "listWebhookDeliveries",
                "The job's webhook messages, oldest first, each with every attempt",
                {
                    "200": json_body("A page of messages", ref("DeliveryPage"), ("Link",)),
                    **problems("invalid_request", "invalid_cursor", *MISSING_JOB),
                },
                params=("JobId", "Cursor", "Limit"),
            )
        },
        "/bulk-jobs/{job_id}/webhook-deliveries/{msg_id}/redeliver": {
            "post": op(
                "redeliverWebhook",
                "Send a webhook message again now, with the same `webhook-id`",
                {
                    "202": json_body("The message", ref("Delivery")),
                    **problems(*MISSING_JOB, "webhook_message_not_found"),
                },
                params=("JobId", "MessageId"),
            )
        },
    }


def job_paths() -> dict[str, Schema]:
    created = json_body("The job", ref("Job"), ("Location", *JOB_HEADERS))
    return {
        "/bulk-jobs": {
            "post": op(
                "createJob",
                "Submit a job: validated, stored durably, worked in the background",
                {
                    "202": created,
                    "200": {**created, "description": "Replay of an Idempotency-Key"},
                    **problems(
                        "malformed_json",
                        "invalid_idempotency_key",
                        *MISSING_JOB,
                        "payload_too_large",
                        "too_many_items",
                        "unsupported_media_type",
                        "validation_error",
                        "invalid_ttl",
                        "unknown_operation",
                        "idempotency_key_reused",
                        *WEBHOOK_SUBMIT,
                        *TENANT_LIMITS,
                        "server_busy",
                        "shutting_down",
                    ),
                },
                params=("IdempotencyKey",),
                body={
                    "required": True,
                    "content": {
                        JSON: {"schema": ref("JobSubmission")},
                        "application/x-ndjson": {
                            "schema": {
                                "type": "string",
                                "description": "One item per line; `operation` and"
                                " `ttl_seconds` go in the query string",
                            }
                        },
                    },
                },
            ),
            "get": op(
                "listJobs",
                "List jobs, newest first",
                {
                    "200": json_body("A page of jobs", ref("JobPage"), ("Link",)),
                    **problems("invalid_request", "invalid_cursor"),
                },
                params=("JobStatusFilter", "OperationFilter", "Cursor", "Limit"),
            ),
        },
        "/bulk-jobs/{job_id}": {
            "get": op(
                "getJob",
                "A job; `?wait=S` long-polls for its next change",
                {
                    "200": json_body("The job", ref("Job"), JOB_HEADERS),
                    "304": {"description": "Not modified (If-None-Match)"},
                    **problems("invalid_request", *MISSING_JOB),
                },
                params=("JobId", "Wait", "IfNoneMatch"),
            ),
            "delete": op(
                "deleteJob",
                "Delete a finished job and its items; its URL then answers 410",
                {
                    "204": {"description": "Deleted"},
                    **problems(*MISSING_JOB, "job_not_terminal"),
                },
                params=("JobId",),
            ),
        },
    }


def job_child_paths() -> dict[str, Schema]:
    return {
        "/bulk-jobs/{job_id}/items": {
            "get": op(
                "listItems",
                "Per-item outcomes in request order",
                {
                    "200": json_body("A page of items", ref("ItemPage"), ("Link",)),
                    **problems("invalid_request", "invalid_cursor", *MISSING_JOB),
                },
                params=("JobId", "ItemStatusFilter", "Cursor", "Limit"),
            )
        },
        "/bulk-jobs/{job_id}/events": {
            "get": op(
                "jobEvents",
                "Progress as Server-Sent Events; ends after the terminal event",
                {
                    "200": text_body("An event stream", "text/event-stream"),
                    "204": {"description": "A resumed stream of a finished job: nothing new"},
                    **problems(
                        "invalid_request", *MISSING_JOB, "too_many_streams", "shutting_down"
                    ),
                },
                params=("JobId", "LastEventId", "LastEventIdQuery", "EventsToken"),
            )
        },
        "/bulk-jobs/{job_id}/results": {"get": results_op()},
        "/bulk-jobs/{job_id}/cancel": {
            "post": op(
                "cancelJob",
                "Cancel: 200 once cancelled, 202 while in-flight items finish",
                {
                    "200": json_body("The cancelled job", ref("Job"), JOB_HEADERS),
                    "202": json_body("The job, still winding down", ref("Job"), JOB_HEADERS),
                    **problems(*MISSING_JOB, "job_terminal", "shutting_down"),
                },
                params=("JobId",),
            )
        },
        "/bulk-jobs/{job_id}/retry": {
            "post": op(
                "retryFailures",
                "A new job of the same operation from the failed items of a finished job",
                {
                    "202": json_body("The new job", ref("Job"), ("Location", "Retry-After")),
                    **problems(
                        *MISSING_JOB,
                        "job_not_terminal",
                        "no_failed_items",
                        "unknown_operation",
                        *TENANT_LIMITS,
                        "server_busy",
                        "shutting_down",
                    ),
                },
                params=("JobId",),
            )
        },
    }


def results_op() -> Schema:
    ok = {
        "description": "One record per item, in request order (NDJSON lines or CSV rows)",
        "headers": {"Content-Disposition": {"$ref": "#/components/headers/ContentDisposition"}},
        "content": {
            "application/x-ndjson": {
                "schema": {"type": "string"},
                "x-record-schema": ref("Result"),
            },
            "text/csv": {"schema": {"type": "string"}},
        },
    }
    return op(
        "downloadResults",
        "Download every outcome as NDJSON or CSV (`?format=` or `Accept`)",
        {
            "200": ok,
            **problems(
                "unsupported_format",
                "invalid_status_filter",
                "invalid_request",
                *MISSING_JOB,
                "not_acceptable",
                "job_not_terminal",
            ),
        },
        params=("JobId", "Format", "ResultStatusFilter", "Partial", "Accept"),
    )


def meta_paths() -> dict[str, Schema]:
    return {
        "/operations": {
            "get": op(
                "listOperations",
                "Registered operations: item schema, limits, item error codes",
                {"200": json_body("Operations", ref("OperationList"))},
            )
        },
        "/openapi.json": {
            "get": op(
                "openapi", "This document", {"200": json_body("OpenAPI 3.1", {"type": "object"})}
            )
        },
        "/errors": {
            "get": op(
                "listErrorTypes",
                "The problem catalog",
                {"200": json_body("Every problem type", ref("ErrorTypeList"))},
            )
        },
        "/errors/{code}": {
            "get": op(
                "getErrorType",
                "A problem type's description (HTML, or JSON when asked for)",
                {
                    "200": {
                        "description": "The problem type",
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            JSON: {"schema": ref("ErrorType")},
                        },
                    },
                    **problems("not_found"),
                },
                params=("ErrorCode",),
            )
        },
        **ops_paths(),
    }


def ops_paths() -> dict[str, Schema]:
    return {
        "/healthz": {
            "get": op("healthz", "Liveness", {"200": json_body("Alive", {"type": "object"})})
        },
        "/readyz": {
            "get": op(
                "readyz",
                "Readiness: store reachable, tasks alive, not draining",
                {
                    "200": json_body("Ready", ref("Readiness")),
                    "503": json_body("Not ready", ref("Readiness")),
                },
            )
        },
        "/metrics": {
            "get": op(
                "metrics", "Prometheus text exposition", {"200": text_body("Metrics", "text/plain")}
            )
        },
        "/": {"get": op("dashboard", "Dashboard page", {"200": text_body("HTML", "text/html")})},
        "/dashboard/{name}": {
            "get": op(
                "dashboardAsset",
                "The dashboard's stylesheet and script",
                {
                    "200": text_body("The asset", "text/css", "text/javascript"),
                    **problems("not_found"),
                },
                params=("AssetName",),
            )
        },
    }


# -- parameters and headers ------------------------------------------------------


def _param(name: str, where: str, schema: Schema, description: str, **extra: Any) -> Schema:
    return {"name": name, "in": where, "schema": schema, "description": description, **extra}


def _enum(values: list[str]) -> Schema:
    return {"type": "string", "enum": values}


def parameters(settings: Settings) -> dict[str, Schema]:
    return {**PARAMETERS, "Wait": _param("wait", "query", _wait(settings), "Long-poll seconds")}


def _wait(settings: Settings) -> Schema:
    return {"type": "number", "minimum": 0, "maximum": settings.long_poll_max_s}


PARAMETERS: dict[str, Schema] = {
    "JobId": _param(
        "job_id", "path", {"type": "string", "pattern": JOB_ID_PATTERN}, "Job id", required=True
    ),
    "ErrorCode": _param("code", "path", {"type": "string"}, "Problem code", required=True),
    "AssetName": _param("name", "path", {"type": "string"}, "Asset file name", required=True),
    "MessageId": _param("msg_id", "path", {"type": "string"}, "Webhook message id", required=True),
    "JobStatusFilter": _param(
        "status", "query", _enum([s.value for s in JobStatus]), "Only jobs in this status"
    ),
    "ItemStatusFilter": _param(
        "status", "query", _enum([s.value for s in ItemStatus]), "Only items in this status"
    ),
    "ResultStatusFilter": _param(
        "status", "query", _enum([s.value for s in ItemStatus]), "Only items in this status"
    ),
    "OperationFilter": _param("operation", "query", {"type": "string"}, "Only this operation"),
    "Cursor": _param("cursor", "query", {"type": "string"}, "From `links.next` of a page"),
    "Limit": _param(
        "limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size"
    ),
    "Format": _param("format", "query", _enum(["ndjson", "csv"]), "Download format"),
    "Partial": _param(
        "partial", "query", _enum(["true", "false"]), "Allow results of an unfinished job"
    ),
    "Accept": _param("Accept", "header", {"type": "string"}, "Alternative to `format`"),
    "EventsToken": _param(
        "token", "query", {"type": "string"}, "Signed token for this job's stream (no header)"
    ),
    "IfNoneMatch": _param("If-None-Match", "header", {"type": "string"}, "A previous ETag"),
    "LastEventId": _param(
        "Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]+$"}, "Resume after"
    ),
    "LastEventIdQuery": _param(
        "last_event_id", "query", {"type": "string", "pattern": "^[0-9]+$"}, "Resume after"
    ),
    "IdempotencyKey": _param(
        "Idempotency-Key",
        "header",
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
        "Makes a retried submit return the original job (kept at least 24 h)",
    ),
}

HEADERS: dict[str, Schema] = {
    name: {"schema": {"type": "string"}, "description": text}
    for name, text in {
        "Location": "URL of the job",
        "Retry-After": "Seconds until a poll is worthwhile",
        "ETag": "Changes whenever the job does",
        "Expires": "When a finished job will be removed (HTTP date)",
        "Cache-Control": "Caching directives",
        "Link": 'The next page, as `<url>; rel="next"`',
        "ContentDisposition": "Suggested file name of the download",
    }.items()
}


# -- schemas -------------------------------------------------------------------


def schemas(settings: Settings, registry: Registry) -> dict[str, Schema]:
    return {
        **job_schemas(),
        **item_schemas(),
        "JobSubmission": submission_schema(settings, registry),
        **webhook_schemas(),
        **meta_schemas(),
    }


def job_schemas() -> dict[str, Schema]:
    ts = {"type": "string", "format": "date-time"}
    count = {"type": "integer", "minimum": 0}
    link_names = ("self", "events", "items", "failures", "results", "cancel", "retry")
    links = {
        "type": "object",
        "required": list(link_names),
        "properties": {n: {"type": "string"} for n in (*link_names, "retry_of", "retried_by")},
        "additionalProperties": False,
    }
    job = {
        "type": "object",
        "required": ["id", "operation", "status", "total_items", "progress", "links"],
        "properties": {
            "id": {"type": "string", "pattern": JOB_ID_PATTERN},
            "operation": {"type": "string"},
            "status": _enum([s.value for s in JobStatus]),
            **{k: count for k in ("total_items", "processed", "succeeded", "failed")},
            "cancelled": count,
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "created_at": ts,
            **{
                k: nullable(ts)
                for k in (
                    "started_at",
                    "completed_at",
                    "expires_at",
                    "cancel_requested_at",
                )
            },
            "updated_at": ts,
            "links": ref("JobLinks"),
            "result_url": {"type": "string"},
            "error": ref("OutcomeError"),
        },
        "additionalProperties": False,
    }
    page = _page(ref("Job"))
    return {"Job": job, "JobLinks": links, "JobPage": page}


def _page(item: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["data", "links"],
        "properties": {
            "data": {"type": "array", "items": item},
            "links": {
                "type": "object",
                "required": ["next"],
                "properties": {"next": nullable({"type": "string"})},
            },
        },
        "additionalProperties": False,
    }


def item_schemas() -> dict[str, Schema]:
    error = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        "additionalProperties": False,
    }
    base = {
        "index": {"type": "integer", "minimum": 0},
        "id": {"type": "string"},
        "status": _enum([s.value for s in ItemStatus]),
        "result": {},
        "error": ref("OutcomeError"),
    }
    item = {
        "type": "object",
        "required": ["index", "status", "attempts"],
        "properties": {**base, "attempts": {"type": "integer", "minimum": 0}},
        "additionalProperties": False,
    }
    result = {
        "type": "object",
        "description": "One NDJSON line of a result download",
        "required": ["index", "status"],
        "properties": base,
        "additionalProperties": False,
    }
    return {"OutcomeError": error, "Item": item, "ItemPage": _page(ref("Item")), "Result": result}


def submission_schema(settings: Settings, registry: Registry) -> Schema:
    """One alternative per registered operation, each with its own item schema."""
    ttl = {"type": "integer", "minimum": settings.min_ttl_s, "maximum": settings.max_ttl_s}
    variants = [
        {
            "type": "object",
            "title": o.name,
            "required": ["operation", "items"],
            "properties": {
                "operation": {"const": o.name},
                "items": {"type": "array", "minItems": 1, "items": o.schema},
                "ttl_seconds": ttl,
                "webhook": ref("WebhookSubscription"),
            },
            "additionalProperties": False,
        }
        for o in registry.operations
    ]
    return {"oneOf": variants} if variants else {"type": "object"}


def webhook_schemas() -> dict[str, Schema]:
    ts = nullable({"type": "string", "format": "date-time"})
    subscription = {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string"},
            "events": {"type": "array", "minItems": 1, "items": _enum(list(EVENT_TYPES))},
        },
        "additionalProperties": False,
    }
    attempt = {
        "type": "object",
        "properties": {
            "at": ts,
            "status_code": nullable({"type": "integer"}),
            "error": nullable({"type": "string"}),
            "duration_ms": nullable({"type": "number"}),
            "next_attempt_at": ts,
        },
    }
    delivery = {
        "type": "object",
        "required": ["id", "type", "status", "attempts", "links"],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string"},
            "status": {"type": "string"},
            "created_at": ts,
            "delivered_at": ts,
            "next_attempt_at": ts,
            "attempt_count": {"type": "integer"},
            "attempts": {"type": "array", "items": attempt},
            "links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    page = _page(ref("Delivery"))
    page["required"] = ["webhook", "data", "links"]
    page["properties"] = {**page["properties"], "webhook": nullable({"type": "object"})}
    return {"WebhookSubscription": subscription, "Delivery": delivery, "DeliveryPage": page}


def meta_schemas() -> dict[str, Schema]:
    problem_schema = {
        "type": "object",
        "description": "RFC 9457 problem details; extra members depend on the code",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": _enum(list(CATALOG)),
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["pointer", "detail"],
                    "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
    }
    error_type = {
        "type": "object",
        "required": ["code", "status", "title", "description", "type"],
        "properties": {
            "code": _enum(list(CATALOG)),
            "status": {"type": "integer"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "type": {"type": "string"},
        },
        "additionalProperties": False,
    }
    return {
        "Problem": problem_schema,
        "ErrorType": error_type,
        "ErrorTypeList": {
            "type": "object",
            "required": ["data", "item_error_codes"],
            "properties": {
                "data": {"type": "array", "items": ref("ErrorType")},
                "item_error_codes": {
                    "type": "object",
                    "description": "Codes the framework gives failed items: "
                    + ", ".join(ITEM_ERROR_CODES),
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "Operation": operation_schema(),
        "OperationList": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": ref("Operation")}},
        },
        "Readiness": {
            "type": "object",
            "required": ["ready"],
            "properties": {"ready": {"type": "boolean"}},
        },
    }


def operation_schema() -> Schema:
    return {
        "type": "object",
        "required": ["name", "item_schema", "limits", "item_error_codes"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "item_schema": {"type": "object"},
            "limits": {"type": "object"},
            "item_error_codes": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
