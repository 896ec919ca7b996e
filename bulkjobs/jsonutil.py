"""The one place that imports orjson: fast JSON in and out."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes (datetimes as RFC 3339)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)


def dumps_str(value: Any) -> str:
    """Like `dumps`, as text: use it for many small values that are kept in memory
    (each orjson `bytes` result holds a ~4 KiB allocation; its decoded `str` does not)."""
    return dumps(value).decode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises `JSONDecodeError` (a `ValueError`) on bad input."""
    return orjson.loads(data)


def raw_json(data: bytes | str) -> Any:
    """Already-encoded JSON, embedded as is by `dumps` (no parse and re-encode)."""
    return orjson.Fragment(data)
