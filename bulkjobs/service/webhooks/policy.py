"""When to try a webhook message again: the retry schedule, jitter and `Retry-After`.

Pure functions, so the decisions are tested without a network.
"""

from __future__ import annotations

import enum
import random
from datetime import datetime, timedelta

from ...parsing import MAX_RETRY_AFTER_S, retry_after_s

__all__ = [
    "MAX_RETRY_AFTER_S",
    "Verdict",
    "judge",
    "next_attempt",
    "parse_schedule",
    "retry_after_s",
]

#: Standard Webhooks-style schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
DEFAULT_SCHEDULE_S = "5,300,1800,7200,18000,36000,50400,72000,86400"
JITTER = 0.2  # each delay is drawn from ±20 % around its nominal value


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # network error, timeout, 408, 429, 5xx
    FAILED = "failed"  # any other answer: retrying would not change it
    GONE = "gone"  # 410: the endpoint is gone; stop the subscription


def parse_schedule(text: str) -> tuple[float, ...]:
    """Delays in seconds from a comma-separated list; empty means no retries."""
    delays = tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    if any(d < 0 for d in delays):
        raise ValueError("webhook retry delays must not be negative")
    return delays


def judge(status_code: int | None) -> Verdict:
    """What an HTTP status (None: no answer at all) means for the message."""
    if status_code is None or status_code in (408, 429) or status_code >= 500:
        return Verdict.RETRY
    if 200 <= status_code < 300:
        return Verdict.DELIVERED
    if status_code == 410:
        return Verdict.GONE
    return Verdict.FAILED


def next_attempt(
    schedule: tuple[float, ...],
    retries: int,
    asked_s: float | None,
    now: datetime,
    rng: random.Random | None = None,
) -> datetime | None:
    """When retry number `retries + 1` is due, or None when the schedule is spent.

    A `Retry-After` the endpoint asked for replaces the scheduled delay (at most
    `MAX_RETRY_AFTER_S`); otherwise the delay gets jitter so that many
    messages failing together do not retry together.
    """
    if retries >= len(schedule):
        return None
    if asked_s is not None:
        delay = min(asked_s, MAX_RETRY_AFTER_S)
    else:
        delay = schedule[retries] * (1 + (rng or random).uniform(-JITTER, JITTER))
    return now + timedelta(seconds=delay)
