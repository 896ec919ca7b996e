"""Supervision (issue 10, bug 2): every background loop survives transient store
errors, and a loop that dies anyway turns `/readyz` and submits into 503.

Before, the scheduler, the purger and the webhook dispatcher stopped for good on one
store exception (only logged), while submits still answered 202: accepted jobs never
ran. Each test here injects failures into the store call one loop makes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.models import utcnow
from bulkjobs.web.keys import ENGINE

from .support import submit, wait_terminal


class Flaky:
    """Wraps one store method: the first `times` calls raise `exc` (all when None)."""

    def __init__(self, fn: Callable[..., Awaitable[Any]], exc: Exception, times: int | None):
        self.fn, self.exc, self.times, self.calls = fn, exc, times, 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.times is None or self.calls <= self.times:
            raise self.exc
        return await self.fn(*args, **kwargs)


def inject(target: Any, name: str, exc: Exception, times: int | None = 2) -> Flaky:
    flaky = Flaky(getattr(target, name), exc, times)
    setattr(target, name, flaky)
    return flaky


TRANSIENT = sqlite3.OperationalError("disk I/O error")

#: (loop, the object whose method it calls, that method)
LOOPS = [
    ("dispatcher", "store", "claim"),
    ("writer", "store", "complete"),
    ("leases", "store", "heartbeat"),
    ("janitor", "store", "maintain"),
    ("purger", "store", "maintain"),
    ("webhooks", "store", "due"),
]


def _target(client: TestClient, owner: str) -> Any:
    assert owner == "store"
    return client.app[ENGINE].store


@pytest.mark.parametrize(("loop", "owner", "method"), LOOPS)
async def test_a_loop_recovers_from_transient_store_errors(
    make_client: Any, loop: str, owner: str, method: str
) -> None:
    client: TestClient = await make_client(lease_s=3.0, janitor_interval_s=0.05)
    engine = client.app[ENGINE]
    flaky = inject(_target(client, owner), method, TRANSIENT, times=3)
    engine.janitor.wake()
    body = await submit(client, "echo", [{"n": i} for i in range(120)])
    job = await wait_terminal(client, body["id"])
    assert job.status == "completed" and job.succeeded == 120
    async with asyncio.timeout(10):  # the loop reached its failing call and came back
        while flaky.calls <= flaky.times:  # type: ignore[operator]
            engine.janitor.wake()
            engine.webhooks.notify()
            await asyncio.sleep(0.05)
    assert engine.alive and not engine.dead_loops
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()


async def test_one_claim_error_no_longer_strands_accepted_jobs(make_client: Any) -> None:
    """The bug as reported: one store error in the scheduler, then 202s that never ran."""
    client: TestClient = await make_client()
    inject(client.app[ENGINE].store, "claim", TRANSIENT, times=1)
    jobs = [await submit(client, "echo", [{"n": i}]) for i in range(3)]
    for body in jobs:
        assert (await wait_terminal(client, body["id"])).status == "completed"


async def test_a_dead_loop_makes_readyz_and_submits_503(make_client: Any) -> None:
    client: TestClient = await make_client()
    engine = client.app[ENGINE]
    inject(engine.store, "claim", RuntimeError("a bug in claiming"), times=None)
    engine.dispatcher.wake()
    async with asyncio.timeout(10):
        await engine.supervisor.died.wait()
    assert list(engine.dead_loops) == ["dispatcher"]
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["dead_loops"] == ["dispatcher"]
    resp = await client.post("/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}]})
    problem = await resp.json()
    assert resp.status == 503 and problem["code"] == "service_degraded"
    assert "dispatcher" in problem["detail"] and "Retry-After" in resp.headers


async def test_a_failed_writer_commit_is_retried_with_the_same_outcomes(make_client: Any) -> None:
    client: TestClient = await make_client()
    engine = client.app[ENGINE]
    inject(engine.store, "complete", TRANSIENT, times=2)
    body = await submit(client, "echo", [{"n": i} for i in range(10)])
    job = await wait_terminal(client, body["id"], timeout_s=15)
    assert (job.succeeded, job.failed, job.cancelled) == (10, 0, 0)
    items = await (await client.get(f"/bulk-jobs/{body['id']}/items")).json()
    assert all(i["attempts"] == 1 for i in items["data"])


async def test_heartbeat_renews_our_leases(make_client: Any, gate: Any) -> None:
    client: TestClient = await make_client(lease_s=3.0)
    engine = client.app[ENGINE]
    body = await submit(client, "gated", [{"n": 1}])
    await gate.entered.wait()
    beat = await engine.store.heartbeat(
        engine.owner, engine.dispatcher.leases, lease_s=3.0, now=utcnow()
    )
    assert beat.renewed == 1 and not beat.stopping
    gate.opened.set()
    await wait_terminal(client, body["id"])


async def test_a_dispatcher_that_dies_mid_hand_out_gives_the_rest_back(make_client: Any) -> None:
    """A restarted dispatcher releases a lease whose chunks it had not all queued: the
    store leases the unqueued items again, and every item runs once."""
    client: TestClient = await make_client(load_page_items=200)
    engine = client.app[ENGINE]
    engine.dispatcher.pace.observe("echo", 1e-5)  # fast: one lease spans all 3 chunks
    queue, puts = engine.queue, 0
    real_put = queue.put_nowait

    def put_then_fail(chunk: Any) -> None:
        nonlocal puts
        puts += 1
        if puts == 2:
            raise RuntimeError("the dispatcher dies after queueing one chunk")
        real_put(chunk)

    queue.put_nowait = put_then_fail  # type: ignore[method-assign]
    body = await submit(client, "echo", [{"n": i} for i in range(150)])  # 3 chunks of 50
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded) == ("completed", 150)
    assert engine.supervisor.restarts["dispatcher"] == 1
    items = await (await client.get(f"/bulk-jobs/{body['id']}/items?limit=200")).json()
    assert [i["attempts"] for i in items["data"]] == [1] * 150
    assert {i["result"]["attempt"] for i in items["data"]} == {1}
