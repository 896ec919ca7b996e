"""The async Python client: submit, follow, inspect and download bulk jobs.

async with BulkJobsClient("http://127.0.0.1:8080") as client:
    job = await client.submit("update_orders_status", items)
    job = await client.wait(job.id)
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from types import TracebackType
from typing import IO, Any

import aiohttp

from .. import jsonutil, paths
from .body import Items, ReplayableBody
from .errors import ClientError, TransportError, Unauthorized, WaitTimeout
from .models import Event, RemoteJob
from .records import csv_records, ndjson_records
from .sse import RawEvent, read_events
from .transport import Reply, RequestRetry, Transport, retry_after_s

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)


class BulkJobsClient:
    """An async client for one bulkjobs server. Use it as an async context manager."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        retry: RequestRetry | None = None,
        use_sse: bool = True,
        poll_interval_s: float = 1.0,
        max_reconnect_delay_s: float = 3.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._url = url
        self._headers = headers
        self._session = session
        self._owns_session = session is None
        self._retry = retry or RequestRetry()
        self._transport: Transport | None = None
        self.use_sse = use_sse
        self.poll_interval_s = poll_interval_s
        self.max_reconnect_delay_s = max_reconnect_delay_s

    @classmethod
    def from_env(cls, **kw: Any) -> BulkJobsClient:
        """Built from BULKJOBS_URL and BULKJOBS_API_KEY (keyword arguments win)."""
        kw.setdefault("url", os.environ.get("BULKJOBS_URL") or "http://127.0.0.1:8080")
        kw.setdefault("api_key", os.environ.get("BULKJOBS_API_KEY") or None)
        return cls(**kw)

    async def __aenter__(self) -> BulkJobsClient:
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = self._transport = None

    def _http(self) -> Transport:
        if self._transport is None:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT)
            self._transport = Transport(self._url, self._session, self._headers, self._retry)
        return self._transport

    # -- submit ------------------------------------------------------------

    async def submit(
        self,
        operation: str,
        items: Items,
        *,
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
        webhook: str | Mapping[str, Any] | None = None,
    ) -> RemoteJob:
        """Create a job; items (a list or any iterable / async iterable) stream as NDJSON.

        An `Idempotency-Key` is generated unless given, so dropped connections and
        429/503 answers are retried without ever creating the job twice."""
        key = idempotency_key or f"py-{uuid.uuid4().hex}"
        params = _submit_params(operation, ttl_seconds, webhook)
        headers = {"Content-Type": NDJSON, "Idempotency-Key": key}
        body = ReplayableBody(items)
        http = self._http()

        async def attempt() -> Reply:
            try:
                return await http.fetch(
                    "POST", paths.JOBS, params=params, headers=headers, data=body.chunks
                )
            except aiohttp.ClientError:
                if body.error is not None:  # the items failed, not the network
                    raise body.error from None
                raise

        try:
            reply = await http.retrying(attempt, idempotent=True)
        finally:
            body.close()
        return RemoteJob.from_json(reply.body)

    # -- read --------------------------------------------------------------

    async def get(self, job_id: str) -> RemoteJob:
        """The job as it is now."""
        return RemoteJob.from_json((await self._http().call("GET", _job(job_id))).body)

    async def list(
        self, *, status: str | None = None, operation: str | None = None, page_size: int = 100
    ) -> AsyncIterator[RemoteJob]:
        """Every job (newest first), fetched page by page."""
        params = _params(status=status, operation=operation, limit=str(page_size))
        async for row in self._pages(paths.JOBS, params):
            yield RemoteJob.from_json(row)

    async def items(
        self, job_id: str, *, status: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Per-item outcomes in request order, page by page (`status="failed"` filters)."""
        params = _params(status=status, limit=str(page_size))
        async for row in self._pages(_job(job_id) + "/items", params):
            yield row

    async def _pages(
        self, path: str, params: dict[str, str] | None
    ) -> AsyncIterator[dict[str, Any]]:
        link: str | None = path
        while link is not None:
            reply = await self._http().call("GET", link, params=params)
            for row in reply.body["data"]:
                yield row
            link, params = reply.body["links"]["next"], None

    async def results(
        self,
        job_id: str,
        *,
        format: str = "ndjson",
        status: str | None = None,
        partial: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item outcome, streamed; CSV rows come as dicts of strings."""
        decode = csv_records if format == "csv" else ndjson_records
        async with await self._open_results(job_id, format, status, partial) as resp:
            async for record in decode(resp):
                yield record

    async def download(
        self,
        job_id: str,
        out: IO[bytes],
        *,
        format: str = "ndjson",
        status: str | None = None,
        partial: bool = False,
    ) -> int:
        """Write the results file as the server sends it to `out`; the bytes written."""
        written = 0
        async with await self._open_results(job_id, format, status, partial) as resp:
            async for chunk in resp.content.iter_chunked(64 * 1024):
                out.write(chunk)
                written += len(chunk)
        return written

    async def _open_results(
        self, job_id: str, format: str, status: str | None, partial: bool
    ) -> aiohttp.ClientResponse:
        params = _params(format=format, status=status, partial="true" if partial else None)
        path = _job(job_id) + "/results"
        http = self._http()
        return await http.retrying(lambda: http.open("GET", path, params=params), idempotent=True)

    async def operations(self) -> builtins.list[dict[str, Any]]:
        """The registered operations with their item schemas and limits."""
        data: builtins.list[dict[str, Any]] = (
            await self._http().call("GET", paths.OPERATIONS)
        ).body["data"]
        return data

    # -- change ------------------------------------------------------------

    async def cancel(self, job_id: str) -> RemoteJob:
        """Cancel (idempotent); the job comes back cancelled, or still winding down."""
        return RemoteJob.from_json((await self._http().call("POST", _job(job_id) + "/cancel")).body)

    async def retry(self, job_id: str) -> RemoteJob:
        """A new job made of a finished job's failed items."""
        reply = await self._http().call("POST", _job(job_id) + "/retry", idempotent=False)
        return RemoteJob.from_json(reply.body)

    async def delete(self, job_id: str) -> None:
        """Delete a finished job and its items."""
        await self._http().call("DELETE", _job(job_id), idempotent=False)

    # -- follow ------------------------------------------------------------

    async def events(
        self, job_id: str, *, last_event_id: int | None = None
    ) -> AsyncIterator[Event]:
        """The job's progress events until its terminal one; a dropped stream is resumed
        with `Last-Event-ID`, so no event is lost or repeated."""
        last, delay_s, failures = last_event_id, self.max_reconnect_delay_s, 0
        while True:
            try:
                async with contextlib.aclosing(self._stream(job_id, last)) as stream:
                    async for raw in stream:
                        failures = 0
                        if raw.retry_ms is not None:
                            delay_s = min(raw.retry_ms / 1000, self.max_reconnect_delay_s)
                        event = _event(raw)
                        last = event.seq if event.seq is not None else last
                        yield event
                        if event.is_terminal:
                            return
            except _StreamFinished:
                return
            except TransportError:
                failures += 1
                if failures >= self._retry.max_attempts:
                    raise
            # The stream ended before the terminal event: it was cut, resume it.
            logger.info("event stream of %s dropped; resuming after id %s", job_id, last)
            await asyncio.sleep(delay_s)

    async def _stream(self, job_id: str, last: int | None) -> AsyncGenerator[RawEvent, None]:
        headers = {"Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        http = self._http()
        try:
            resp = await http.open("GET", _job(job_id) + "/events", headers=headers)
        except aiohttp.ClientError as exc:
            raise http.transport_error(exc) from exc
        async with resp:
            if resp.status == 204:  # nothing newer than `last`: the job is finished
                raise _StreamFinished
            if resp.content_type != "text/event-stream":
                raise ClientError(f"not an event stream: {resp.content_type}")
            try:
                async for raw in read_events(resp):
                    yield raw
            except aiohttp.ClientError as exc:
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    # `timeout` as the issue names it (like asyncio.wait_for); seconds.
    async def wait(self, job_id: str, timeout: float | None = None) -> RemoteJob:  # noqa: ASYNC109
        """Until the job is terminal: SSE when available, else polling that honours
        `Retry-After` and ETags. Raises `WaitTimeout` after `timeout` seconds."""
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._follow(job_id)
        except TimeoutError:
            if deadline.expired():
                raise WaitTimeout(job_id, timeout or 0.0) from None
            raise

    async def _follow(self, job_id: str) -> RemoteJob:
        if self.use_sse:
            try:
                async for _ in self.events(job_id):
                    pass
                return await self.get(job_id)
            except Unauthorized:
                raise
            except ClientError as exc:
                logger.info("no event stream for %s (%s); polling instead", job_id, exc)
        return await self.poll(job_id)

    async def poll(self, job_id: str) -> RemoteJob:
        """Poll until terminal: conditional GETs (`If-None-Match`), paced by `Retry-After`."""
        etag: str | None = None
        job: RemoteJob | None = None
        while True:
            headers = {"If-None-Match": etag} if etag else None
            reply = await self._http().call("GET", _job(job_id), headers=headers)
            if reply.status != 304 or job is None:
                job, etag = RemoteJob.from_json(reply.body), reply.headers.get("ETag")
            if job.is_terminal:
                return job
            await asyncio.sleep(retry_after_s(reply.headers) or self.poll_interval_s)


class _StreamFinished(ClientError):
    """204 on resume: the job finished and every event was already seen."""


def _event(raw: RawEvent) -> Event:
    seq = int(raw.id) if raw.id and raw.id.isdigit() else None
    data = jsonutil.loads(raw.data) if raw.data else {}
    return Event(seq=seq, type=raw.event, data=data if isinstance(data, dict) else {})


def _job(job_id: str) -> str:
    return paths.job_path(paths.JOB, job_id)


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


def _submit_params(
    operation: str, ttl_seconds: int | None, webhook: str | Mapping[str, Any] | None
) -> dict[str, str]:
    params = {"operation": operation}
    if ttl_seconds is not None:
        params["ttl_seconds"] = str(ttl_seconds)
    if isinstance(webhook, str):
        params["webhook"] = webhook
    elif webhook is not None:
        params["webhook"] = str(webhook["url"])
        if webhook.get("events"):
            params["webhook_events"] = ",".join(webhook["events"])
    return params
