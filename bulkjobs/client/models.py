"""What the client hands back: jobs and progress events, parsed from the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


def _ts(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@attrs.frozen
class RemoteJobError:
    code: str
    message: str


@attrs.frozen
class RemoteJob:
    """A job as the server last described it; `raw` keeps every member as sent."""

    id: str
    operation: str
    status: str
    total_items: int
    processed: int
    succeeded: int
    failed: int
    cancelled: int
    progress: float
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None
    links: dict[str, str]
    error: RemoteJobError | None
    raw: dict[str, Any] = attrs.field(repr=False, eq=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RemoteJob:
        """Build from the job resource's JSON."""
        err = body.get("error")
        return cls(
            id=body["id"],
            operation=body["operation"],
            status=body["status"],
            total_items=body["total_items"],
            processed=body["processed"],
            succeeded=body["succeeded"],
            failed=body["failed"],
            cancelled=body["cancelled"],
            progress=body["progress"],
            created_at=_ts(body.get("created_at")),
            started_at=_ts(body.get("started_at")),
            completed_at=_ts(body.get("completed_at")),
            expires_at=_ts(body.get("expires_at")),
            links=dict(body.get("links") or {}),
            error=RemoteJobError(err["code"], err.get("message", "")) if err else None,
            raw=body,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def all_succeeded(self) -> bool:
        """Completed with every item succeeded."""
        return self.status == "completed" and self.succeeded == self.total_items


@attrs.frozen
class Event:
    """One Server-Sent Event of a job: `snapshot`, `progress` or `status`."""

    seq: int | None
    type: str
    data: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.data.get("status") or (self.data.get("job") or {}).get("status", ""))

    @property
    def is_terminal(self) -> bool:
        return self.type in ("status", "snapshot") and self.status in TERMINAL_STATUSES

    def count(self, name: str) -> int:
        """A counter (`processed`, `failed`, ...) from the event or its snapshot job."""
        source = self.data.get("job") if self.type == "snapshot" else self.data
        return int((source or {}).get(name, 0))
