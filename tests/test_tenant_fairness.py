"""Scheduling is fair per tenant first: one tenant's many jobs do not starve another's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient

from bulkjobs import ItemContext, Registry
from tests.support import Value, make_registry, wait_terminal
from tests.test_auth import ACME, GLOBEX, KEYS, auth

ITEM_S = 0.1  # each item sleeps this long; a chunk of 10 takes ~1 s


def tick_registry(started: asyncio.Event) -> Registry:
    """The test operations plus `tick`: a 100 ms item in batches of 10."""
    reg = make_registry()

    @reg.operation("tick", item_type=Value, batch_size=10)
    async def tick(item: Value, ctx: ItemContext) -> None:
        started.set()
        await asyncio.sleep(ITEM_S)

    return reg


async def submit_as(client: TestClient, key: str, items: list[Any]) -> str:
    resp = await client.post(
        "/bulk-jobs", json={"operation": "tick", "items": items}, headers=auth(key)
    )
    body = await resp.json()
    assert resp.status == 202, body
    return str(body["id"])


async def globex_wait_s(client: TestClient, started: asyncio.Event) -> float:
    """Seconds a 1-item job of globex takes, submitted after acme's 50 jobs started."""
    for _ in range(50):  # acme: 50 jobs of 20 items, about 25 s of work on 4 workers
        await submit_as(client, ACME, [{"n": i} for i in range(20)])
    await started.wait()  # acme's chunks are running and the work queue is full
    t0 = time.monotonic()
    job_id = await submit_as(client, GLOBEX, [{"n": 1}])
    job = await wait_terminal(client, job_id, timeout_s=10)
    assert job.succeeded == 1
    return time.monotonic() - t0


async def test_store_claims_per_tenant_first(make_client: Any) -> None:
    """With no local prefetch (one chunk per lease, a queue of one chunk), the next
    free worker gets globex's item: the store's claim order is tenant first."""
    started = asyncio.Event()
    client: TestClient = await make_client(
        tick_registry(started),
        api_keys=KEYS,
        workers=4,
        submit_rate_per_s=0,
        queue_chunks=1,
        load_page_items=10,
    )
    elapsed = await globex_wait_s(client, started)
    assert elapsed < 2.0, f"globex's 1-item job took {elapsed:.2f} s behind acme's jobs"


async def test_one_item_job_of_another_tenant_is_not_starved(make_client: Any) -> None:
    """With the default settings: the dispatcher paces its look-ahead by time (a lease
    of ~0.1 s of work, claimed when a worker is about to need it)."""
    started = asyncio.Event()
    client: TestClient = await make_client(
        tick_registry(started), api_keys=KEYS, workers=4, submit_rate_per_s=0
    )
    elapsed = await globex_wait_s(client, started)
    assert elapsed < 2.0, f"globex's 1-item job took {elapsed:.2f} s behind acme's jobs"
