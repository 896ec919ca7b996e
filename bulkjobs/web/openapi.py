"""The OpenAPI 3.1 document of the whole HTTP surface, built from the code it describes:
component schemas from the attrs models through the representation functions' `Wire`s,
problem codes from `errors.CATALOG`, request bodies from the registered operations'
item schemas, TTL bounds from the settings. A test validates live responses against
it and checks that every mounted route is in it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from .. import __version__
from .. import paths as api_paths
from ..config import Settings
from ..errors import CATALOG, ITEM_ERROR_CODES, ProblemType
from ..itemtypes import enum_schema, item_schema
from ..models import ItemError, ItemStatus, JobStatus
from ..outbox import EVENT_TYPES, DeliveryAttempt, Message, WebhookSubscription
from ..registry import OperationOptions, Registry
from .representation import ITEM_WIRE, JOB_ID_PATTERN, JOB_LINKS, JOB_WIRE, LINEAGE_LINKS
from .schemas import STRING, Schema, Wire, closed, nullable, open_object, page, ref, wire_schema

JSON = "application/json"
PROBLEM = "application/problem+json"


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
        "paths": only_mounted(with_open_mode_guards(with_auth(paths())), mounted),
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


def with_open_mode_guards(all_paths: dict[str, Schema]) -> dict[str, Schema]:
    """Without API keys every operation may refuse a foreign `Host`, and state-changing
    ones a cross-site request (see web/origin.py); both are 403."""
    for ops in all_paths.values():
        for method, operation in ops.items():
            codes = ["host_not_allowed"]
            if method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
                codes.append("cross_site_request")
            assert "403" not in operation["responses"], "merge the 403 codes"
            operation["responses"].update(problems(*codes))
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


def body(description: str, schema: Schema, headers: str = "", media: str = JSON) -> Schema:
    """A response with one media type; `headers` names components, space-separated."""
    out: Schema = {"description": description, "content": {media: {"schema": schema}}}
    if headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers.split()}
    return out


def text(description: str, *media: str) -> Schema:
    return {"description": description, "content": {m: {"schema": STRING} for m in media}}


def op(op_id: str, summary: str, ok: Schema, errors: str = "", params: str = "") -> Schema:
    """One operation; `errors` (catalog codes) and `params` (component names) are
    space-separated."""
    out: Schema = {"operationId": op_id, "summary": summary, "responses": dict(ok)}
    out["responses"].update(problems(*errors.split()))
    if params:
        out["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in params.split()]
    return out


def paths() -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for route, spec in endpoints().items():
        method, path = route.split()
        out.setdefault(path, {})[method.lower()] = op(*spec)
    out[api_paths.JOBS]["post"]["requestBody"] = SUBMIT_BODY
    return out


JOB_HEADERS = "ETag Retry-After Expires Cache-Control"
MISSING = "not_found job_not_found job_deleted job_expired"
BUSY = (
    "rate_limited too_many_active_jobs insufficient_storage server_busy shutting_down"
    " service_degraded tenant_backlog_full tenant_storage_full"
)
SUBMIT_ERRORS = (
    f"malformed_json invalid_idempotency_key {MISSING} payload_too_large too_many_items"
    " unsupported_media_type unsupported_content_encoding validation_error invalid_ttl"
    " unknown_operation too_many_uploads idempotency_key_reused webhook_url_forbidden"
    " webhook_url_unresolvable"
    f" webhooks_not_configured request_timeout {BUSY}"
)
NDJSON_BODY = "One item per line; `operation` and `ttl_seconds` go in the query string"
SUBMIT_BODY = {
    "required": True,
    "content": {
        JSON: {"schema": ref("JobSubmission")},
        "application/x-ndjson": {"schema": {"type": "string", "description": NDJSON_BODY}},
    },
}
RESULTS = {
    "description": "One record per item, in request order (NDJSON lines or CSV rows)",
    "headers": {"Content-Disposition": {"$ref": "#/components/headers/ContentDisposition"}},
    "content": {
        "application/x-ndjson": {"schema": {"type": "string"}, "x-record-schema": ref("Result")},
        "text/csv": {"schema": {"type": "string"}},
    },
}


#: `GET /events`: before OpenAPI 3.2 (`itemSchema`), an event stream's `schema`
#: describes each event (as schemathesis reads it); `data` is JSON.
TENANT_STREAM = {
    "description": "An event stream that ends only when the server shuts down",
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "properties": {
                    "event": {"enum": ["snapshot", "created", "progress", "status"]},
                    "id": {"type": "string", "pattern": "^[0-9A-Za-z]{1,16}-[0-9]+$"},
                    "data": {"type": "string", "contentMediaType": "application/json"},
                },
            }
        }
    },
}


def endpoints() -> dict[str, tuple[Any, ...]]:
    """ "METHOD /path": (operationId, summary, responses, problem codes, parameters)."""
    job = body("The job", ref("Job"), JOB_HEADERS)
    created = body("The job", ref("Job"), f"Location {JOB_HEADERS}")
    replay = {**created, "description": "Replay of an Idempotency-Key"}
    error_type = text("The problem type", "text/html")
    error_type["content"][JSON] = {"schema": ref("ErrorType")}
    # fmt: off
    return {
        f"POST {api_paths.JOBS}": ("createJob",
            "Submit a job: validated, stored durably, worked in the background",
            {"202": created, "200": replay}, SUBMIT_ERRORS, "IdempotencyKey"),
        f"GET {api_paths.JOBS}": ("listJobs", "List jobs, newest first",
            {"200": body("A page of jobs", ref("JobPage"), "Link")},
            "invalid_request invalid_cursor", "JobStatusFilter OperationFilter Cursor Limit"),
        f"GET {api_paths.JOB}": ("getJob", "A job; `?wait=S` long-polls for its next change",
            {"200": job, "304": {"description": "Not modified (If-None-Match)"}},
            f"invalid_request {MISSING}", "JobId Wait IfNoneMatch"),
        f"DELETE {api_paths.JOB}": ("deleteJob",
            "Delete a finished job and its items; its URL then answers 410",
            {"204": {"description": "Deleted"}}, f"{MISSING} job_not_terminal", "JobId"),
        f"GET {api_paths.JOB_ITEMS}": ("listItems", "Per-item outcomes in request order",
            {"200": body("A page of items", ref("ItemPage"), "Link")},
            f"invalid_request invalid_cursor {MISSING}", "JobId ItemStatusFilter Cursor Limit"),
        f"GET {api_paths.JOB_EVENTS}": ("jobEvents",
            "Progress as Server-Sent Events; ends after the terminal event",
            {"200": text("An event stream", "text/event-stream"),
             "204": {"description": "A resumed stream of a finished job: nothing new"}},
            f"invalid_request {MISSING} too_many_streams too_many_open_streams shutting_down",
            "JobId LastEventId LastEventIdQuery EventsToken"),
        f"GET {api_paths.EVENTS}": ("tenantEvents",
            "Every job of the caller's tenant as Server-Sent Events: a `snapshot` of the"
            " active jobs (or the missed events on resume), then `created`, `progress` and"
            " `status` events; ids are `<epoch>-<n>`",
            {"200": TENANT_STREAM},
            "invalid_request too_many_streams too_many_open_streams shutting_down",
            "TenantLastEventId TenantLastEventIdQuery TenantEventsToken"),
        f"GET {api_paths.OVERVIEW}": ("overview",
            "The caller's own backlog, running jobs, items/s and open streams",
            {"200": body("The caller's load", ref("Overview"))}),
        f"GET {api_paths.JOB_RESULTS}": ("downloadResults",
            "Download every outcome as NDJSON or CSV (`?format=` or `Accept`)", {"200": RESULTS},
            f"unsupported_format invalid_status_filter invalid_request {MISSING} not_acceptable"
            " job_not_terminal", "JobId Format ResultStatusFilter Partial Accept"),
        f"POST {api_paths.JOB_CANCEL}": ("cancelJob",
            "Cancel: 200 once cancelled, 202 while in-flight items finish",
            {"200": {**job, "description": "The cancelled job"},
             "202": {**job, "description": "The job, still winding down"}},
            f"{MISSING} job_terminal shutting_down", "JobId"),
        f"POST {api_paths.JOB_RETRY}": ("retryFailures",
            "A new job of the same operation from the failed items of a finished job",
            {"202": body("The new job", ref("Job"), "Location Retry-After")},
            f"{MISSING} job_not_terminal no_failed_items unknown_operation {BUSY}", "JobId"),
        f"GET {api_paths.JOB_DELIVERIES}": ("listWebhookDeliveries",
            "The job's webhook messages, oldest first, each with every attempt",
            {"200": body("A page of messages", ref("DeliveryPage"), "Link")},
            f"invalid_request invalid_cursor {MISSING}", "JobId Cursor Limit"),
        f"POST {api_paths.JOB_REDELIVER}": ("redeliverWebhook",
            "Send a webhook message again now, with the same `webhook-id`",
            {"202": body("The message", ref("Delivery"))},
            f"{MISSING} webhook_message_not_found", "JobId MessageId"),
        f"GET {api_paths.OPERATIONS}": ("listOperations",
            "Registered operations: item schema, limits, item error codes",
            {"200": body("Operations", ref("OperationList"))}),
        "GET /openapi.json": ("openapi", "This document", {"200": body("OpenAPI 3.1", OBJECT)}),
        "GET /errors": ("listErrorTypes", "The problem catalog",
            {"200": body("Every problem type", ref("ErrorTypeList"))}),
        "GET /errors/{code}": ("getErrorType",
            "A problem type's description (HTML, or JSON when asked for)",
            {"200": error_type}, "not_found", "ErrorCode"),
        "GET /healthz": ("healthz", "Liveness", {"200": body("Alive", OBJECT)}),
        "GET /readyz": ("readyz", "Readiness: store reachable, tasks alive, not draining",
            {"200": body("Ready", ref("Readiness")), "503": body("Not ready", ref("Readiness"))}),
        "GET /metrics": ("metrics", "Prometheus text exposition",
            {"200": text("Metrics", "text/plain")}),
        "GET /": ("dashboard", "Dashboard page", {"200": text("HTML", "text/html")}),
        "GET /dashboard/{name}": ("dashboardAsset", "The dashboard's stylesheet, script and icon",
            {"200": text("The asset", "text/css", "text/javascript", "image/svg+xml")},
            "not_found", "AssetName"),
    }
    # fmt: on


# -- parameters and headers ------------------------------------------------------


def _param(name: str, where: str, schema: Schema, description: str) -> Schema:
    out = {"name": name, "in": where, "schema": schema, "description": description}
    return {**out, "required": True} if where == "path" else out


def parameters(settings: Settings) -> dict[str, Schema]:
    wait = {"type": "number", "minimum": 0, "maximum": settings.long_poll_max_s}
    return {**PARAMETERS, "Wait": _param("wait", "query", wait, "Long-poll seconds")}


OBJECT: Schema = {"type": "object"}
DIGITS: Schema = {"type": "string", "pattern": "^[0-9]+$"}
JOB_STATUS = enum_schema([s.value for s in JobStatus])
ITEM_STATUS = enum_schema([s.value for s in ItemStatus])
TENANT_EVENT_ID: Schema = {"type": "string", "pattern": "^[0-9A-Za-z]{1,16}-[0-9]+$"}
IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"}
# fmt: off
PARAMETERS: dict[str, Schema] = {
    key: _param(*spec)
    for key, spec in {
        "JobId": ("job_id", "path", {"type": "string", "pattern": JOB_ID_PATTERN}, "Job id"),
        "ErrorCode": ("code", "path", STRING, "Problem code"),
        "AssetName": ("name", "path", STRING, "Asset file name"),
        "MessageId": ("msg_id", "path", STRING, "Webhook message id"),
        "JobStatusFilter": ("status", "query", JOB_STATUS, "Only jobs in this status"),
        "ItemStatusFilter": ("status", "query", ITEM_STATUS, "Only items in this status"),
        "ResultStatusFilter": ("status", "query", ITEM_STATUS, "Only items in this status"),
        "OperationFilter": ("operation", "query", STRING, "Only this operation"),
        "Cursor": ("cursor", "query", STRING, "From `links.next` of a page"),
        "Limit": ("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000},
                  "Page size"),
        "Format": ("format", "query", enum_schema(["ndjson", "csv"]), "Download format"),
        "Partial": ("partial", "query", enum_schema(["true", "false"]),
                    "Allow results of an unfinished job"),
        "Accept": ("Accept", "header", STRING, "Alternative to `format`"),
        "EventsToken": ("token", "query", STRING, "Signed token for this job's stream (no header)"),
        "TenantEventsToken": ("token", "query", STRING,
                              "Signed token for the tenant's stream (`links.events` of"
                              " GET /overview)"),
        "TenantLastEventId": ("Last-Event-ID", "header", TENANT_EVENT_ID, "Resume after"),
        "TenantLastEventIdQuery": ("last_event_id", "query", TENANT_EVENT_ID, "Resume after"),
        "IfNoneMatch": ("If-None-Match", "header", STRING, "A previous ETag"),
        "LastEventId": ("Last-Event-ID", "header", DIGITS, "Resume after"),
        "LastEventIdQuery": ("last_event_id", "query", DIGITS, "Resume after"),
        "IdempotencyKey": ("Idempotency-Key", "header", IDEMPOTENCY_KEY,
                           "Makes a retried submit return the original job (kept at least 24 h)"),
    }.items()
}
# fmt: on

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

# The shapes of web/webhooks.py (`attempt_json`, `delivery_json`, `subscription_json`)
# and web/docs.py (`error_type_json`); each belongs next to its function.
ATTEMPT_WIRE = Wire(
    DeliveryAttempt, ("at", "status_code", "error", "duration_ms", "next_attempt_at")
)
DELIVERY_WIRE = Wire(
    Message,
    ("id", "type", "status", "created_at", "delivered_at", "next_attempt_at", "attempts"),
    rename={"attempts": "attempt_count"},
    added={
        "attempts": {"type": "array", "items": ref("DeliveryAttempt")},
        "links": {"type": "object", "additionalProperties": {"type": "string"}},
    },
)
SUBSCRIPTION_WIRE = Wire(
    WebhookSubscription, ("url", "events", "gone_at"), added={"status": Literal["active", "gone"]}
)
ERROR_TYPE_WIRE = Wire(
    ProblemType,
    ("code", "status", "title", "description"),
    added={"type": str},
    refine={"code": {"enum": list(CATALOG)}},
)
# registry.Operation.describe()["limits"]
LIMITS_WIRE = Wire(
    OperationOptions,
    ("batch_size", "concurrency", "timeout_s", "max_items", "max_failed_ratio", "retry"),
)


def schemas(settings: Settings, registry: Registry) -> dict[str, Schema]:
    """Every component schema: derived from the models wherever the wire shows one."""
    result = wire_schema(ITEM_WIRE.without("attempts"))
    return {
        "Job": wire_schema(JOB_WIRE),
        "JobLinks": closed({n: STRING for n in (*JOB_LINKS, *LINEAGE_LINKS)}, *JOB_LINKS),
        "JobPage": page(ref("Job")),
        "OutcomeError": item_schema(ItemError),
        "Item": wire_schema(ITEM_WIRE),
        "ItemPage": page(ref("Item")),
        "Result": {"description": "One NDJSON line of a result download", **result},
        "JobSubmission": submission_schema(settings, registry),
        **webhook_schemas(),
        **meta_schemas(),
    }


def submission_schema(settings: Settings, registry: Registry) -> Schema:
    """One alternative per registered operation, each with its own item schema."""
    ttl = {"type": "integer", "minimum": settings.min_ttl_s, "maximum": settings.max_ttl_s}
    variants = [
        {
            "title": o.name,
            **closed(
                {
                    "operation": {"const": o.name},
                    "items": {"type": "array", "minItems": 1, "items": o.schema},
                    "ttl_seconds": ttl,
                    "webhook": ref("WebhookSubscription"),
                },
                "operation",
                "items",
            ),
        }
        for o in registry.operations
    ]
    return {"oneOf": variants} if variants else OBJECT


def webhook_schemas() -> dict[str, Schema]:
    events = {"type": "array", "minItems": 1, "items": enum_schema(list(EVENT_TYPES))}
    return {
        # parsed by hand in service/webhooks/subscription.py
        "WebhookSubscription": closed({"url": STRING, "events": events}, "url"),
        "DeliveryAttempt": wire_schema(ATTEMPT_WIRE),
        "Delivery": wire_schema(DELIVERY_WIRE),
        "WebhookState": wire_schema(SUBSCRIPTION_WIRE),
        "DeliveryPage": page(ref("Delivery"), webhook=nullable(ref("WebhookState"))),
    }


def overview_schema() -> Schema:
    """web/overview.py: the caller's own load, never another tenant's."""
    count = {"type": "integer", "minimum": 0}
    links = closed({"events": STRING}, "events")
    fields = {
        **{k: count for k in ("pending_jobs", "running_jobs", "backlog_items", "open_streams")},
        "items_per_s": {"type": "number", "minimum": 0},
        "capped": {"type": "boolean"},
        "links": links,
    }
    return closed(fields, *fields)


def meta_schemas() -> dict[str, Schema]:
    pointer = open_object({"pointer": STRING, "detail": STRING})
    codes = {"type": "object", "additionalProperties": STRING}
    listing = "Codes the framework gives failed items: " + ", ".join(ITEM_ERROR_CODES)
    item_codes = {**codes, "description": listing}
    problem = {
        "type": "object",
        "description": "RFC 9457 problem details; extra members depend on the code",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            **{k: STRING for k in ("type", "title", "detail", "instance")},
            "status": {"type": "integer"},
            "code": enum_schema(list(CATALOG)),
            "errors": {"type": "array", "items": pointer},
        },
    }
    operation = {
        "type": "object",
        "required": ["name", "item_schema", "limits", "item_error_codes"],
        "properties": {
            "name": STRING,
            "description": STRING,
            "item_schema": OBJECT,
            "limits": wire_schema(LIMITS_WIRE),
            "item_error_codes": codes,
        },
    }
    return {
        "Problem": problem,
        "ErrorType": wire_schema(ERROR_TYPE_WIRE),
        "ErrorTypeList": open_object(
            {"data": {"type": "array", "items": ref("ErrorType")}, "item_error_codes": item_codes}
        ),
        "Operation": operation,
        "OperationList": open_object({"data": {"type": "array", "items": ref("Operation")}}),
        "Readiness": open_object({"ready": {"type": "boolean"}}),
        "Overview": overview_schema(),
    }
