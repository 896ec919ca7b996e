"""Typed client errors: every problem+json answer becomes one, carrying its `code`."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of everything the bulkjobs client raises."""


class TransportError(ClientError):
    """The server could not be reached, or the connection dropped, after all retries."""


class ServerUnreachable(TransportError):
    """Nothing accepted a connection at the server's URL (refused, no route, no such host)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"no bulkjobs server at {url} ({reason})")
        self.url = url
        self.reason = reason


class WaitTimeout(ClientError, TimeoutError):
    """`wait()` gave up before the job reached a terminal state."""

    def __init__(self, job_id: str, timeout_s: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout_s:g} s")
        self.job_id = job_id
        self.timeout_s = timeout_s


class ApiError(ClientError):
    """An error answer of the API (RFC 9457 problem); `code` is the catalog code."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code: str = str(problem.get("code") or f"http_{status}")
        self.detail: str = str(problem.get("detail") or problem.get("title") or "")
        self.errors: list[dict[str, str]] = list(problem.get("errors") or [])
        self.retry_after_s: float | None = None
        super().__init__(f"{status} {self.code}: {self.detail}")


class BadRequest(ApiError):
    """400/413/415: the request itself is wrong (malformed JSON, bad parameter, too large)."""


class Unauthorized(ApiError):
    """401/403: missing, invalid or insufficient API key."""


class NotFound(ApiError):
    """404: no such job (or resource)."""


class Conflict(ApiError):
    """409: the job's state does not allow it (e.g. `job_terminal`, `job_not_terminal`)."""


class Gone(ApiError):
    """410: the job was deleted or expired (`job_deleted`, `job_expired`)."""


class ValidationFailed(ApiError):
    """422: the submission is well-formed but invalid; see `errors` (JSON pointers)."""


class Unavailable(ApiError):
    """429/503: busy or draining; `retry_after_s` says when to come back."""


class ServerError(ApiError):
    """5xx other than 503."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    406: BadRequest,
    409: Conflict,
    410: Gone,
    413: BadRequest,
    415: BadRequest,
    422: ValidationFailed,
    429: Unavailable,
    503: Unavailable,
}


def api_error(status: int, problem: dict[str, Any], retry_after_s: float | None) -> ApiError:
    """The typed error for an HTTP status and its problem body."""
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    err = kind(status, problem)
    err.retry_after_s = retry_after_s
    return err
