"""Retention: expires_at and Expires, the janitor, 410 tombstones then 404."""

from __future__ import annotations

from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from aiohttp.test_utils import TestClient

from bulkjobs.models import utcnow
from bulkjobs.web.keys import ENGINE
from tests.support import submit, wait_terminal

MISSING = "job_0000000000000000000000000a"


async def finished(client: TestClient, n: int = 3, **extra: Any) -> str:
    body = await submit(client, "echo", [{"n": i} for i in range(n)], **extra)
    await wait_terminal(client, body["id"])
    return str(body["id"])


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code, body
    return body


async def purge_all(client: TestClient) -> None:
    store = client.app[ENGINE].store
    while (await store.maintain(utcnow(), expire_jobs=0, purge_items=5000, keep_s=0)).purged:
        pass


async def item_count(client: TestClient) -> int:
    store = client.app[ENGINE].store
    async with store._r.execute("SELECT count(*) FROM items") as cur:  # type: ignore[attr-defined]
        row = await cur.fetchone()
    return int(row[0])


async def test_expires_at_is_completion_plus_ttl_and_sent_as_expires(client: TestClient) -> None:
    job_id = await finished(client, ttl_seconds=3600)
    resp = await client.get(f"/bulk-jobs/{job_id}")
    body = await resp.json()
    stored = (await client.app[ENGINE].store.find_job(job_id)).job
    assert stored is not None and stored.completed_at is not None
    assert stored.expires_at == stored.completed_at + timedelta(seconds=3600)
    assert body["expires_at"].startswith(stored.expires_at.strftime("%Y-%m-%dT%H:%M:%S"))
    expires = parsedate_to_datetime(resp.headers["Expires"])
    assert abs((expires - stored.expires_at).total_seconds()) < 1


async def test_default_ttl_applies(make_client: Any) -> None:
    client = await make_client(default_ttl_s=120)
    job_id = await finished(client)
    stored = (await client.app[ENGINE].store.find_job(job_id)).job
    assert stored is not None and stored.ttl_s == 120


async def test_ttl_above_the_maximum_is_refused(make_client: Any) -> None:
    client = await make_client(max_ttl_s=600)
    resp = await client.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}], "ttl_seconds": 601}
    )
    p = await problem(resp, 422, "invalid_ttl")
    assert p["errors"][0]["pointer"] == "/ttl_seconds"


async def test_janitor_removes_expired_jobs_then_410_then_404(make_client: Any) -> None:
    client = await make_client(tombstone_s=3600)
    job_id = await finished(client, n=5, ttl_seconds=60)
    keep_id = await finished(client, n=2, ttl_seconds=7200)
    janitor = client.app[ENGINE].janitor
    later = utcnow() + timedelta(seconds=120)
    assert await janitor.sweep(now=later) == 1
    for path in ("", "/items", "/results", "/events"):
        p = await problem(await client.get(f"/bulk-jobs/{job_id}{path}"), 410, "job_expired")
        assert p["deleted_at"].endswith("Z")
    await problem(await client.post(f"/bulk-jobs/{job_id}/cancel"), 410, "job_expired")
    assert (await client.get(f"/bulk-jobs/{keep_id}")).status == 200
    await purge_all(client)
    assert await item_count(client) == 2  # only the kept job's items are left
    await janitor.sweep(now=utcnow() + timedelta(seconds=3600 + 121))
    await problem(await client.get(f"/bulk-jobs/{job_id}"), 404, "job_not_found")


async def test_running_janitor_sweeps_when_woken(make_client: Any) -> None:
    client = await make_client(min_ttl_s=0, janitor_interval_s=3600)
    job_id = await finished(client, ttl_seconds=0)
    await client.app[ENGINE].janitor.wait_swept()
    await problem(await client.get(f"/bulk-jobs/{job_id}"), 410, "job_expired")


async def test_delete_leaves_a_tombstone(client: TestClient) -> None:
    job_id = await finished(client)
    assert (await client.delete(f"/bulk-jobs/{job_id}")).status == 204
    p = await problem(await client.get(f"/bulk-jobs/{job_id}"), 410, "job_deleted")
    assert "deleted" in p["detail"]
    await problem(await client.delete(f"/bulk-jobs/{job_id}"), 410, "job_deleted")
    await problem(await client.post(f"/bulk-jobs/{job_id}/retry"), 410, "job_deleted")


async def test_zero_tombstone_period_means_404_at_once(make_client: Any) -> None:
    client = await make_client(tombstone_s=0)
    job_id = await finished(client)
    assert (await client.delete(f"/bulk-jobs/{job_id}")).status == 204
    await problem(await client.get(f"/bulk-jobs/{job_id}"), 404, "job_not_found")


async def test_unknown_ids_stay_404(client: TestClient) -> None:
    await problem(await client.get(f"/bulk-jobs/{MISSING}"), 404, "job_not_found")
    await problem(await client.get(f"/bulk-jobs/{MISSING}/results"), 404, "job_not_found")


async def test_a_deleted_newest_job_never_lends_its_key(client: TestClient) -> None:
    # Its items are purged later, so the next job must not get the same store key.
    first = await finished(client, n=3)
    assert (await client.delete(f"/bulk-jobs/{first}")).status == 204
    second = await finished(client, n=5)
    items = await (await client.get(f"/bulk-jobs/{second}/items")).json()
    assert [i["index"] for i in items["data"]] == [0, 1, 2, 3, 4]
    await purge_all(client)
    items = await (await client.get(f"/bulk-jobs/{second}/items")).json()
    assert len(items["data"]) == 5
