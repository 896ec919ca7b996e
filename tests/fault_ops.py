"""Operations for the fault suite, served by a real process with
`--app tests.fault_ops:registry` (the demo operations plus `record`).

`record` appends `job_id:index` to the file named by `BULKJOBS_FAULT_LOG` (one
O_APPEND write per run, so lines from killed processes are never torn or lost),
then passes the `item` failpoint, then sleeps `ms`: counting the lines tells how
often each item really ran, across kills and restarts. An item with `"fail": true`
is logged the same way, then fails with `requested_failure` (so a retry of the job's
failures has something to retry).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs

from bulkjobs import ItemContext, ItemFailed, Registry, failpoints
from bulkjobs.demo import registry as demo_registry
from bulkjobs.registry import LifespanInfo

LOG_ENV = "BULKJOBS_FAULT_LOG"


@attrs.frozen
class RecordItem:
    ms: int = 0
    id: str | None = None
    fail: bool = False


class RunLog:
    """The append-only file of `job_id:index` lines."""

    def __init__(self) -> None:
        self.fd: int | None = None

    @asynccontextmanager
    async def lifespan(self, info: LifespanInfo) -> AsyncIterator[None]:
        path = os.environ.get(LOG_ENV)
        if path:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            yield
        finally:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def append(self, line: str) -> None:
        if self.fd is not None:
            os.write(self.fd, (line + "\n").encode())


def registry() -> Registry:
    """The demo operations plus `record`."""
    reg = demo_registry()
    log = RunLog()
    reg.lifespan(log.lifespan)

    @reg.operation(
        "record",
        item_type=RecordItem,
        batch_size=20,
        item_error_codes={"requested_failure": "The item asked to fail (`fail: true`)."},
    )
    async def record(item: RecordItem, ctx: ItemContext) -> dict[str, int]:
        log.append(f"{ctx.job_id}:{ctx.index}")
        failpoints.hit("item")  # crash tests: the item ran, its outcome is not stored
        if item.ms:
            await asyncio.sleep(item.ms / 1000)
        if item.fail:
            raise ItemFailed("requested_failure", f"item {ctx.index} asked to fail")
        return {"index": ctx.index}

    return reg


def read_runs(path: str) -> dict[str, int]:
    """`job_id:index` → how many times it ran (0 lines when the file does not exist)."""
    counts: dict[str, int] = {}
    if not os.path.exists(path):
        return counts
    with open(path, encoding="ascii") as f:
        for line in f:
            key = line.strip()
            if key:
                counts[key] = counts.get(key, 0) + 1
    return counts
