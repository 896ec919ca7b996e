"""Receiving a submission: admission slots, and the bridge between the parsing thread
and the event loop.

A big body is parsed in a thread (`streaming`), which pulls chunks of the body and
hands over validated batches through the loop: each batch is staged in the store
(`Store.staging`, one short transaction) while the thread parses the next, so other
jobs' commits interleave with the upload and memory stays at a batch or two.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ..errors import BulkJobsError
from ..models import NewItems
from ..store import Staging
from .slots import Slots

T = TypeVar("T")


class BodySource(Protocol):
    """The request body, chunk by chunk (b"" at its end); the web layer enforces its
    deadline, minimum rate and size limits, raising `BulkJobsError`."""

    async def read(self) -> bytes: ...


class UploadSlots(Slots):
    """Big bodies being received: refused at once, before a byte of the body is read,
    with 429 `too_many_uploads` past the tenant's cap and 503 `server_busy` past the
    server's."""

    def tenant_full(self, mine: int) -> BulkJobsError:
        return BulkJobsError(
            "too_many_uploads",
            f"{mine} of your uploads are being received, your limit; retry when one is done.",
            retry_after_s=1,
        )

    def server_full(self) -> BulkJobsError:
        return BulkJobsError(
            "server_busy", "Too many uploads are being received; retry shortly.", retry_after_s=1
        )


class Aborted(Exception):
    """The loop gave up on the upload (its request was cancelled)."""


class Bridge:
    """What the parsing thread calls: `read` a chunk, `emit` a batch; both run on the
    loop. One staging insert is in flight while the thread parses the next batch."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, body: BodySource, staged: Staging | None = None
    ) -> None:
        self._loop = loop
        self._body = body
        self._staged = staged
        self._aborted = False
        self._pending: concurrent.futures.Future[Any] | None = None
        self._inserting: asyncio.Task[None] | None = None

    # -- called in the parsing thread ---------------------------------------------

    def read(self) -> bytes:
        return self._call(self._body.read())

    def emit(self, batch: NewItems) -> None:
        self._call(self._stage(batch))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._aborted:
            coro.close()
            raise Aborted
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        self._pending = fut
        if self._aborted:  # abort() ran between the check and now
            fut.cancel()
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise Aborted from None

    # -- on the loop --------------------------------------------------------------

    async def _stage(self, batch: NewItems) -> None:
        assert self._staged is not None, "nowhere to stage items"
        await self.settle()
        self._inserting = asyncio.ensure_future(self._staged.add(batch))

    async def settle(self) -> None:
        """Wait for the insert in flight (its error, if any, is raised here)."""
        task, self._inserting = self._inserting, None
        if task is not None:
            await task

    async def run(self, parse: Callable[[], T]) -> T:
        """Run `parse` in a thread; end it, and the insert in flight, if cancelled."""
        work = self._loop.run_in_executor(None, parse)
        try:
            result = await asyncio.shield(work)
            await self.settle()
            return result
        except BaseException:
            self._abort()
            await asyncio.wait([work])  # the thread stops at its next read or emit
            await self._cancel_insert()
            raise

    def _abort(self) -> None:
        self._aborted = True
        if self._pending is not None:
            self._pending.cancel()

    async def _cancel_insert(self) -> None:
        task, self._inserting = self._inserting, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: the upload's own error is the one raised


async def read_all(body: BodySource, limit: int) -> bytes:
    """A small body, whole (its size was announced, so `limit` bounds it)."""
    parts: list[bytes] = []
    size = 0
    while chunk := await body.read():
        size += len(chunk)
        if size > limit:
            raise BulkJobsError("payload_too_large", "The body is longer than it announced.")
        parts.append(chunk)
    return b"".join(parts)


class BytesBody:
    """A body already in memory (for callers inside the process, and tests)."""

    def __init__(self, data: bytes) -> None:
        self._parts = [data] if data else []

    async def read(self) -> bytes:
        return self._parts.pop() if self._parts else b""


def chunks_of(data: bytes) -> Callable[[], bytes]:
    """A `read` over a body already in memory."""
    parts = iter((data, b""))
    return lambda: next(parts, b"")
