"""Sync (plain `def`) handlers on the engine's own thread pool (issue 10).

Without a per-item timeout a chunk makes one hop to the pool and its loop runs in the
thread: it still stops between items when the job is cancelled, still retries, and
stops before the next item when its worker is cancelled at shutdown. With a timeout
every item has its own hop; a thread left running past its timeout is counted in
`bulkjobs_handler_threads_stuck` until it returns. Hung handler threads never take
the loop's default pool.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs import ItemContext, Registry, RetryableItemError
from bulkjobs.service.engine import Engine
from bulkjobs.web.keys import ENGINE
from tests.support import Value, submit, wait_terminal

pytestmark = pytest.mark.timeout(60)

STUCK = "bulkjobs_handler_threads_stuck"


class Hooks:
    """Sync operations that record where they ran and can be held on a thread event."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.calls: list[tuple[int, int, int]] = []  # (index, attempt, thread id)
        self.held = 0
        self.all_held = threading.Event()
        self.hold_count = 1
        self.registry = self._build()

    def _record(self, ctx: ItemContext) -> None:
        with self.lock:
            self.calls.append((ctx.index, ctx.attempt, threading.get_ident()))

    def _hold(self) -> None:
        with self.lock:
            self.held += 1
            if self.held >= self.hold_count:
                self.all_held.set()
        self.release.wait(30)

    def _build(self) -> Registry:
        reg = Registry()

        @reg.operation("sync_ctx", item_type=Value, batch_size=50)
        def sync_ctx(item: Value, ctx: ItemContext) -> dict[str, Any]:
            self._record(ctx)
            return {"job": ctx.job_id, "index": ctx.index, "key": ctx.idempotency_key}

        @reg.operation(
            "sync_flaky",
            item_type=Value,
            batch_size=20,
            retry={"max_attempts": 3, "initial_backoff_s": 0.001},
        )
        def sync_flaky(item: Value, ctx: ItemContext) -> dict[str, int]:
            self._record(ctx)
            if ctx.attempt < item.n:
                raise RetryableItemError("upstream_unavailable", "try again")
            return {"attempts": ctx.attempt}

        @reg.operation("sync_hold", item_type=Value, batch_size=100)
        def sync_hold(item: Value, ctx: ItemContext) -> None:
            self._record(ctx)
            if item.fail == "hold":
                self._hold()

        @reg.operation("sync_hold_one", item_type=Value, batch_size=1)
        def sync_hold_one(item: Value, ctx: ItemContext) -> None:
            self._hold()

        @reg.operation("sync_timeout", item_type=Value, batch_size=10, timeout_s=0.1)
        def sync_timeout(item: Value, ctx: ItemContext) -> None:
            self._record(ctx)
            if item.fail == "hold":
                self.release.wait(30)

        @reg.operation("echo", item_type=Value)
        async def echo(item: Value, ctx: ItemContext) -> dict[str, int]:
            return {"n": item.n}

        return reg


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.release.set()  # let held handler threads end before the app stops


class HopCounter:
    """Counts submits to the engine's handler pool (one per hop to a thread)."""

    def __init__(self, pool: Executor) -> None:
        self.count = 0
        real = pool.submit

        def submit(fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            self.count += 1
            return real(fn, *args, **kwargs)

        pool.submit = submit  # type: ignore[method-assign]


async def items_of(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/bulk-jobs/{job_id}/items?limit=1000")
    assert resp.status == 200
    return (await resp.json())["data"]  # type: ignore[no-any-return]


def stuck_threads(engine: Engine) -> float:
    value = engine.metrics.registry.get_sample_value(STUCK)
    assert value is not None
    return value


async def wait_pool_free(engine: Engine) -> None:
    """Return once every handler thread has taken a new task: the stuck calls have all
    returned, and their done callbacks (which lower the gauge) have run."""
    size = engine.settings.handler_pool_size
    barrier = threading.Barrier(size)
    futures = [engine.handler_threads.submit(barrier.wait, 10) for _ in range(size)]
    await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))


async def wait_held(hooks: Hooks) -> None:
    assert await asyncio.to_thread(hooks.all_held.wait, 10), "handlers were never entered"


