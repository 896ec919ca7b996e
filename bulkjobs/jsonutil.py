"""The one place that imports orjson: fast JSON in and out."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError
JSONEncodeError = orjson.JSONEncodeError

#: Deepest nesting accepted. orjson parses 1,024 levels but serializes only 255, so a
#: deeper document would be accepted and then fail when stored or answered.
MAX_DEPTH = 128
_ENCODER_DEPTH = 254  # orjson.dumps raises "Recursion limit reached" beyond this


def dumps(value: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes (datetimes as RFC 3339)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)


def dumps_str(value: Any) -> str:
    """Like `dumps`, as text: use it for many small values that are kept in memory
    (each orjson `bytes` result holds a ~4 KiB allocation; its decoded `str` does not)."""
    return dumps(value).decode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises `JSONDecodeError` (a `ValueError`) on bad input, including
    nesting deeper than `MAX_DEPTH`."""
    value = orjson.loads(data)
    if isinstance(value, list | dict) and _may_be_too_deep(data) and _too_deep(value):
        raise JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", "", 0)
    return value


#: `loads` without the depth check, for callers that check the depth of what they keep.
loads_unchecked = orjson.loads


def _may_be_too_deep(data: bytes | str) -> bool:
    """A cheap bound: fewer opening brackets than the limit cannot nest too deep."""
    if isinstance(data, str):
        return data.count("[") + data.count("{") > MAX_DEPTH
    return data.count(b"[") + data.count(b"{") > MAX_DEPTH


def _too_deep(value: Any) -> bool:
    """True when containers nest deeper than `MAX_DEPTH`.

    orjson's encoder stops at 254 levels, in C: wrapped in `254 - MAX_DEPTH` lists,
    the value fails to encode exactly when it nests deeper than `MAX_DEPTH` (about
    30 times faster than walking it in Python).
    """
    for _ in range(_ENCODER_DEPTH - MAX_DEPTH):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        return "Recursion" in str(exc)
    return False


def raw_json(data: bytes | str) -> Any:
    """Already-encoded JSON, embedded as is by `dumps` (no parse and re-encode)."""
    return orjson.Fragment(data)
