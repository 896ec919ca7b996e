"""Per-tenant caps: items waiting, items stored, long polls; answers that never reveal
another tenant's load."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient

from bulkjobs.web.keys import LONG_POLLS
from bulkjobs.web.waiters import WaitSlots
from tests.support import Gate, wait_terminal
from tests.test_auth import ACME, GLOBEX, KEYS, auth


async def post(client: TestClient, key: str, op: str, n: int) -> tuple[int, dict[str, Any]]:
    body = {"operation": op, "items": [{"n": i} for i in range(n)]}
    resp = await client.post("/bulk-jobs", json=body, headers=auth(key))
    return resp.status, await resp.json()


async def test_backlog_quota_is_per_tenant(make_client: Any, gate: Gate) -> None:
    client: TestClient = await make_client(api_keys=KEYS, max_pending_items_per_tenant=5)
    assert (await post(client, ACME, "gated", 4))[0] == 202
    resp = await client.post(
        "/bulk-jobs", json={"operation": "gated", "items": [{"n": 1}] * 2}, headers=auth(ACME)
    )
    problem = await resp.json()
    assert (resp.status, problem["code"]) == (429, "tenant_backlog_full")
    assert int(resp.headers["Retry-After"]) >= 1
    assert "4 items waiting" in problem["detail"] and "limit of 5" in problem["detail"]
    assert (await post(client, ACME, "gated", 1))[0] == 202  # exactly at the cap fits
    assert (await post(client, GLOBEX, "gated", 5))[0] == 202  # globex has its own
    gate.opened.set()


async def test_storage_quota_counts_finished_jobs_until_deleted(make_client: Any) -> None:
    client: TestClient = await make_client(api_keys=KEYS, max_stored_items_per_tenant=3)
    status, job = await post(client, ACME, "echo", 2)
    assert status == 202
    await wait_terminal(client, job["id"])
    status, problem = await post(client, ACME, "echo", 2)
    assert (status, problem["code"]) == (507, "tenant_storage_full")
    assert "store 2 items" in problem["detail"]
    assert (await post(client, GLOBEX, "echo", 3))[0] == 202
    resp = await client.delete(f"/bulk-jobs/{job['id']}", headers=auth(ACME))
    assert resp.status == 204
    assert (await post(client, ACME, "echo", 3))[0] == 202  # room again


async def test_server_busy_does_not_reveal_the_global_backlog(make_client: Any, gate: Gate) -> None:
    client: TestClient = await make_client(api_keys=KEYS, max_pending_items=7)
    assert (await post(client, GLOBEX, "gated", 7))[0] == 202
    status, problem = await post(client, ACME, "echo", 1)
    assert (status, problem["code"]) == (503, "server_busy")
    assert not any(ch.isdigit() for ch in problem["detail"]), problem["detail"]
    gate.opened.set()


async def timed_poll(client: TestClient, key: str, job_id: str, wait_s: float) -> float:
    t0 = time.monotonic()
    resp = await client.get(f"/bulk-jobs/{job_id}?wait={wait_s}", headers=auth(key))
    assert resp.status == 200
    assert (await resp.json())["status"] in ("pending", "running")
    assert "Retry-After" in resp.headers
    return time.monotonic() - t0


async def test_long_polls_over_a_cap_answer_at_once(make_client: Any, gate: Gate) -> None:
    client: TestClient = await make_client(
        api_keys=KEYS, long_poll_max_per_tenant=1, long_poll_max_waiting=2
    )
    acme = (await post(client, ACME, "gated", 1))[1]["id"]
    globex = (await post(client, GLOBEX, "gated", 1))[1]["id"]
    await gate.wait_started(2)  # both jobs running: nothing changes until the gate opens
    slots = client.app[LONG_POLLS]
    with slots.hold("acme") as held:  # acme's one long poll is waiting
        assert held
        assert await timed_poll(client, ACME, acme, 10) < 1.0
        assert await timed_poll(client, GLOBEX, globex, 0.3) >= 0.3  # globex still waits
        with slots.hold("initech"):  # now the total cap is reached too
            assert await timed_poll(client, GLOBEX, globex, 10) < 1.0
    assert await timed_poll(client, ACME, acme, 0.3) >= 0.3  # slots are given back
    assert not slots.waiting
    gate.opened.set()


def test_wait_slots_count_per_tenant_and_in_total() -> None:
    slots = WaitSlots(total=3, per_tenant=2)
    with slots.hold("a") as a1, slots.hold("a") as a2, slots.hold("a") as a3:
        assert (a1, a2, a3) == (True, True, False)
        with slots.hold("b") as b1, slots.hold("b") as b2:
            assert (b1, b2) == (True, False)
    assert not slots.waiting
