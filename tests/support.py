"""Operations and helpers shared by the tests (a real registry, real handlers)."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
from aiohttp.test_utils import TestClient

from bulkjobs import BatchContext, ItemContext, ItemFailed, Registry, RetryableItemError
from bulkjobs.demo import registry as demo_registry
from bulkjobs.models import Job
from bulkjobs.web.keys import ENGINE


@attrs.frozen
class Value:
    n: int
    id: str | None = None
    fail: str | None = None


class Gate:
    """Lets a test hold `gated` items until it opens the gate."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered = asyncio.Event()
        self.started = 0
        self._more = asyncio.Event()

    async def wait(self) -> None:
        self.started += 1
        self.entered.set()
        self._more.set()
        await self.opened.wait()

    async def wait_started(self, n: int) -> None:
        """Return once `n` items have entered the gate."""
        while self.started < n:
            self._more.clear()
            await self._more.wait()


def make_registry(gate: Gate | None = None) -> Registry:
    """The demo operations plus test operations."""
    reg = demo_registry()
    attempts: dict[str, int] = {}

    @reg.operation("echo", item_type=Value, batch_size=50)
    async def echo(item: Value, ctx: ItemContext) -> dict[str, Any]:
        if item.fail:
            raise ItemFailed(item.fail, f"item {ctx.index} failed as asked")
        return {"n": item.n, "attempt": ctx.attempt, "key": ctx.idempotency_key}

    @reg.operation("sync_echo", item_type=Value, batch_size=20)
    def sync_echo(item: Value, ctx: ItemContext) -> dict[str, int]:
        return {"double": item.n * 2}

    @reg.operation("boom", item_type=Value)
    async def boom(item: Value, ctx: ItemContext) -> None:
        if item.n % 2:
            raise RuntimeError("handler bug")

    @reg.operation("flaky", item_type=Value, retry={"max_attempts": 3, "initial_backoff_s": 0.001})
    async def flaky(item: Value, ctx: ItemContext) -> dict[str, int]:
        key = ctx.idempotency_key
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] < item.n:
            raise RetryableItemError("upstream_unavailable", "try again")
        return {"attempts": attempts[key]}

    @reg.operation("slow", item_type=Value, timeout_s=0.05)
    async def slow(item: Value, ctx: ItemContext) -> None:
        await asyncio.sleep(item.n / 1000)

    @reg.operation("threshold", item_type=Value, batch_size=10, max_failed_ratio=0.2)
    async def threshold(item: Value, ctx: ItemContext) -> None:
        if item.fail:
            raise ItemFailed(item.fail, "failed as asked")

    @reg.batch_operation("batch_sum", item_type=Value, batch_size=25)
    async def batch_sum(items: list[Value], ctx: BatchContext) -> list[Any]:
        return [ItemFailed("odd", "odd values fail") if v.n % 2 else {"n": v.n} for v in items]

    @reg.operation("gated", item_type=Value, batch_size=1, concurrency=2)
    async def gated(item: Value, ctx: ItemContext) -> None:
        if gate is not None:
            await gate.wait()

    return reg


async def wait_terminal(client: TestClient, job_id: str, timeout_s: float = 30) -> Job:
    """Wait on the engine's event hub (no sleeps) until the job is terminal."""
    engine = client.app[ENGINE]
    async with asyncio.timeout(timeout_s):
        while True:
            job = (await engine.store.find_job(job_id)).job
            assert job is not None, f"{job_id} vanished"
            if job.is_terminal:
                return job
            await engine.hub.wait_changed(job_id, job.seq, timeout_s)


async def submit(
    client: TestClient, operation: str, items: list[Any], **extra: Any
) -> dict[str, Any]:
    resp = await client.post("/bulk-jobs", json={"operation": operation, "items": items, **extra})
    body = await resp.json()
    assert resp.status == 202, body
    return body  # type: ignore[no-any-return]
