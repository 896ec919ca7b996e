"""Webhooks end to end: a real app, a real receiver app, real SQLite, real HTTP."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiosqlite
import pytest

from bulkjobs import ItemContext
from bulkjobs.models import utcnow
from bulkjobs.registry import Registry
from bulkjobs.web.keys import ENGINE
from tests.support import Value, make_registry, submit, wait_terminal
from tests.webhook_support import (
    HANG,
    deliveries,
    random_secret,
    start_receiver,
    verify,
    wait_quiet,
)

SECRET = random_secret()
FAST = {
    "webhook_secrets": SECRET,
    "webhook_allow_private": True,
    "webhook_retry_schedule_s": "0.05,0.05,0.05",
    "webhook_timeout_s": 5.0,
}


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Any:
    rec = await start_receiver(aiohttp_server)
    yield rec
    rec.release.set()


async def test_completed_job_is_delivered_signed(make_client: Any, receiver: Any) -> None:
    client = await make_client(**FAST)
    job = await submit(client, "echo", [{"n": 1}, {"n": 2}], webhook={"url": receiver.url})
    got = await receiver.next()
    assert verify(SECRET, got.headers, got.body)
    assert got.headers["Content-Type"] == "application/json"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert got.id.startswith("msg_")
    payload = got.json
    assert payload["type"] == "job.completed"
    assert payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert data["id"] == job["id"]
    assert data["status"] == "completed" and data["succeeded"] == 2
    assert data["links"]["self"] == f"/bulk-jobs/{job['id']}"
    assert data["result_url"] == f"/bulk-jobs/{job['id']}/results"
    await wait_quiet(client)
    listing = await deliveries(client, job["id"])
    assert listing["webhook"]["url"] == receiver.url
    assert listing["webhook"]["status"] == "active"
    [msg] = listing["data"]
    assert msg["id"] == got.id and msg["status"] == "delivered"
    assert msg["delivered_at"] is not None and msg["next_attempt_at"] is None
    [attempt] = msg["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["duration_ms"] >= 0


async def test_key_rotation_sends_one_signature_per_secret(make_client: Any, receiver: Any) -> None:
    old, new = random_secret(), random_secret()
    client = await make_client(**{**FAST, "webhook_secrets": f"{old}, {new}"})
    await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    got = await receiver.next()
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verify(old, got.headers, got.body)
    assert verify(new, got.headers, got.body)
    assert not verify(random_secret(), got.headers, got.body)
    tampered = got.body.replace(b"completed", b"cancelled")
    assert not verify(new, got.headers, tampered)


async def test_retry_after_500_keeps_the_webhook_id(make_client: Any, receiver: Any) -> None:
    client = await make_client(**FAST)
    receiver.script = [(500, {}), (503, {})]
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    first, second, third = [await receiver.next() for _ in range(3)]
    assert first.id == second.id == third.id
    assert first.body == second.body == third.body
    assert all(verify(SECRET, r.headers, r.body) for r in (first, second, third))
    await wait_quiet(client)
    [msg] = (await deliveries(client, job["id"]))["data"]
    assert msg["status"] == "delivered"
    assert [a["status_code"] for a in msg["attempts"]] == [500, 503, 200]
    assert msg["attempts"][0]["next_attempt_at"] is not None


async def test_retry_after_timeout(make_client: Any, receiver: Any) -> None:
    client = await make_client(**{**FAST, "webhook_timeout_s": 0.3})
    receiver.script = [HANG]
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    first, second = await receiver.next(), await receiver.next()
    assert first.id == second.id
    await wait_quiet(client)
    [msg] = (await deliveries(client, job["id"]))["data"]
    first_try, second_try = msg["attempts"]
    assert first_try["status_code"] is None and first_try["error"].startswith("timeout")
    assert second_try["status_code"] == 200
    assert msg["status"] == "delivered"


async def test_retries_run_out_and_the_message_fails(make_client: Any, receiver: Any) -> None:
    client = await make_client(**{**FAST, "webhook_retry_schedule_s": "0.01,0.01"})
    receiver.always = (500, {})
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    ids = {(await receiver.next()).id for _ in range(3)}
    assert len(ids) == 1
    await wait_quiet(client)
    [msg] = (await deliveries(client, job["id"]))["data"]
    assert msg["status"] == "failed" and msg["attempt_count"] == 3
    assert msg["next_attempt_at"] is None
    assert len(receiver.log) == 3
    metrics = await (await client.get("/metrics")).text()
    assert 'bulkjobs_webhook_outcomes_total{outcome="failed"} 1' in metrics
    assert 'bulkjobs_webhook_outcomes_total{outcome="retrying"} 2' in metrics
    assert 'bulkjobs_webhook_messages{state="failed"} 1' in metrics


async def test_other_4xx_is_not_retried(make_client: Any, receiver: Any) -> None:
    client = await make_client(**FAST)
    receiver.script = [(400, {})]
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    await receiver.next()
    await wait_quiet(client)
    [msg] = (await deliveries(client, job["id"]))["data"]
    assert msg["status"] == "failed" and msg["attempt_count"] == 1


async def test_retry_after_header_is_honoured(make_client: Any, receiver: Any) -> None:
    client = await make_client(**{**FAST, "webhook_retry_schedule_s": "0.01"})
    receiver.script = [(429, {"Retry-After": "1"})]
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    first, second = await receiver.next(), await receiver.next()
    assert second.at - first.at >= 0.95  # the schedule alone would have retried after 10 ms
    await wait_quiet(client)
    [msg] = (await deliveries(client, job["id"]))["data"]
    assert [a["status_code"] for a in msg["attempts"]] == [429, 200]


def stepped_registry() -> tuple[Registry, list[asyncio.Event]]:
    """An operation whose item i finishes only when the test sets steps[i]."""
    reg = make_registry()
    steps = [asyncio.Event() for _ in range(4)]

    @reg.operation("stepped", item_type=Value, batch_size=1, concurrency=1)
    async def stepped(item: Value, ctx: ItemContext) -> None:
        await steps[ctx.index].wait()

    return reg, steps


async def test_progress_at_milestones_only(make_client: Any, receiver: Any) -> None:
    reg, steps = stepped_registry()
    client = await make_client(reg, **FAST)
    hook = {"url": receiver.url, "events": ["job.progress"]}
    job = await submit(client, "stepped", [{"n": i} for i in range(4)], webhook=hook)
    seen = []
    for i in range(3):
        steps[i].set()
        got = await receiver.next()
        assert got.json["type"] == "job.progress"
        seen.append(got.json["data"]["progress"])
    steps[3].set()
    await wait_terminal(client, job["id"])
    await wait_quiet(client)
    assert seen == [0.25, 0.5, 0.75]
    assert len(receiver.log) == 3  # no terminal event: it was not subscribed
    assert len({r.id for r in receiver.log}) == 3


async def test_410_stops_the_subscription(make_client: Any, receiver: Any) -> None:
    reg, steps = stepped_registry()
    client = await make_client(reg, **{**FAST, "webhook_concurrency": 1})
    receiver.script = [(410, {})]
    hook = {"url": receiver.url, "events": ["job.progress", "job.completed"]}
    job = await submit(client, "stepped", [{"n": i} for i in range(4)], webhook=hook)
    steps[0].set()
    gone = await receiver.next()
    await wait_quiet(client)
    for step in steps[1:]:
        step.set()
    await wait_terminal(client, job["id"])
    await wait_quiet(client)
    assert receiver.log == [gone]
    listing = await deliveries(client, job["id"])
    assert listing["webhook"]["status"] == "gone"
    first = listing["data"][0]
    assert first["status"] == "failed"
    assert [a["status_code"] for a in first["attempts"]] == [410]
    assert all(m["status"] == "failed" for m in listing["data"])


async def test_redeliver_sends_the_same_message_again(make_client: Any, receiver: Any) -> None:
    client = await make_client(**FAST)
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    first = await receiver.next()
    await wait_quiet(client)
    resp = await client.post(f"/bulk-jobs/{job['id']}/webhook-deliveries/{first.id}/redeliver")
    body = await resp.json()
    assert resp.status == 202, body
    assert body["id"] == first.id and body["status"] == "pending"
    again = await receiver.next()
    assert again.id == first.id and again.body == first.body
    assert verify(SECRET, again.headers, again.body)
    await wait_quiet(client)
    [msg] = (await deliveries(client, job["id"]))["data"]
    assert msg["status"] == "delivered" and msg["attempt_count"] == 2


async def test_redeliver_unknown_message_or_job(make_client: Any, receiver: Any) -> None:
    client = await make_client(**FAST)
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    resp = await client.post(f"/bulk-jobs/{job['id']}/webhook-deliveries/msg_nope/redeliver")
    assert resp.status == 404
    assert (await resp.json())["code"] == "webhook_message_not_found"
    resp = await client.get("/bulk-jobs/job_nope/webhook-deliveries")
    assert resp.status == 404
    resp = await client.get(f"/bulk-jobs/{job['id']}/webhook-deliveries?cursor=zzz")
    assert (await resp.json())["code"] == "invalid_cursor"


async def test_job_without_webhook_lists_nothing(client: Any) -> None:
    job = await submit(client, "echo", [{"n": 1}])
    await wait_terminal(client, job["id"])
    listing = await deliveries(client, job["id"])
    assert listing == {"webhook": None, "data": [], "links": {"next": None}}


async def test_slow_endpoint_does_not_block_others(make_client: Any, aiohttp_server: Any) -> None:
    slow, fast = await start_receiver(aiohttp_server), await start_receiver(aiohttp_server)
    slow.always = HANG
    try:
        client = await make_client(**{**FAST, "webhook_concurrency": 2, "webhook_timeout_s": 30})
        for _ in range(3):
            await submit(client, "echo", [{"n": 1}], webhook={"url": slow.url})
        await slow.next()
        # another host name (the per-host cap counts a host name on every port)
        other_host = fast.url.replace("127.0.0.1", "localhost")
        job = await submit(client, "echo", [{"n": 2}], webhook={"url": other_host})
        got = await fast.next()
        assert got.json["data"]["id"] == job["id"]
        assert len(slow.log) == 1  # per-host limit: the others wait their turn
    finally:
        slow.release.set()


# -- refusals at submit ----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:8080/",
        "http://10.0.0.5/",
        "http://192.168.1.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",
    ],
)
async def test_internal_targets_are_refused(make_client: Any, url: str) -> None:
    client = await make_client(webhook_secrets=SECRET)
    resp = await client.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}], "webhook": {"url": url}}
    )
    body = await resp.json()
    assert resp.status == 422, body
    assert body["code"] == "webhook_url_forbidden"
    listed = await (await client.get("/bulk-jobs")).json()
    assert listed["data"] == []  # nothing was stored


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """Answer the loop's getaddrinfo for some names (stands in for a DNS server)."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            ip = answers[host].pop(0) if len(answers[host]) > 1 else answers[host][0]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port or 0)))]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_name_resolving_to_private_address_is_refused(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"hooks.internal.example": ["10.1.2.3"]})
    client = await make_client(webhook_secrets=SECRET)
    resp = await client.post(
        "/bulk-jobs",
        json={
            "operation": "echo",
            "items": [{"n": 1}],
            "webhook": {"url": "https://hooks.internal.example/in"},
        },
    )
    body = await resp.json()
    assert resp.status == 422 and body["code"] == "webhook_url_forbidden", body
    assert "10.1.2.3" not in body["detail"]  # no DNS oracle (issue 13 item 11)


