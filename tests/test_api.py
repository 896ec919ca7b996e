"""The job API end to end against a real app, on a real SQLite file and on a real
PostgreSQL database."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosqlite
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.store import is_postgres_url
from bulkjobs.web.keys import ENGINE
from tests.consistency import assert_consistent
from tests.support import Gate, submit, wait_terminal

pytestmark = pytest.mark.both_backends

SEED = [{"id": "ord_123", "status": "cancelled"}, {"id": "ord_124", "status": "shipped"}]


async def query(db_path: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows straight from the store's database (`?` placeholders, either backend)."""
    if is_postgres_url(db_path):
        for n in range(1, len(args) + 1):
            sql = sql.replace("?", f"${n}", 1)
        conn = await asyncpg.connect(db_path)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()
    async with aiosqlite.connect(db_path) as db, db.execute(sql, args) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def order_statuses(db_path: str, ids: list[str]) -> dict[str, str]:
    marks = ",".join("?" * len(ids))
    rows = await query(db_path, f"SELECT id, status FROM orders WHERE id IN ({marks})", *ids)
    return {r[0]: r[1] for r in rows}


async def item_counts(db_path: str, job_id: str) -> dict[str, int]:
    """Counts straight from the items table, independent of the job's counters."""
    sql = (
        "SELECT i.status, count(*) FROM items i JOIN jobs j ON j.pk = i.job_pk"
        " WHERE j.id = ? GROUP BY i.status"
    )
    return {r[0]: r[1] for r in await query(db_path, sql, job_id)}


async def test_seed_example_verbatim(client: TestClient, db_path: str) -> None:
    resp = await client.post(
        "/bulk-jobs",
        data=b'{"operation": "update_orders_status", "items": [{"id": "ord_123", "status":'
        b' "cancelled"}, {"id": "ord_124", "status": "shipped"}]}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 202
    body = await resp.json()
    assert resp.headers["Location"] == f"/bulk-jobs/{body['id']}"
    assert int(resp.headers["Retry-After"]) >= 1
    assert body["id"].startswith("job_") and len(body["id"]) == 30
    assert body["operation"] == "update_orders_status"
    assert body["status"] == "pending"
    assert body["created_at"].endswith("Z")

    await wait_terminal(client, body["id"])
    resp = await client.get(resp.headers["Location"])
    job = await resp.json()
    assert resp.status == 200
    assert job["status"] == "completed"
    assert (job["total_items"], job["succeeded"], job["failed"]) == (2, 2, 0)
    assert job["progress"] == 1.0
    assert job["completed_at"] and job["started_at"]
    assert set(job["links"]) >= {"self", "events", "items", "failures", "results", "cancel"}
    assert "Retry-After" not in resp.headers
    assert await order_statuses(db_path, ["ord_123", "ord_124"]) == {
        "ord_123": "cancelled",
        "ord_124": "shipped",
    }


async def test_partial_success_with_item_error_codes(client: TestClient, db_path: str) -> None:
    items = [
        {"id": "ord_5", "status": "cancelled"},
        {"id": "ord_5", "status": "shipped"},  # cancelled orders cannot ship
        {"id": "ord_999999", "status": "paid"},  # no such order
        {"id": "ord_6", "status": "paid"},
    ]
    body = await submit(client, "update_orders_status", items)
    job = await wait_terminal(client, body["id"])
    assert job.status == "completed"  # partial success is not job failure
    assert (job.succeeded, job.failed) == (2, 2)

    resp = await client.get(f"/bulk-jobs/{body['id']}/items?status=failed")
    failed = (await resp.json())["data"]
    assert [(f["index"], f["id"], f["error"]["code"]) for f in failed] == [
        (1, "ord_5", "invalid_transition"),
        (2, "ord_999999", "order_not_found"),
    ]
    assert all(f["status"] == "failed" and f["attempts"] == 1 for f in failed)
    assert await item_counts(db_path, body["id"]) == {"succeeded": 2, "failed": 2}


async def test_counters_always_equal_item_outcomes(client: TestClient, db_path: str) -> None:
    items = [{"n": i, "fail": "bad_value" if i % 7 == 0 else None} for i in range(3000)]
    body = await submit(client, "echo", items)
    engine = client.app[ENGINE]
    seen = 0
    sub = engine.hub.subscribe(body["id"], maxsize=1000)
    async for _event in sub:
        # every committed snapshot of the file holds: counters == item outcomes, etc.
        if not is_postgres_url(db_path):  # (the checker reads SQLite files)
            await asyncio.to_thread(assert_consistent, db_path)
        seen += 1
    final = await wait_terminal(client, body["id"])
    counts = await item_counts(db_path, body["id"])
    assert counts == {"succeeded": final.succeeded, "failed": final.failed}
    assert final.failed == len([i for i in range(3000) if i % 7 == 0])
    assert seen >= 2


async def test_results_carry_handler_output_and_idempotency_key(client: TestClient) -> None:
    body = await submit(client, "echo", [{"n": 1}, {"n": 2, "id": "x-2"}])
    await wait_terminal(client, body["id"])
    resp = await client.get(f"/bulk-jobs/{body['id']}/items")
    data = (await resp.json())["data"]
    assert data[0]["result"] == {"n": 1, "attempt": 1, "key": f"{body['id']}:0"}
    assert data[1]["id"] == "x-2"
    assert "id" not in data[0]


async def test_list_jobs_filters_and_paginates(client: TestClient) -> None:
    ids = [(await submit(client, "echo", [{"n": i}]))["id"] for i in range(5)]
    other = (await submit(client, "sync_echo", [{"n": 1}]))["id"]
    for job_id in [*ids, other]:
        await wait_terminal(client, job_id)

    resp = await client.get("/bulk-jobs?operation=echo&limit=2")
    page = await resp.json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2]  # newest first
    collected = [j["id"] for j in page["data"]]
    while page["links"]["next"]:
        assert resp.headers["Link"] == f'<{page["links"]["next"]}>; rel="next"'
        resp = await client.get(page["links"]["next"])
        page = await resp.json()
        collected += [j["id"] for j in page["data"]]
    assert collected == ids[::-1]
    assert "Link" not in resp.headers

    resp = await client.get("/bulk-jobs?status=completed&operation=sync_echo")
    assert [j["id"] for j in (await resp.json())["data"]] == [other]
    resp = await client.get("/bulk-jobs?status=running")
    assert (await resp.json())["data"] == []


