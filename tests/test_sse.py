"""`GET /bulk-jobs/{id}/events` against a real server: ordering, resume, heartbeat,
termination, bounded buffers, shutdown and the stream cap."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import attrs
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient

from bulkjobs.models import Job
from bulkjobs.web.keys import ENGINE
from tests.conftest import ClientFactory
from tests.sse_support import next_event, read_events, read_message
from tests.support import Gate, submit, wait_terminal

pytestmark = pytest.mark.both_backends  # the store's answers, on each backend


async def wait_running(client: TestClient, job_id: str) -> Job:
    """Wait on the hub until the job is running."""
    engine = client.app[ENGINE]
    async with asyncio.timeout(10):
        while True:
            job = (await engine.store.find_job(job_id)).job
            assert job is not None
            if job.status.value == "running":
                return job
            await engine.hub.wait_changed(job_id, job.seq, 10)


async def blocked_job(client: TestClient, gate: Gate, n: int = 6) -> Job:
    """A running `gated` job whose items wait for the gate (so it does not change)."""
    body = await submit(client, "gated", [{"n": i} for i in range(n)])
    await gate.entered.wait()
    return await wait_running(client, body["id"])


async def test_snapshot_first_then_ordered_ids_until_the_terminal_event(
    client: TestClient, gate: Gate
) -> None:
    job = await blocked_job(client, gate)
    resp = await client.get(f"/bulk-jobs/{job.id}/events")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    first = await read_message(resp)
    assert first is not None and first.retry_ms == 3000 and first.event is None
    snap = await next_event(resp)
    assert (snap.event, snap.id) == ("snapshot", job.seq)
    assert snap.data["job"]["id"] == job.id and snap.data["status"] == "running"
    gate.opened.set()
    rest = await read_events(resp)  # returns once the server closes the stream
    ids = [snap.id, *(m.id for m in rest)]
    assert ids == sorted(set(ids)), ids
    assert {m.event for m in rest} <= {"progress", "status"}
    last = rest[-1]
    assert (last.event, last.data["status"]) == ("status", "completed")
    assert last.data["processed"] == last.data["total_items"] == 6
    assert set(last.data) == {
        "seq", "job_id", "type", "status", "total_items", "processed",
        "succeeded", "failed", "cancelled", "progress", "at",
    }  # fmt: skip


async def test_terminal_job_gets_snapshot_and_terminal_event_then_close(
    client: TestClient,
) -> None:
    body = await submit(client, "echo", [{"n": i} for i in range(10)])
    job = await wait_terminal(client, body["id"])
    resp = await client.get(f"/bulk-jobs/{job.id}/events")
    events = await read_events(resp)
    assert [(m.event, m.id) for m in events] == [("snapshot", job.seq), ("status", job.seq)]
    assert events[1].data["status"] == "completed"
    # An EventSource reconnecting after the end is told to stop (204), not replayed.
    again = await client.get(f"/bulk-jobs/{job.id}/events", headers={"Last-Event-ID": "999"})
    assert again.status == 204


async def test_resume_skips_nothing_and_repeats_nothing(make_client: ClientFactory) -> None:
    client = await make_client(progress_interval_ms=0.0)  # every commit becomes an event
    body = await submit(client, "sleep", [{"ms": 2} for _ in range(300)])  # 30 chunks
    resp = await client.get(f"/bulk-jobs/{body['id']}/events")
    await next_event(resp)  # snapshot
    full = await read_events(resp)
    assert len(full) >= 5
    for cut in full[:-1]:
        for how in ("header", "query"):
            resumed = await open_resumed(client, body["id"], cut.id, how)
            tail = [(m.id, m.event, m.data) for m in await read_events(resumed)]
            assert tail == [(m.id, m.event, m.data) for m in full if m.id > cut.id]  # type: ignore[operator]


async def open_resumed(client: TestClient, job_id: str, last_id: Any, how: str) -> Any:
    if how == "header":
        return await client.get(
            f"/bulk-jobs/{job_id}/events", headers={"Last-Event-ID": str(last_id)}
        )
    return await client.get(f"/bulk-jobs/{job_id}/events?last_event_id={last_id}")


async def test_resume_beyond_the_hub_history_sends_a_fresh_snapshot(
    client: TestClient, gate: Gate
) -> None:
    job = await blocked_job(client, gate)
    client.app[ENGINE].hub.forget(job.id)  # as after a restart: the hub holds nothing
    resp = await client.get(f"/bulk-jobs/{job.id}/events", headers={"Last-Event-ID": "1"})
    snap = await next_event(resp)
    assert (snap.event, snap.id) == ("snapshot", job.seq)
    gate.opened.set()
    assert (await read_events(resp))[-1].data["status"] == "completed"


async def test_heartbeat_comments_at_the_configured_interval(
    make_client: ClientFactory, gate: Gate
) -> None:
    client = await make_client(sse_heartbeat_s=0.05)
    job = await blocked_job(client, gate)
    resp = await client.get(f"/bulk-jobs/{job.id}/events")
    await next_event(resp)
    for _ in range(2):
        msg = await read_message(resp)  # nothing else happens: only heartbeats arrive
        assert msg is not None and msg.comment == "ping" and msg.event is None
    gate.opened.set()


async def test_slow_consumer_is_coalesced_then_dropped_without_growing_memory(
    make_client: ClientFactory, gate: Gate
) -> None:
    client = await make_client(
        sse_buffer_events=8, sse_send_timeout_s=0.5, progress_interval_ms=0.0
    )
    hub = client.app[ENGINE].hub
    job = await blocked_job(client, gate)
    resp = await client.get(f"/bulk-jobs/{job.id}/events")  # and never read again
    await next_event(resp)
    high = 0
    for k in range(1, 40_000):  # ~14 MB of events: far beyond the socket buffers
        hub.publish(attrs.evolve(job, seq=job.seq + k, succeeded=k % 6))
        high = max(high, *hub.buffered(job.id), 0)
        if not hub.buffered(job.id):
            break  # the stalled client was dropped: its subscription is gone
        await asyncio.sleep(0)  # let the handler write what it can
    assert high <= 8
    async with asyncio.timeout(10):
        while hub.buffered(job.id):  # dropped once a write stalls past the send timeout
            hub.publish(attrs.evolve(job, seq=job.seq + 50_000, succeeded=1))
            await asyncio.sleep(0.05)
    resp.close()
    gate.opened.set()


async def test_shutdown_closes_open_streams_promptly(
    make_client: ClientFactory, gate: Gate
) -> None:
    client = await make_client()
    job = await blocked_job(client, gate)
    url = client.make_url(f"/bulk-jobs/{job.id}/events")
    async with ClientSession() as session:
        streams = [await session.get(url) for _ in range(3)]
        for resp in streams:
            await next_event(resp)
        started = time.monotonic()
        closing = asyncio.create_task(client.server.close())
        async with asyncio.timeout(5):
            for resp in streams:
                assert await read_events(resp) == []  # clean end of stream, no error
        assert time.monotonic() - started < 2
        gate.opened.set()
        await closing
    await client.close()


async def test_stream_cap_answers_503_with_retry_after(
    make_client: ClientFactory, gate: Gate
) -> None:
    client = await make_client(sse_max_streams=2)
    job = await blocked_job(client, gate)
    held = [await client.get(f"/bulk-jobs/{job.id}/events") for _ in range(2)]
    for resp in held:
        await next_event(resp)
    resp = await client.get(f"/bulk-jobs/{job.id}/events")
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "too_many_streams"
    assert int(resp.headers["Retry-After"]) >= 1
    gate.opened.set()
    for resp in held:
        await read_events(resp)
    again = await client.get(f"/bulk-jobs/{job.id}/events")  # slots are given back
    assert again.status == 200


async def test_unknown_job_and_bad_last_event_id_are_problems(client: TestClient) -> None:
    resp = await client.get("/bulk-jobs/job_nope/events")
    assert resp.status == 404 and (await resp.json())["code"] == "job_not_found"
    body = await submit(client, "echo", [{"n": 1}])
    resp = await client.get(f"/bulk-jobs/{body['id']}/events", headers={"Last-Event-ID": "x"})
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_request"
    assert client.app[ENGINE].hub.buffered("job_nope") == []