async def test_rebinding_is_caught_at_delivery(
    make_client: Any, receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    fake_dns(monkeypatch, {"rebind.example": ["93.184.215.14", "127.0.0.1"]})
    client = await make_client(
        **{**FAST, "webhook_allow_private": False, "webhook_allowed_ports": port}
    )
    url = f"http://rebind.example:{port}/hook"
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": url})
    await wait_terminal(client, job["id"])
    await wait_quiet(client)
    [msg] = (await deliveries(client, job["id"]))["data"]
    assert msg["status"] == "failed"
    [attempt] = msg["attempts"]
    assert attempt["error"] == "forbidden_target"  # the address is in the log only
    assert receiver.log == []


@pytest.mark.parametrize(
    ("webhook", "pointer"),
    [
        ("http://x.example", "/webhook"),
        ({"url": "ftp://x.example/"}, "/webhook/url"),
        ({"url": "https://user:pw@x.example/"}, "/webhook/url"),
        ({"url": "https://x.example/" + "a" * 2100}, "/webhook/url"),
        ({"url": "/relative"}, "/webhook/url"),
        ({"url": 5}, "/webhook/url"),
        ({}, "/webhook/url"),
        ({"url": "https://x.example/", "events": ["job.done"]}, "/webhook/events/0"),
        ({"url": "https://x.example/", "events": []}, "/webhook/events"),
        ({"url": "https://x.example/", "secret": "x"}, "/webhook/secret"),
    ],
)
async def test_bad_webhook_member(make_client: Any, webhook: Any, pointer: str) -> None:
    client = await make_client(webhook_secrets=SECRET)
    resp = await client.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}], "webhook": webhook}
    )
    body = await resp.json()
    assert resp.status == 422, body
    assert body["code"] == "validation_error"
    assert pointer in [e["pointer"] for e in body["errors"]]


