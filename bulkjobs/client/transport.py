"""One HTTP exchange with retries: connection errors and 429/503 are retried (with
`Retry-After` honoured) when the request is safe to repeat; error answers become
typed `ApiError`s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import attrs
from yarl import URL

from .. import jsonutil
from ..parsing import retry_after_s as parse_retry_after
from .errors import ApiError, ServerUnreachable, TransportError, Unavailable, api_error

logger = logging.getLogger(__name__)

T = TypeVar("T")
DataFactory = Callable[[], Any]


@attrs.frozen
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


@attrs.frozen
class RequestRetry:
    """How often and how long to retry a request that is safe to repeat."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_wait_s: float = 30.0

    def backoff_s(self, attempt: int) -> float:
        return float(min(self.max_wait_s, self.initial_backoff_s * 2 ** (attempt - 1)))


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` of an answer in seconds (delta-seconds or HTTP-date), or None."""
    return parse_retry_after(headers.get("Retry-After"), datetime.now(UTC))


async def raise_for_problem(resp: aiohttp.ClientResponse) -> None:
    """Raise the typed `ApiError` of an error answer (reads its problem body)."""
    if resp.status < 400:
        return
    text = await resp.text(errors="replace")
    try:
        problem = jsonutil.loads(text)
    except jsonutil.JSONDecodeError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"detail": text[:500]}
    raise api_error(resp.status, problem, retry_after_s(resp.headers))


class Transport:
    """A base URL, default headers and a session; the client's only door to HTTP."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        headers: Mapping[str, str],
        policy: RequestRetry,
    ) -> None:
        self.base_url = URL(base_url.rstrip("/"))
        self.session = session
        self.headers = dict(headers)
        self.policy = policy

    def url(self, path_or_link: str) -> URL:
        """An API path ("/bulk-jobs") or a link the server sent ("/api/bulk-jobs/x")."""
        if path_or_link.startswith(("http://", "https://")):
            return URL(path_or_link)
        base_path = self.base_url.path.rstrip("/")
        if path_or_link.startswith(base_path + "/"):
            return self.base_url.join(URL(path_or_link))
        return URL(str(self.base_url) + path_or_link)

    async def open(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: DataFactory | None = None,
    ) -> aiohttp.ClientResponse:
        """One attempt; the caller releases the response. Error answers raise `ApiError`."""
        resp = await self.session.request(
            method,
            self.url(path),
            params=params,
            headers={**self.headers, **(headers or {})},
            data=data() if data is not None else None,
        )
        try:
            await raise_for_problem(resp)
        except BaseException:
            resp.release()
            raise
        return resp

    async def fetch(self, method: str, path: str, **kw: Any) -> Reply:
        """One attempt, body read as JSON (None when empty)."""
        resp = await self.open(method, path, **kw)
        async with resp:
            raw = await resp.read()
            body = jsonutil.loads(raw) if raw else None
            return Reply(resp.status, resp.headers, body)

    async def call(self, method: str, path: str, *, idempotent: bool = True, **kw: Any) -> Reply:
        """`fetch` with retries when `idempotent`."""
        return await self.retrying(lambda: self.fetch(method, path, **kw), idempotent=idempotent)

    def transport_error(self, exc: aiohttp.ClientError) -> TransportError:
        """The client's error for a failed exchange; no server at all is told apart."""
        if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
            exc, aiohttp.ClientSSLError
        ):
            return ServerUnreachable(str(self.base_url), str(exc.os_error))
        return TransportError(f"{type(exc).__name__}: {exc}")

    async def retrying(self, attempt: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        """Run `attempt`, retrying dropped connections and 429/503 if it is safe."""
        last = self.policy.max_attempts if idempotent else 1
        for n in range(1, last + 1):
            try:
                return await attempt()
            except aiohttp.ClientError as exc:
                if isinstance(exc, aiohttp.ClientResponseError) or n == last:
                    raise self.transport_error(exc) from exc
                delay = self.policy.backoff_s(n)
            except Unavailable as err:
                if n == last:
                    raise
                delay = err.retry_after_s or self.policy.backoff_s(n)
            logger.info("retrying after %.2fs (attempt %d of %d)", delay, n, last)
            await asyncio.sleep(min(delay, self.policy.max_wait_s))
        raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["ApiError", "Reply", "RequestRetry", "Transport", "raise_for_problem"]