async def test_a_chunk_of_a_sync_operation_is_one_hop(make_client: Any, hooks: Hooks) -> None:
    client = await make_client(registry=hooks.registry, workers=2)
    engine = client.app[ENGINE]
    hops = HopCounter(engine.handler_threads)
    body = await submit(client, "sync_ctx", [{"n": i} for i in range(200)])
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded) == ("completed", 200)
    assert hops.count == 4  # 200 items in chunks of 50
    threads_of_chunk: dict[int, set[int]] = {}
    for index, _attempt, ident in hooks.calls:
        threads_of_chunk.setdefault(index // 50, set()).add(ident)
    assert all(len(t) == 1 for t in threads_of_chunk.values()), threads_of_chunk
    assert threading.get_ident() not in {ident for _, _, ident in hooks.calls}
    items = await items_of(client, body["id"])
    assert items[7]["result"] == {"job": body["id"], "index": 7, "key": f"{body['id']}:7"}
    assert {i["attempts"] for i in items} == {1}


async def test_retries_happen_in_the_chunk_thread(make_client: Any, hooks: Hooks) -> None:
    client = await make_client(registry=hooks.registry, workers=2)
    hops = HopCounter(client.app[ENGINE].handler_threads)
    # n = attempts needed: 1 and 3 succeed (3 is the last allowed), 4 exhausts them
    body = await submit(client, "sync_flaky", [{"n": n} for n in (1, 3, 4, 2)])
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded, job.failed) == ("completed", 3, 1)
    assert hops.count == 1
    assert len({ident for _, _, ident in hooks.calls}) == 1
    attempts = sorted((index, attempt) for index, attempt, _ in hooks.calls)
    assert attempts == [(0, 1), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2)]
    items = await items_of(client, body["id"])
    assert [i["attempts"] for i in items] == [1, 3, 3, 2]
    assert items[1]["result"] == {"attempts": 3}
    assert items[2]["error"]["code"] == "retries_exhausted"
    assert items[2]["error"]["message"].startswith("upstream_unavailable after 3 attempts")


async def test_cancel_stops_a_sync_chunk_between_items(make_client: Any, hooks: Hooks) -> None:
    client = await make_client(registry=hooks.registry, workers=2)
    engine = client.app[ENGINE]
    items = [{"n": i, "fail": "hold" if i == 5 else None} for i in range(100)]
    body = await submit(client, "sync_hold", items)  # one chunk of 100
    await wait_held(hooks)  # the thread is in item 5
    cancelling = asyncio.create_task(client.post(f"/bulk-jobs/{body['id']}/cancel"))
    job = (await engine.store.find_job(body["id"])).job
    assert job is not None
    async with asyncio.timeout(10):
        while job.cancel_requested_at is None:
            await engine.hub.wait_changed(job.id, job.seq, 10)
            job = (await engine.store.find_job(body["id"])).job
            assert job is not None
    runs = engine.dispatcher.runs_for(job.pk)
    assert runs and all(run.stopping for run in runs)
    hooks.release.set()
    assert (await cancelling).status in (200, 202)
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded, job.cancelled) == ("cancelled", 6, 94)
    assert sorted(index for index, _, _ in hooks.calls) == list(range(6))


async def test_per_item_timeout_keeps_a_hop_per_item_and_counts_stuck_threads(
    make_client: Any, hooks: Hooks
) -> None:
    client = await make_client(registry=hooks.registry, workers=2)
    engine = client.app[ENGINE]
    hops = HopCounter(engine.handler_threads)
    items = [{"n": i, "fail": "hold" if i in (2, 7) else None} for i in range(10)]
    body = await submit(client, "sync_timeout", items)
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded, job.failed) == ("completed", 8, 2)
    assert hops.count == 10
    failed = [i for i in await items_of(client, body["id"]) if i["status"] == "failed"]
    assert [(i["index"], i["error"]["code"]) for i in failed] == [(2, "timeout"), (7, "timeout")]
    assert stuck_threads(engine) == 2
    metrics = await (await client.get("/metrics")).text()
    assert f"{STUCK} 2.0" in metrics
    hooks.release.set()
    await wait_pool_free(engine)
    assert stuck_threads(engine) == 0
    metrics = await (await client.get("/metrics")).text()
    assert f"{STUCK} 0.0" in metrics


async def test_hung_handlers_leave_the_default_pool_free(make_client: Any, hooks: Hooks) -> None:
    client = await make_client(registry=hooks.registry, workers=3, handler_threads=2)
    engine = client.app[ENGINE]
    # a default pool no larger than the hung handlers: sharing it, they would take it all
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
    hooks.hold_count = 2
    hung = await submit(client, "sync_hold_one", [{"n": 0}, {"n": 1}])  # 2 chunks, 2 threads
    await wait_held(hooks)  # every handler thread is taken
    # the loop's default pool (intake parsing, key hashing, DNS) still answers at once
    async with asyncio.timeout(5):
        assert await asyncio.to_thread(lambda: 42) == 42
    other = await submit(client, "echo", [{"n": i} for i in range(20)])
    assert (await wait_terminal(client, other["id"])).succeeded == 20
    hooks.release.set()
    assert (await wait_terminal(client, hung["id"])).succeeded == 2
    assert engine.alive


async def test_shutdown_abandons_a_sync_chunk_before_its_next_item(
    make_client: Any, hooks: Hooks
) -> None:
    client = await make_client(registry=hooks.registry, workers=2, shutdown_grace_s=0.1)
    engine = client.app[ENGINE]
    items = [{"n": i, "fail": "hold" if i == 0 else None} for i in range(10)]
    await submit(client, "sync_hold", items)
    await wait_held(hooks)
    await client.close()  # stops the engine: grace, cancel the workers, shut the pool down
    assert stuck_threads(engine) == 1  # the thread still runs item 0
    hooks.release.set()
    await asyncio.to_thread(engine.handler_threads.shutdown, wait=True)
    assert [index for index, _, _ in hooks.calls] == [0]  # items 1-9 never ran
    assert stuck_threads(engine) == 0
