"""The `webhook` member of a submission: parsed and checked before anything is stored."""

from __future__ import annotations

from typing import Any, NoReturn

import attrs

from ...errors import BulkJobsError
from ...outbox import EVENT_TYPES, TERMINAL_EVENTS
from .targets import url_problem

FIELDS = frozenset({"url", "events"})


@attrs.frozen
class WebhookSpec:
    """Where to send which events of one job."""

    url: str
    events: tuple[str, ...] = TERMINAL_EVENTS


def parse_webhook(value: Any) -> WebhookSpec:
    """A `WebhookSpec` from the submitted JSON, or `validation_error` with pointers."""
    if not isinstance(value, dict):
        _fail([("/webhook", "must be an object with `url` and optional `events`")])
    errors = [(f"/webhook/{k}", "unknown field") for k in sorted(set(value) - FIELDS)]
    problem = url_problem(value.get("url"))
    if problem:
        errors.append(("/webhook/url", problem))
    events, event_errors = _events(value.get("events"))
    errors.extend(event_errors)
    if errors:
        _fail(errors)
    return WebhookSpec(value["url"], events)


def _events(value: Any) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    if value is None:
        return TERMINAL_EVENTS, []
    allowed = ", ".join(EVENT_TYPES)
    if not isinstance(value, list) or not value:
        return (), [("/webhook/events", f"must be a non-empty array of: {allowed}")]
    errors = [
        (f"/webhook/events/{i}", f"must be one of: {allowed}")
        for i, e in enumerate(value)
        if e not in EVENT_TYPES
    ]
    return (() if errors else tuple(dict.fromkeys(value))), errors


def _fail(errors: list[tuple[str, str]]) -> NoReturn:
    n = len(errors)
    raise BulkJobsError(
        "validation_error",
        f"{n} validation error{'s' if n != 1 else ''} in `webhook`.",
        errors=[{"pointer": p, "detail": d} for p, d in errors],
    )
