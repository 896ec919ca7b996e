"""`SyncClient`: the async client's methods, blocking, for scripts and notebooks.

It runs its own event loop in a daemon thread, so it works where a loop is already
running (Jupyter) as well as in plain scripts:

    with SyncClient("http://127.0.0.1:8080") as client:
        job = client.wait(client.submit("noop", [{}, {}]).id)
"""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, TypeVar

from .api import BulkJobsClient
from .body import Items
from .models import Event, RemoteJob

T = TypeVar("T")


class SyncClient:
    """A blocking `BulkJobsClient`: the same methods; iterators are plain iterators."""

    def __init__(self, url: str = "http://127.0.0.1:8080", **options: Any) -> None:
        self._client = BulkJobsClient(url, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, **kw: Any) -> SyncClient:
        """Built from BULKJOBS_URL and BULKJOBS_API_KEY (keyword arguments win)."""
        kw.setdefault("url", os.environ.get("BULKJOBS_URL") or "http://127.0.0.1:8080")
        kw.setdefault("api_key", os.environ.get("BULKJOBS_API_KEY") or None)
        return cls(**kw)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the loop thread -----------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="bulkjobs-sync-client", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        try:
            return future.result()
        except BaseException:  # Ctrl-C or an error: stop the coroutine too
            future.cancel()
            raise

    def _iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(_next(source))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None and self._loop is not None:
                self._run(aclose())

    def close(self) -> None:
        """Close the HTTP session and stop the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._run(self._client.close())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = None

    # -- the client's methods --------------------------------------------------

    def submit(
        self,
        operation: str,
        items: Items,
        *,
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
        webhook: str | Mapping[str, Any] | None = None,
    ) -> RemoteJob:
        """Create a job (see `BulkJobsClient.submit`)."""
        return self._run(
            self._client.submit(
                operation,
                items,
                idempotency_key=idempotency_key,
                ttl_seconds=ttl_seconds,
                webhook=webhook,
            )
        )

    def get(self, job_id: str) -> RemoteJob:
        """The job as it is now."""
        return self._run(self._client.get(job_id))

    def list(
        self, *, status: str | None = None, operation: str | None = None, page_size: int = 100
    ) -> Iterator[RemoteJob]:
        """Every job (newest first), fetched page by page."""
        return self._iterate(
            self._client.list(status=status, operation=operation, page_size=page_size)
        )

    def items(
        self, job_id: str, *, status: str | None = None, page_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Per-item outcomes in request order, page by page."""
        return self._iterate(self._client.items(job_id, status=status, page_size=page_size))

    def results(
        self,
        job_id: str,
        *,
        format: str = "ndjson",
        status: str | None = None,
        partial: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Every item outcome, streamed."""
        return self._iterate(
            self._client.results(job_id, format=format, status=status, partial=partial)
        )

    def download(
        self,
        job_id: str,
        out: IO[bytes],
        *,
        format: str = "ndjson",
        status: str | None = None,
        partial: bool = False,
    ) -> int:
        """Write the results file to `out`; the bytes written."""
        return self._run(
            self._client.download(job_id, out, format=format, status=status, partial=partial)
        )

    def operations(self) -> builtins.list[dict[str, Any]]:
        """The registered operations with their item schemas and limits."""
        return self._run(self._client.operations())

    def cancel(self, job_id: str) -> RemoteJob:
        """Cancel (idempotent)."""
        return self._run(self._client.cancel(job_id))

    def retry(self, job_id: str) -> RemoteJob:
        """A new job made of a finished job's failed items."""
        return self._run(self._client.retry(job_id))

    def delete(self, job_id: str) -> None:
        """Delete a finished job and its items."""
        self._run(self._client.delete(job_id))

    def events(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's progress events until its terminal one."""
        return self._iterate(self._client.events(job_id, last_event_id=last_event_id))

    def wait(self, job_id: str, timeout: float | None = None) -> RemoteJob:
        """Block until the job is terminal; `WaitTimeout` after `timeout` seconds."""
        return self._run(self._client.wait(job_id, timeout=timeout))

    def poll(self, job_id: str) -> RemoteJob:
        """Poll until terminal (conditional GETs paced by `Retry-After`)."""
        return self._run(self._client.poll(job_id))


async def _next(source: AsyncIterator[T]) -> T:
    return await anext(source)


__all__ = ["SyncClient"]
