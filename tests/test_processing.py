"""Handlers, retries, timeouts, thresholds, fairness and in-process recovery."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosqlite
import attrs
from aiohttp.test_utils import TestClient

from bulkjobs import ItemContext, Registry
from bulkjobs.config import Settings
from bulkjobs.models import JobStatus
from bulkjobs.service.engine import Engine
from bulkjobs.service.jobs import Form, JobService
from bulkjobs.service.upload import BytesBody
from bulkjobs.web.keys import ENGINE
from tests.support import Value, make_registry, submit, wait_terminal


async def items_of(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/bulk-jobs/{job_id}/items?limit=1000")
    return (await resp.json())["data"]  # type: ignore[no-any-return]


async def test_exception_fails_item_as_internal_error_without_killing_workers(
    client: TestClient,
) -> None:
    body = await submit(client, "boom", [{"n": i} for i in range(40)])
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded, job.failed) == ("completed", 20, 20)
    errors = {i["error"]["code"] for i in await items_of(client, body["id"]) if "error" in i}
    assert errors == {"internal_error"}
    assert client.app[ENGINE].alive
    # the pool still works
    again = await submit(client, "echo", [{"n": 1}])
    assert (await wait_terminal(client, again["id"])).succeeded == 1


async def test_retryable_errors_are_retried_then_exhausted(client: TestClient) -> None:
    body = await submit(client, "flaky", [{"n": 1}, {"n": 3}, {"n": 9}])
    job = await wait_terminal(client, body["id"])
    items = await items_of(client, body["id"])
    assert [i["attempts"] for i in items] == [1, 3, 3]
    assert items[1]["result"] == {"attempts": 3}
    assert items[2]["error"]["code"] == "retries_exhausted"
    assert (job.succeeded, job.failed) == (2, 1)


async def test_timeout_fails_item_as_timeout(client: TestClient) -> None:
    body = await submit(client, "slow", [{"n": 0}, {"n": 5000}])
    job = await wait_terminal(client, body["id"])
    items = await items_of(client, body["id"])
    assert items[0]["status"] == "succeeded"
    assert items[1]["error"]["code"] == "timeout"
    assert job.failed == 1


async def test_sync_handler_runs_in_a_thread(client: TestClient) -> None:
    body = await submit(client, "sync_echo", [{"n": i} for i in range(30)])
    await wait_terminal(client, body["id"])
    items = await items_of(client, body["id"])
    assert [i["result"]["double"] for i in items] == [2 * i for i in range(30)]


async def test_batch_handler_per_item_failures(client: TestClient) -> None:
    body = await submit(client, "batch_sum", [{"n": i} for i in range(60)])
    job = await wait_terminal(client, body["id"])
    assert (job.succeeded, job.failed) == (30, 30)
    items = await items_of(client, body["id"])
    assert items[1]["error"] == {"code": "odd", "message": "odd values fail"}


async def test_failure_threshold_fails_the_job(client: TestClient) -> None:
    items = [{"n": i, "fail": "bad" if i < 30 else None} for i in range(100)]
    body = await submit(client, "threshold", items)
    job = await wait_terminal(client, body["id"])
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == "failure_threshold_exceeded"
    assert job.failed > 20
    assert job.processed == 100  # the rest is cancelled, counters still add up
    resp = await client.get(f"/bulk-jobs/{body['id']}")
    assert (await resp.json())["error"]["code"] == "failure_threshold_exceeded"


async def test_bad_handler_results_fail_items(make_client: Any) -> None:
    reg = Registry()

    @reg.operation("garbage", item_type=Value)
    async def garbage(item: Value, ctx: ItemContext) -> object:
        return object()  # not JSON

    @reg.batch_operation("short", item_type=Value)
    async def short(items: list[Value], ctx: Any) -> list[None]:
        return [None]

    client = await make_client(registry=reg)
    a = await submit(client, "garbage", [{"n": 1}])
    b = await submit(client, "short", [{"n": 1}, {"n": 2}])
    for body in (a, b):
        job = await wait_terminal(client, body["id"])
        assert job.failed == job.total_items
        items = await items_of(client, body["id"])
        assert {i["error"]["code"] for i in items} == {"internal_error"}


async def test_small_job_is_not_starved_by_a_big_one(make_client: Any) -> None:
    client = await make_client(workers=2)
    big = await submit(client, "noop", [{}] * 50_000)
    small = await submit(client, "noop", [{}] * 10)
    done = await wait_terminal(client, small["id"])
    assert done.status == "completed"
    big_now = (await client.app[ENGINE].store.find_job(big["id"])).job
    assert big_now is not None and big_now.processed < 50_000 / 2
    assert (await wait_terminal(client, big["id"], timeout_s=60)).succeeded == 50_000


async def test_concurrency_limit_per_operation(make_client: Any, gate: Any) -> None:
    client = await make_client(workers=6)
    await submit(client, "gated", [{"n": i} for i in range(10)])
    await submit(client, "gated", [{"n": i} for i in range(10)])
    await gate.entered.wait()
    engine = client.app[ENGINE]
    async with asyncio.timeout(5):
        await gate.wait_started(2)
    # Every chance to over-dispatch: several claim rounds (each a store transaction).
    for _ in range(5):
        engine.dispatcher.wake()
        await asyncio.sleep(0.02)
    assert gate.started == 2  # concurrency=2, although 6 workers are idle
    assert engine.workers.busy == 2
    gate.opened.set()


async def test_restart_resumes_and_runs_each_item_once(settings: Settings) -> None:
    settings = attrs.evolve(settings, shutdown_grace_s=0.2)
    calls: dict[int, int] = {}
    release = asyncio.Event()

    def registry() -> Registry:
        reg = make_registry()

        @reg.operation("counted", item_type=Value, batch_size=5)
        async def counted(item: Value, ctx: ItemContext) -> None:
            calls[ctx.index] = calls.get(ctx.index, 0) + 1
            if ctx.index >= 30:
                await release.wait()

        return reg

    first = Engine(settings, registry())
    await first.start()
    svc = JobService(first)
    raw = b'{"operation": "counted", "items": [' + b",".join([b'{"n": 1}'] * 100) + b"]}"
    job, _ = await svc.submit(BytesBody(raw), Form(False, {}, len(raw)), "default")
    while (await svc.get(job.id, "default")).succeeded < 30:
        await first.hub.wait_changed(job.id, (await svc.get(job.id, "default")).seq, 5)
    await first.stop()  # items 30.. are blocked: they stay pending

    stored = await _statuses(settings.db_path, job.id)
    assert stored.count("succeeded") == 30 and stored.count("pending") == 70

    release.set()
    second = Engine(settings, registry())
    await second.start()
    try:
        svc = JobService(second)
        while not (current := await svc.get(job.id, "default")).is_terminal:
            await second.hub.wait_changed(job.id, current.seq, 5)
        assert (current.status, current.succeeded) == ("completed", 100)
    finally:
        await second.stop()
    assert all(calls[i] == 1 for i in range(30))  # finished items never ran again
    assert all(calls[i] in (1, 2) for i in range(30, 100))  # in flight at most twice
    assert sum(1 for i in range(30, 100) if calls[i] == 2) <= settings.workers * 5
    assert await _attempts(settings.db_path, job.id) == {1}


async def _statuses(db_path: str, job_id: str) -> list[str]:
    sql = "SELECT i.status FROM items i JOIN jobs j ON j.pk = i.job_pk WHERE j.id = ? ORDER BY idx"
    async with aiosqlite.connect(db_path) as db, db.execute(sql, (job_id,)) as cur:
        return [r[0] for r in await cur.fetchall()]


async def _attempts(db_path: str, job_id: str) -> set[int]:
    sql = "SELECT DISTINCT attempts FROM items i JOIN jobs j ON j.pk = i.job_pk WHERE j.id = ?"
    async with aiosqlite.connect(db_path) as db, db.execute(sql, (job_id,)) as cur:
        return {r[0] for r in await cur.fetchall()}


async def test_a_bug_in_the_worker_path_fails_the_job_not_the_worker(
    client: TestClient, monkeypatch: Any
) -> None:
    from bulkjobs.service.executor import Executor

    real = Executor.run_chunk

    async def broken(self: Executor, run: Any, chunk: Any) -> Any:
        if run.operation.name == "sync_echo":
            raise RuntimeError("simulated bug outside any handler")
        return await real(self, run, chunk)

    monkeypatch.setattr(Executor, "run_chunk", broken)
    bad = await submit(client, "sync_echo", [{"n": i} for i in range(50)])
    job = await wait_terminal(client, bad["id"])
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == "internal_error"
    assert job.processed == 50 and job.cancelled == 50  # nothing left pending
    assert client.app[ENGINE].alive  # every worker still runs
    good = await submit(client, "echo", [{"n": 1}] * 20)
    assert (await wait_terminal(client, good["id"])).succeeded == 20
