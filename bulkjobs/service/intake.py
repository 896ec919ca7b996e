"""Intake: the checks of a submission's fields and items, each raising a
`BulkJobsError` with a stable code. `streaming` applies them while the body is read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import BulkJobsError
from ..itemtypes import pointer
from ..parsing import ascii_uint
from ..registry import Operation, Registry

MAX_LISTED_ERRORS = 100
KNOWN_FIELDS = frozenset({"operation", "items", "ttl_seconds", "webhook"})


@attrs.frozen
class IntakeLimits:
    max_items: int
    default_ttl_s: int
    min_ttl_s: int
    max_ttl_s: int


def invalid(errors: list[dict[str, str]], detail: str | None = None) -> BulkJobsError:
    n = len(errors)
    return BulkJobsError(
        "validation_error",
        detail or f"{n} validation error{'s' if n != 1 else ''}.",
        errors=errors[:MAX_LISTED_ERRORS],
    )


def operation_named(registry: Registry, name: Any) -> Operation:
    if not isinstance(name, str) or not name:
        raise BulkJobsError("unknown_operation", "`operation` is required and must be a string.")
    op = registry.get(name)
    if op is None:
        raise BulkJobsError("unknown_operation", f"No operation named {name[:100]!r}.")
    return op


def ttl_of(value: Any, limits: IntakeLimits) -> int:
    if value is None:
        return limits.default_ttl_s
    # JSON has one number type: 3600.0 is the integer 3600 (JSON Schema agrees)
    whole = isinstance(value, float) and value.is_integer()
    ok = (isinstance(value, int) and not isinstance(value, bool)) or whole
    if not ok or not limits.min_ttl_s <= value <= limits.max_ttl_s:
        detail = f"must be an integer from {limits.min_ttl_s} to {limits.max_ttl_s}"
        raise BulkJobsError(
            "invalid_ttl",
            f"`ttl_seconds` {detail}.",
            errors=[{"pointer": "/ttl_seconds", "detail": detail}],
        )
    return int(value)


def collect_errors(op: Operation, idx: int, item: Any, errors: list[dict[str, str]]) -> None:
    if len(errors) > MAX_LISTED_ERRORS:
        return
    for path, detail in op.validator.errors(item) or [((), "invalid item")]:
        errors.append({"pointer": pointer("items", idx, *path), "detail": detail})


def item_id_of(item: dict[str, Any]) -> str | None:
    value = item.get("id")
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


#: Query parameters of an NDJSON submission that carry integers.
NDJSON_INT_PARAMS = frozenset({"ttl_seconds"})


def ndjson_options(params: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in params.items():
        if name in NDJSON_INT_PARAMS and ascii_uint(value) is not None:
            options[name] = ascii_uint(value)
        elif name == "webhook":
            options[name] = {"url": value}
        elif name == "webhook_events":
            options.setdefault("webhook", {})["events"] = value.split(",")
        else:
            options[name] = value  # unknown names are refused by `prepare`, as in JSON
    return options