async def test_items_keyset_pagination(client: TestClient) -> None:
    body = await submit(client, "batch_sum", [{"n": i} for i in range(25)])
    await wait_terminal(client, body["id"])
    url = f"/bulk-jobs/{body['id']}/items?status=failed&limit=5"
    indexes: list[int] = []
    while url:
        resp = await client.get(url)
        page = await resp.json()
        indexes += [i["index"] for i in page["data"]]
        url = page["links"]["next"]
    assert indexes == list(range(1, 25, 2))


async def test_cancel_mid_job_keeps_finished_and_running_items(
    make_client: object, gate: Gate
) -> None:
    client: TestClient = await make_client(cancel_wait_s=10)  # type: ignore[operator]
    body = await submit(client, "gated", [{"n": i} for i in range(20)])
    await gate.entered.wait()
    cancel = asyncio.create_task(client.post(f"/bulk-jobs/{body['id']}/cancel"))
    engine = client.app[ENGINE]
    seq = 0
    while True:  # wait until the cancel request is recorded (the hub publishes it)
        event = await engine.hub.wait_changed(body["id"], seq, 5)
        assert event is not None
        if event.job.cancel_requested_at is not None:
            break
        seq = event.seq
    assert event.job.stop_requested == "cancelled"  # the store holds the stop request
    gate.opened.set()  # the two items in flight now finish
    resp = await cancel
    job = await resp.json()
    assert resp.status == 200, job
    assert job["status"] == "cancelled"
    assert job["succeeded"] == gate.started == 2
    assert job["cancelled"] == 18
    assert job["processed"] == 20
    assert job["cancel_requested_at"] is not None

    again = await client.post(f"/bulk-jobs/{body['id']}/cancel")
    problem = await again.json()
    assert again.status == 409 and problem["code"] == "job_terminal"


async def test_cancel_pending_job_and_delete(make_client: object, gate: Gate) -> None:
    client: TestClient = await make_client()  # type: ignore[operator]
    blocker = await submit(client, "gated", [{"n": 1}, {"n": 2}])
    await gate.wait_started(2)  # both of its items hold the operation's two slots
    # concurrency=2 is used up by the blocker: this job stays pending
    body = await submit(client, "gated", [{"n": 3}])
    resp = await client.delete(f"/bulk-jobs/{body['id']}")
    assert resp.status == 409 and (await resp.json())["code"] == "job_not_terminal"
    resp = await client.post(f"/bulk-jobs/{body['id']}/cancel")
    job = await resp.json()
    assert (resp.status, job["status"], job["cancelled"], job["started_at"]) == (
        200,
        "cancelled",
        1,
        None,
    )
    resp = await client.delete(f"/bulk-jobs/{body['id']}")
    assert resp.status == 204
    resp = await client.get(f"/bulk-jobs/{body['id']}")
    assert resp.status in (404, 410)
    gate.opened.set()
    await wait_terminal(client, blocker["id"])


async def test_operations_describe_schema_and_limits(client: TestClient) -> None:
    resp = await client.get("/operations")
    ops = {o["name"]: o for o in (await resp.json())["data"]}
    orders = ops["update_orders_status"]
    assert orders["item_schema"]["required"] == ["id", "status"]
    assert orders["item_schema"]["properties"]["status"]["enum"] == [
        "pending",
        "paid",
        "shipped",
        "delivered",
        "cancelled",
    ]
    assert orders["limits"]["batch_size"] == 1000
    assert "order_not_found" in orders["item_error_codes"]
    assert ops["slow"]["limits"]["timeout_s"] == 0.05


async def test_healthz(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["ready"] is True