async def test_unresolvable_host(make_client: Any) -> None:
    client = await make_client(webhook_secrets=SECRET)
    resp = await client.post(
        "/bulk-jobs",
        json={
            "operation": "echo",
            "items": [{"n": 1}],
            "webhook": {"url": "https://no-such-host.invalid/"},
        },
    )
    body = await resp.json()
    assert resp.status == 422 and body["code"] == "webhook_url_unresolvable", body


async def test_webhooks_need_a_secret(client: Any) -> None:
    resp = await client.post(
        "/bulk-jobs",
        json={"operation": "echo", "items": [{"n": 1}], "webhook": {"url": "https://x.example/"}},
    )
    body = await resp.json()
    assert resp.status == 422 and body["code"] == "webhooks_not_configured", body


async def test_deleting_a_job_purges_its_delivered_webhook_rows(
    make_client: Any, receiver: Any, db_path: str
) -> None:
    client = await make_client(**FAST)
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
    await receiver.next()
    await wait_quiet(client)
    resp = await client.delete(f"/bulk-jobs/{job['id']}")
    assert resp.status == 204
    engine = client.app[ENGINE]
    # drive the purge to the end, as the purger does
    while (await engine.store.maintain(utcnow(), expire_jobs=0, purge_items=5000, keep_s=0)).purged:
        pass
    async with aiosqlite.connect(db_path) as db:
        for table in ("webhook_subscriptions", "webhook_messages", "webhook_attempts", "items"):
            async with db.execute(f"SELECT count(*) FROM {table}") as cur:
                row = await cur.fetchone()
            assert row == (0,), table


async def test_a_retry_job_notifies_the_same_webhook(make_client: Any, receiver: Any) -> None:
    client = await make_client(**FAST)
    job = await submit(
        client, "echo", [{"n": 1}, {"n": 2, "fail": "bad"}], webhook={"url": receiver.url}
    )
    first = await receiver.next()
    assert first.json["data"]["id"] == job["id"]
    resp = await client.post(f"/bulk-jobs/{job['id']}/retry")
    retry = await resp.json()
    assert resp.status == 202
    got = await receiver.next()
    assert got.json["type"] == "job.completed"
    assert got.json["data"]["id"] == retry["id"]
    assert verify(SECRET, got.headers, got.body)
