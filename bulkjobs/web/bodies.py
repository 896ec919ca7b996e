"""Reading a request body against a deadline, so a slow client cannot hold a worker of
the server (slowloris).

A body gets `body_timeout_s` plus one second per `body_min_rate_bytes_s` bytes that
arrive: a client that stalls, or drips bytes slower than the minimum rate, gets `408
request_timeout` and the connection is closed. aiohttp has no public timeout for
request headers; put a reverse proxy in front for that (README, Security).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import BulkJobsError
from .keys import SETTINGS

#: Inflated bytes below which the ratio cap does not apply (small bodies compress well).
RATIO_FLOOR_BYTES = 1 << 20


def check_encoding(request: web.Request) -> bool:
    """True for a gzip body the settings accept; 415 for any other `Content-Encoding`.

    aiohttp inflates a body as it is read, in bounded steps (3.13.3+), so a refused
    body is never inflated, and an accepted one only as fast as it is consumed."""
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding == "identity":
        return False
    if coding == "gzip" and request.app[SETTINGS].accept_gzip:
        return True
    accepted = "gzip" if request.app[SETTINGS].accept_gzip else "identity"
    raise BulkJobsError(
        "unsupported_content_encoding",
        f"Content-Encoding {coding[:40]!r} is not accepted; send the body"
        f" {'gzip-compressed or ' if accepted == 'gzip' else ''}uncompressed.",
        headers={"Accept-Encoding": accepted, "Connection": "close"},
    )


class BodyReader:
    """The body of a request, chunk by chunk, at most `max_body_bytes` (for gzip: that
    many compressed, `max_inflated_bytes` inflated, and at most `max_inflate_ratio`
    times its compressed size), arriving at the minimum rate or better."""

    def __init__(self, request: web.Request, *, gzip: bool = False) -> None:
        self._request = request
        self._s = request.app[SETTINGS]
        self._gzip = gzip
        self._deadline = asyncio.get_running_loop().time() + self._s.body_timeout_s
        self.size = 0  # bytes handed out (inflated, for gzip)

    async def read(self) -> bytes:
        """The next chunk; b"" at the end of the body."""
        try:
            async with asyncio.timeout_at(self._deadline):
                part = await self._request.content.readany()
        except TimeoutError:
            raise _give_up(self._request, self.size) from None
        self.size += len(part)
        self._check()
        self._deadline += len(part) / max(1, self._s.body_min_rate_bytes_s)
        return part

    def _check(self) -> None:
        if not self._gzip:
            if self.size > self._s.max_body_bytes:
                raise self._too_large(f"exceeds the limit of {self._s.max_body_bytes} bytes")
            return
        packed = getattr(self._request.content, "total_compressed_bytes", None) or 1
        if packed > self._s.max_body_bytes:
            raise self._too_large(f"exceeds the limit of {self._s.max_body_bytes} bytes")
        if self.size > self._s.max_inflated_bytes:
            raise self._too_large(f"inflates past the limit of {self._s.max_inflated_bytes} bytes")
        ratio = self._s.max_inflate_ratio
        if self.size > RATIO_FLOOR_BYTES and self.size > packed * ratio:
            raise self._too_large(f"inflates to more than {ratio} times its compressed size")

    def _too_large(self, why: str) -> BulkJobsError:
        return BulkJobsError(
            "payload_too_large", f"The body {why}.", headers={"Connection": "close"}
        )


def _give_up(request: web.Request, received: int) -> BulkJobsError:
    """Stop reading this connection and close it once the 408 is sent.

    Reading is paused first, so nothing more is fed to the body we end here; ending it
    keeps aiohttp from lingering (up to 10 s) to drain what the client never sends.
    """
    if request.transport is not None:
        request.transport.pause_reading()
    request.content.feed_eof()
    request.protocol.close()
    s = request.app[SETTINGS]
    return BulkJobsError(
        "request_timeout",
        f"The request body did not arrive in time ({received} bytes received; allowed:"
        f" {s.body_timeout_s:g} s plus 1 s per {s.body_min_rate_bytes_s} bytes).",
        headers={"Connection": "close"},
    )
