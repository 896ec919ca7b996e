"""Issue 13 items 7 and 8: secrets never reach the logs, whoever logs them (aiohttp's
parser quotes bad request lines and headers), and the text log escapes control
characters so that a request path cannot forge lines or send terminal escapes."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bulkjobs.logs import JsonFormatter, escape_controls, make_handler, redact
from bulkjobs.web import create_app
from bulkjobs.web.accesslog import AccessLogger

KEY = "bjk_Zm9vYmFyLXNlY3JldC1rZXktdmFsdWU"
TOKEN = "1999999999.acme.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Authorization: Bearer {KEY}", KEY),
        ("b'Bearer opaque-credential-123...'", "opaque-credential-123"),
        (f"GET /bulk-jobs/x/events?token={TOKEN}&a=1", TOKEN),
        (f"key file line {KEY}", KEY),
        ("whsec_c2VjcmV0c2VjcmV0c2VjcmV0", "c2VjcmV0c2VjcmV0c2VjcmV0"),
    ],
)
def test_redact_masks_secrets(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned and "[redacted]" in cleaned
    assert redact(cleaned) == cleaned


def test_escape_controls() -> None:
    assert escape_controls("a\r\nb\x00c\x1b[31md\x7f\x9b\t") == (
        "a\\r\\nb\\x00c\\x1b[31md\\x7f\\x9b\\t"
    )
    assert escape_controls("plain ünïcode") == "plain ünïcode"


def _record(msg: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord("bulkjobs.access", logging.INFO, __file__, 1, msg, args, None)


def test_text_handler_writes_one_escaped_line() -> None:
    out = io.StringIO()
    handler = make_handler("text", out)
    handler.handle(_record("%s %s", "GET", "/x\r\n2026-01-01 INFO forged\x1b[2J\x00"))
    line = out.getvalue()
    assert line.count("\n") == 1 and "\r" not in line
    assert "\x1b" not in line and "\x00" not in line
    assert "/x\\r\\n2026-01-01 INFO forged\\x1b[2J\\x00" in line


def test_json_handler_redacts_message_and_traceback() -> None:
    out = io.StringIO()
    handler = make_handler("json", out)
    assert isinstance(handler.formatter, JsonFormatter)
    try:
        raise ValueError(f"bad header Bearer {KEY}")
    except ValueError:
        record = _record("token=%s", TOKEN)
        record.exc_info = sys.exc_info()
    handler.handle(record)
    assert KEY not in out.getvalue() and TOKEN not in out.getvalue()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The package's text handler on the root logger, writing to memory."""
    out = io.StringIO()
    handler = make_handler("text", out)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(old_level)


async def _raw(server: TestServer, head: bytes) -> bytes:
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


HOSTILE_REQUESTS = [
    b"GET /bulk-jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + KEY.encode()
    + b"A" * 9000
    + b"\r\n\r\n",
    b"GET /bulk-jobs/x/events?token="
    + TOKEN.encode()
    + b"A" * 9000
    + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /bulk-jobs/x/events?token=" + TOKEN.encode() + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /bulk-jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + KEY.encode()
    + b"\x01\r\n\r\n",
    b"GET /%0d%0a2026-01-01%20ERROR%20forged%1b[2J%00 HTTP/1.1\r\n"
    b"Host: x\r\nConnection: close\r\n\r\n",
]


async def test_server_logs_hold_no_secret_and_no_control_character(
    settings: Any, captured: io.StringIO
) -> None:
    server = TestServer(create_app(settings))
    await server.start_server(access_log_class=AccessLogger)
    try:
        for head in HOSTILE_REQUESTS:
            answer = await _raw(server, head)
            assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400", b"HTTP/1.1 404")), answer
    finally:
        await server.close()
    logs = captured.getvalue()
    assert "Error handling request" in logs  # the parser's complaints were logged ...
    assert KEY not in logs and TOKEN not in logs  # ... without the secrets
    assert "bjk_[redacted]" in logs or "Bearer [redacted]" in logs
    assert "\r" not in logs and "\x1b" not in logs and "\x00" not in logs
    forged = [line for line in logs.splitlines() if line.startswith("2026-01-01")]
    assert forged == []
    assert "\\r\\n2026-01-01 ERROR forged\\x1b[2J\\x00" in logs
