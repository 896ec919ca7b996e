"""`GET /events`: every job of the caller's tenant in one Server-Sent Events stream;
`GET /overview`; per-tenant caps on event streams. In-process servers, real SQLite."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from bulkjobs import jsonutil
from bulkjobs.models import Job, JobStatus
from bulkjobs.security import hash_key
from bulkjobs.service.events import EventHub
from bulkjobs.web.keys import ENGINE, SIGNER
from tests.conftest import ClientFactory
from tests.support import Gate, submit, wait_terminal

ACME, GLOBEX = "bjk_acme-stream-key-0001", "bjk_globex-stream-key-0002"
KEYS = f"acme:sha256:{hash_key(ACME)},globex:sha256:{hash_key(GLOBEX)}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@attrs.define
class Event:
    id: str | None = None
    event: str | None = None
    data: Any = None


async def next_event(resp: ClientResponse) -> Event:
    """The next dispatched event (retry and heartbeat blocks skipped)."""
    msg = Event()
    while line := await resp.content.readline():
        text = line.decode().rstrip("\r\n")
        if text == "":
            if msg.event is not None:
                return msg
            msg = Event()
            continue
        field, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            msg.id = value
        elif field == "event":
            msg.event = value
        elif field == "data":
            msg.data = jsonutil.loads(value)
    raise AssertionError("the stream ended")


async def events_of(resp: ClientResponse, job_id: str, until: str) -> list[Event]:
    """Events of `job_id` (others must not appear) until its status is `until`."""
    seen = []
    while True:
        ev = await next_event(resp)
        assert ev.data["job_id"] == job_id, ev
        seen.append(ev)
        if ev.data["status"] == until:
            return seen


async def post(client: TestClient, key: str, operation: str, items: list[Any]) -> dict[str, Any]:
    resp = await client.post(
        "/bulk-jobs", json={"operation": operation, "items": items}, headers=auth(key)
    )
    assert resp.status == 202, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


@pytest.fixture
async def secured(make_client: ClientFactory) -> TestClient:
    return await make_client(api_keys=KEYS)


async def test_the_stream_carries_only_the_callers_jobs_from_snapshot_to_status(
    secured: TestClient, gate: Gate
) -> None:
    running = await post(secured, ACME, "gated", [{"n": i} for i in range(3)])
    await gate.entered.wait()
    theirs = await post(secured, GLOBEX, "gated", [{"n": 1}])
    resp = await secured.get("/events", headers=auth(ACME))
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    snap = await next_event(resp)
    assert snap.event == "snapshot"
    assert [j["job"]["id"] for j in snap.data["jobs"]] == [running["id"]]
    assert snap.data["truncated"] is False

    new = await post(secured, ACME, "echo", [{"n": 1}, {"n": 2, "fail": "bad"}])
    seen = await events_of(resp, new["id"], until="completed")
    assert seen[0].event == "created"
    assert seen[0].data["operation"] == "echo" and seen[0].data["status"] == "pending"
    assert seen[-1].event == "status"
    assert (seen[-1].data["succeeded"], seen[-1].data["failed"]) == (1, 1)
    ids = [int(e.id.split("-")[1]) for e in [snap, *seen] if e.id]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    gate.opened.set()
    # globex's job finishes too, but acme's stream shows only acme's
    await wait_terminal(secured, theirs["id"])
    await events_of(resp, running["id"], until="completed")
    resp.close()


async def test_resume_replays_missed_events_else_sends_a_fresh_snapshot(
    client: TestClient,
) -> None:
    resp = await client.get("/events")
    snap = await next_event(resp)
    assert snap.event == "snapshot" and snap.data["jobs"] == []
    first = await submit(client, "echo", [{"n": 1}])
    seen = await events_of(resp, first["id"], until="completed")
    resp.close()
    missed = await submit(client, "echo", [{"n": 2}])
    await wait_terminal(client, missed["id"])

    again = await client.get("/events", headers={"Last-Event-ID": str(seen[-1].id)})
    replay = await events_of(again, missed["id"], until="completed")
    assert replay[0].event == "created"  # no snapshot: the missed events themselves
    again.close()

    # another process's (or an earlier run's) id: a snapshot of the active jobs
    foreign = await client.get("/events", headers={"Last-Event-ID": "zzzz-3"})
    assert (await next_event(foreign)).event == "snapshot"
    foreign.close()
    bad = await client.get("/events", headers={"Last-Event-ID": "not an id"})
    assert bad.status == 400 and (await bad.json())["code"] == "invalid_request"


async def test_browsers_open_it_with_the_overview_token_only(
    secured: TestClient, gate: Gate
) -> None:
    over = await secured.get("/overview", headers=auth(ACME))
    assert over.status == 200
    link = (await over.json())["links"]["events"]
    assert link.startswith("/events?token=")
    resp = await secured.get(link)  # no header, like EventSource
    assert resp.status == 200
    assert (await next_event(resp)).event == "snapshot"
    resp.close()
    job = await post(secured, ACME, "echo", [{"n": 1}])
    job_token = job["links"]["events"].split("token=")[1]
    assert (await secured.get(f"/events?token={job_token}")).status == 401
    tenant_token = link.split("token=")[1]
    per_job = await secured.get(f"/bulk-jobs/{job['id']}/events?token={tenant_token}")
    assert per_job.status == 401
    assert (await secured.get("/events")).status == 401
    expired = secured.app[SIGNER].sign("*", "acme", now=0)
    assert (await secured.get(f"/events?token={expired}")).status == 401


async def test_overview_counts_only_the_callers_load(secured: TestClient, gate: Gate) -> None:
    mine = await post(secured, ACME, "gated", [{"n": i} for i in range(5)])
    await gate.wait_started(2)
    for _ in range(3):
        await post(secured, GLOBEX, "gated", [{"n": i} for i in range(50)])
    stream = await secured.get("/events", headers=auth(ACME))
    await next_event(stream)
    body = await (await secured.get("/overview", headers=auth(ACME))).json()
    assert body["running_jobs"] == 1 and body["pending_jobs"] == 0
    assert body["backlog_items"] == 5  # none has finished: all five are still to run
    assert body["open_streams"] == 1
    assert body["items_per_s"] >= 0
    theirs = await (await secured.get("/overview", headers=auth(GLOBEX))).json()
    assert theirs["backlog_items"] == 150 and theirs["open_streams"] == 0
    stream.close()
    gate.opened.set()
    await wait_terminal(secured, mine["id"])


async def test_per_tenant_cap_leaves_other_tenants_their_streams(
    make_client: ClientFactory,
) -> None:
    client = await make_client(api_keys=KEYS, sse_max_streams=3, sse_max_streams_per_tenant=2)
    held = [await client.get("/events", headers=auth(ACME)) for _ in range(2)]
    for resp in held:
        assert resp.status == 200
        await next_event(resp)
    refused = await client.get("/events", headers=auth(ACME))
    assert refused.status == 429
    problem = await refused.json()
    assert problem["code"] == "too_many_open_streams"
    assert int(refused.headers["Retry-After"]) >= 1
    assert "3" not in problem["detail"]  # the server's cap and load stay unsaid
    theirs = await client.get("/events", headers=auth(GLOBEX))
    assert theirs.status == 200  # acme at its cap does not take globex's slot
    await next_event(theirs)
    full = await client.get("/events", headers=auth(GLOBEX))
    assert full.status == 503
    problem = await full.json()
    assert problem["code"] == "too_many_streams"
    assert not any(ch.isdigit() for ch in problem["detail"])  # no counts of others
    for resp in [*held, theirs]:
        resp.close()


async def test_the_stream_ends_on_shutdown(client: TestClient) -> None:
    resp = await client.get("/events")
    await next_event(resp)
    client.app[ENGINE].begin_drain()
    assert await resp.content.read() in (b"", b": ping\r\n\r\n")
    refused = await client.get("/events")
    assert refused.status == 503 and (await refused.json())["code"] == "shutting_down"


def job(n: int, seq: int, status: JobStatus = JobStatus.RUNNING) -> Job:
    return Job(id=f"job_{n}", operation="op", status=status, total_items=10, seq=seq)


async def test_a_slow_tenant_subscriber_keeps_the_newest_per_job_then_lags() -> None:
    hub = EventHub(progress_interval_s=0)
    sub = hub.subscribe_tenant("default", maxsize=2)
    hub.publish(job(1, 1, JobStatus.PENDING))
    hub.publish(job(1, 2))
    hub.publish(job(1, 3))
    hub.publish(job(2, 1))
    batch = await sub.next_batch()
    assert batch is not None
    assert [(e.event.job_id, e.event.seq, e.type) for e in batch] == [
        ("job_1", 3, "created"),  # the newest, still marked as the job's creation
        ("job_2", 1, "status"),
    ]
    for n in range(3, 6):  # three jobs change before it reads: more than its buffer
        hub.publish(job(n, 1))
    assert len(sub) == 0 and await sub.next_batch() == []
    assert sub.take_lagged() and not sub.take_lagged()  # the stream owes one snapshot
    assert hub.tenant_since("default", f"{hub.epoch}-0") is not None
    hub.close_all()
    assert await sub.next_batch() is None
