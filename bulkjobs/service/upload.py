"""Receiving a submission: admission slots, and the bridge between the parsing thread
and the event loop.

A big body is parsed in a thread (`streaming`), which pulls chunks of the body and
hands over validated batches through the loop: each batch is staged in the store
(`Store.staging`, one short transaction) while the thread parses the next, so other
jobs' commits interleave with the upload and memory stays at a batch or two.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

from ..errors import BulkJobsError
from ..models import NewItems
from ..store import Staging

T = TypeVar("T")


class BodySource(Protocol):
    """The request body, chunk by chunk (b"" at its end); the web layer enforces its
    deadline, minimum rate and size limits, raising `BulkJobsError`."""

    async def read(self) -> bytes: ...


class UploadSlots:
    """At most `total` bodies read at once, and `per_tenant` of them for one tenant.

    Excess is refused at once, before a byte of the body is read: 503 `server_busy`
    for the server, 429 `too_many_uploads` for a tenant."""

    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.active = 0
        self._tenants: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def take(self, tenant: str) -> Iterator[None]:
        if self.active >= self.total:
            raise BulkJobsError(
                "server_busy",
                f"{self.active} uploads are being received; retry shortly.",
                retry_after_s=1,
            )
        if self.per_tenant and self._tenants[tenant] >= self.per_tenant:
            raise BulkJobsError(
                "too_many_uploads",
                f"{self._tenants[tenant]} of your uploads are being received"
                f" (at most {self.per_tenant} at once); retry when one is done.",
                retry_after_s=1,
            )
        self.active += 1
        self._tenants[tenant] += 1
        try:
            yield
        finally:
            self.active -= 1
            self._tenants[tenant] -= 1
            if not self._tenants[tenant]:
                del self._tenants[tenant]


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
