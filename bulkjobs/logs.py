"""Logging setup: human text, or one JSON object per line for log shippers.

Records may carry `job_id`, `tenant`, `event` and HTTP fields as `extra`; they become
top-level keys. Secrets never reach a record: keys and tokens are not logged anywhere.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from . import jsonutil

_EXTRA_FIELDS = (
    "event",
    "job_id",
    "tenant",
    "operation",
    "status",
    "method",
    "path",
    "http_status",
    "duration_ms",
    "remote",
    "items",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, and known extras."""

    converter = time.gmtime  # type: ignore[assignment]  # typeshed has no overload for it

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                body[name] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return jsonutil.dumps_str(body)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger; `fmt` is "text" or "json"."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
