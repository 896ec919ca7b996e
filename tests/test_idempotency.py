"""Idempotency-Key on POST /bulk-jobs."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.models import utcnow
from bulkjobs.web.keys import ENGINE

pytestmark = pytest.mark.both_backends  # the store's answers, on each backend

BODY = {"operation": "echo", "items": [{"n": 1}, {"n": 2}]}


async def post(client: TestClient, key: str | None, body: Any = BODY) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await client.post("/bulk-jobs", json=body, headers=headers)


async def job_count(client: TestClient) -> int:
    resp = await client.get("/bulk-jobs?limit=1000")
    return len((await resp.json())["data"])


async def test_same_key_same_body_returns_the_original_job(client: TestClient) -> None:
    first = await post(client, "order-42")
    assert first.status == 202
    again = await post(client, "order-42")
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert (await again.json())["id"] == (await first.json())["id"]
    assert await job_count(client) == 1


async def test_same_key_other_body_is_422(client: TestClient) -> None:
    assert (await post(client, "k1")).status == 202
    resp = await post(client, "k1", {"operation": "echo", "items": [{"n": 3}]})
    assert resp.status == 422
    assert (await resp.json())["code"] == "idempotency_key_reused"


async def test_concurrent_twins_create_exactly_one_job(client: TestClient) -> None:
    responses = await asyncio.gather(*(post(client, "twin") for _ in range(8)))
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
    assert sorted(r.status for r in responses).count(202) == 1
    assert await job_count(client) == 1


async def test_keys_are_per_key_and_expire(make_client: Any) -> None:
    client = await make_client(idempotency_ttl_s=3600)
    a = await (await post(client, "a")).json()
    b = await (await post(client, "b")).json()
    assert a["id"] != b["id"]
    await client.app[ENGINE].janitor.sweep(now=utcnow() + timedelta(seconds=3601))
    c = await post(client, "a")
    assert c.status == 202 and (await c.json())["id"] != a["id"]


async def test_a_key_is_kept_for_a_day_by_default(client: TestClient) -> None:
    first = await (await post(client, "day")).json()
    record = (await client.app[ENGINE].store.find_job(idempotency=("default", "day"))).idempotency
    assert record is not None and record.job_id == first["id"]
    assert record.expires_at - record.created_at >= timedelta(hours=24)


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "caf\u00e9"])
async def test_bad_keys_are_400(client: TestClient, key: str) -> None:
    resp = await client.post(
        "/bulk-jobs",
        data=b'{"operation":"echo","items":[{"n":1}]}',
        headers={
            "Idempotency-Key": key.encode().decode("latin-1"),
            "Content-Type": "application/json",
        },
    )
    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid_idempotency_key"


async def test_a_255_char_key_is_fine(client: TestClient) -> None:
    assert (await post(client, "k" * 255)).status == 202


async def test_invalid_body_with_a_key_stores_nothing(client: TestClient) -> None:
    resp = await post(client, "bad", {"operation": "echo", "items": []})
    assert resp.status == 422
    assert (await post(client, "bad")).status == 202
