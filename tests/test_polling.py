"""Polling that costs little: ETag / 304, Retry-After exactly while active, long-poll."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient

from tests.support import Gate, submit, wait_terminal
from tests.test_sse import blocked_job, wait_running

pytestmark = pytest.mark.both_backends  # the store's answers, on each backend


async def test_unchanged_etag_gets_304_without_a_body(client: TestClient, gate: Gate) -> None:
    job = await blocked_job(client, gate)
    first = await client.get(f"/bulk-jobs/{job.id}")
    tag = first.headers["ETag"]
    assert tag.startswith('"') and not tag.startswith('W/"')
    again = await client.get(f"/bulk-jobs/{job.id}", headers={"If-None-Match": tag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["ETag"] == tag
    gate.opened.set()
    await wait_terminal(client, job.id)
    changed = await client.get(f"/bulk-jobs/{job.id}", headers={"If-None-Match": tag})
    assert changed.status == 200 and changed.headers["ETag"] != tag


async def test_retry_after_exactly_while_not_terminal(client: TestClient, gate: Gate) -> None:
    resp = await client.post("/bulk-jobs", json={"operation": "gated", "items": [{"n": 1}]})
    assert resp.status == 202 and int(resp.headers["Retry-After"]) >= 1
    job_id = (await resp.json())["id"]
    await gate.entered.wait()
    await wait_running(client, job_id)
    running = await client.get(f"/bulk-jobs/{job_id}")
    assert int(running.headers["Retry-After"]) >= 1
    tag = running.headers["ETag"]
    not_modified = await client.get(f"/bulk-jobs/{job_id}", headers={"If-None-Match": tag})
    assert not_modified.status == 304 and int(not_modified.headers["Retry-After"]) >= 1
    gate.opened.set()
    await wait_terminal(client, job_id)
    done = await client.get(f"/bulk-jobs/{job_id}")
    assert (await done.json())["status"] == "completed"
    assert "Retry-After" not in done.headers


async def test_retry_after_adapts_to_the_observed_rate(client: TestClient) -> None:
    """A slow job asks for slower polling than a job about to finish."""
    body = await submit(client, "sleep", [{"ms": 40} for _ in range(2000)])
    async with asyncio.timeout(20):
        while True:
            resp = await client.get(f"{body['links']['self']}?wait=5")
            job = await resp.json()
            if job["processed"] >= 200:
                break
    # ~2000 items at ~100-ish items/s: several seconds left, so the hint exceeds the floor.
    assert int(resp.headers["Retry-After"]) > 1
    await client.post(body["links"]["cancel"])


async def test_long_poll_returns_on_change(client: TestClient, gate: Gate) -> None:
    job = await blocked_job(client, gate)
    first = await client.get(f"/bulk-jobs/{job.id}")
    tag = first.headers["ETag"]
    started = time.monotonic()
    poll = asyncio.create_task(
        client.get(f"/bulk-jobs/{job.id}?wait=30", headers={"If-None-Match": tag})
    )
    gate.opened.set()
    resp = await poll
    assert resp.status == 200 and resp.headers["ETag"] != tag
    assert time.monotonic() - started < 10
    assert (await resp.json())["processed"] >= 1


async def test_long_poll_times_out_with_the_current_state(client: TestClient, gate: Gate) -> None:
    job = await blocked_job(client, gate)
    tag = (await client.get(f"/bulk-jobs/{job.id}")).headers["ETag"]
    started = time.monotonic()
    resp = await client.get(f"/bulk-jobs/{job.id}?wait=0.3", headers={"If-None-Match": tag})
    assert time.monotonic() - started >= 0.3
    assert resp.status == 304 and resp.headers["ETag"] == tag  # still current
    plain = await client.get(f"/bulk-jobs/{job.id}?wait=0.2")  # no validator: 200
    assert plain.status == 200 and (await plain.json())["status"] == "running"
    gate.opened.set()


async def test_long_poll_answers_at_once_when_stale_or_terminal(client: TestClient) -> None:
    body = await submit(client, "echo", [{"n": 1}])
    await wait_terminal(client, body["id"])
    started = time.monotonic()
    stale = await client.get(f"/bulk-jobs/{body['id']}?wait=30", headers={"If-None-Match": '"x"'})
    terminal = await client.get(f"/bulk-jobs/{body['id']}?wait=30")
    assert stale.status == terminal.status == 200
    assert time.monotonic() - started < 5


async def test_wait_out_of_range_is_a_problem(client: TestClient) -> None:
    body = await submit(client, "echo", [{"n": 1}])
    for bad in ("-1", "61", "abc", "nan", "inf"):
        resp = await client.get(f"/bulk-jobs/{body['id']}?wait={bad}")
        assert resp.status == 400, bad
        problem = await resp.json()
        assert problem["code"] == "invalid_request" and problem["parameter"] == "wait"


async def test_conditional_get_never_hides_a_deleted_job(client: TestClient) -> None:
    body = await submit(client, "echo", [{"n": 1}])
    await wait_terminal(client, body["id"])
    tag = (await client.get(f"/bulk-jobs/{body['id']}")).headers["ETag"]
    cached = await client.get(f"/bulk-jobs/{body['id']}", headers={"If-None-Match": tag})
    assert cached.status == 304
    assert (await client.delete(f"/bulk-jobs/{body['id']}")).status == 204
    gone = await client.get(f"/bulk-jobs/{body['id']}", headers={"If-None-Match": tag})
    assert gone.status in (404, 410)
