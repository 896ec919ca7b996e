"""Logging setup: human text, or one JSON object per line for log shippers.

Records may carry `job_id`, `tenant`, `event` and HTTP fields as `extra`; they become
top-level keys. Secrets never reach a record: keys and tokens are not logged anywhere,
and `RedactSecrets` on the handler catches what other code logs (aiohttp's parser
quotes a malformed request line or header, an Authorization header included). The
text format escapes control characters, so a request path cannot forge log lines or
send terminal escapes.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import IO, Any

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


_SECRETS = re.compile(
    r"(?i)(bearer\s+)[^\s'\"\\]+"
    r"|(bjk_|whsec_)[A-Za-z0-9_\-+/=]+"
    r"|((?:token|api_key|key)=)[^&\s'\"\\]+"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """The text with API keys, bearer credentials, signing secrets and tokens masked."""
    return _SECRETS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    return (match[1] or match[2] or match[3]) + REDACTED


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message and traceback, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def escape_controls(text: str) -> str:
    """CR, LF, NUL, ESC and every other control character as a visible escape."""
    return text.translate(_CONTROL)


class TextFormatter(logging.Formatter):
    """One line per record: control characters in the message are escaped (a
    traceback, which comes from our own code, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


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
        if record.exc_text:
            body["exc"] = record.exc_text
        elif record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return jsonutil.dumps_str(body)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_handler(fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """The package's log handler: the chosen format, secrets redacted."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets())
    return handler


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger; `fmt` is "text" or "json"."""
    handler = make_handler(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
