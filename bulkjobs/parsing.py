"""The one parser for numbers that arrive as text from outside (query parameters,
headers, tokens): ASCII digits only, of bounded length.

`str.isdigit()` is true for '²' and for Arabic-Indic digits, which `int()` then
refuses or reads, and `int()` refuses more than 4,300 digits: all used to be 500s.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_UINT = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_DIGITS = 18  # fits in a signed 64-bit integer
MAX_RETRY_AFTER_S = 24 * 3600.0  # a `Retry-After` longer than this is cut to it
_MAX_DELTA_DIGITS = 10  # more digits than this: the cap, without converting them
_MAX_DATE_CHARS = 64


def ascii_uint(text: str | None, max_digits: int = MAX_DIGITS) -> int | None:
    """A non-negative integer written in at most `max_digits` ASCII digits, else None."""
    if text is None or not 0 < len(text) <= max_digits or not _UINT.fullmatch(text):
        return None
    return int(text)


def ascii_decimal(text: str | None, max_chars: int = 32) -> float | None:
    """A non-negative decimal such as `2` or `0.5` (ASCII, no exponent), else None."""
    if text is None or not 0 < len(text) <= max_chars or not _DECIMAL.fullmatch(text):
        return None
    return float(text)


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds asked for by a `Retry-After` header (delta-seconds or HTTP-date).

    The header comes from a peer we do not trust: anything that does not parse is
    ignored (None, so the normal schedule applies); it never raises.
    """
    if not value:
        return None
    value = value.strip()
    if _UINT.fullmatch(value):
        return float(int(value)) if len(value) <= _MAX_DELTA_DIGITS else MAX_RETRY_AFTER_S
    if len(value) > _MAX_DATE_CHARS:
        return None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    except (TypeError, ValueError, OverflowError, IndexError):
        # email.utils raises OverflowError for an absurd zone offset, ValueError for
        # an impossible date, IndexError/TypeError for some truncated forms
        return None
