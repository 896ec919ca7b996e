"""Request bodies for submits: items encoded as NDJSON in chunks, never all at once.

A submit may be sent more than once (retry after a dropped connection), so its body
must replay byte for byte. A sequence is simply encoded again; a one-shot iterable is
teed into a spooled temporary file as it is first sent (memory while the file is
small, then disk), and a retry replays the spool before reading on from the source.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import IO, Any

from .. import jsonutil

CHUNK_BYTES = 64 * 1024
SPOOL_MEMORY_BYTES = 4 * 1024 * 1024

Items = Iterable[Any] | AsyncIterable[Any]


async def _aiter(items: Items) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def encode_ndjson(items: Items, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """Items as NDJSON, in chunks of about `chunk_bytes`."""
    buf: list[bytes] = []
    size = 0
    async for item in _aiter(items):
        line = jsonutil.dumps(item) + b"\n"
        buf.append(line)
        size += len(line)
        if size >= chunk_bytes:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


class ReplayableBody:
    """An NDJSON body that can be produced again for a retry, identically."""

    def __init__(self, items: Items) -> None:
        self._items = items
        self._replayable = isinstance(items, Sequence)
        self._source: AsyncIterator[bytes] | None = None
        self._spool: IO[bytes] | None = None
        self._source_done = False
        self.error: Exception | None = None

    def chunks(self) -> AsyncIterator[bytes]:
        """A fresh iterator over the whole body (for one attempt)."""
        return self._watched(encode_ndjson(self._items) if self._replayable else self._teed())

    async def _watched(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        # aiohttp reports any error of a body as a connection error; remember the
        # source's own so that the submit raises it instead of retrying a cut body.
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:
            self.error = exc
            raise

    async def _teed(self) -> AsyncIterator[bytes]:
        spool = self._open_spool()
        spool.seek(0)
        while block := spool.read(CHUNK_BYTES):
            yield block
        if self._source_done:
            return
        if self._source is None:
            self._source = encode_ndjson(self._items)
        async for block in self._source:
            spool.write(block)  # position is at the end: everything before was read
            yield block
        self._source_done = True

    def _open_spool(self) -> IO[bytes]:
        if self._spool is None:
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
        return self._spool

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
