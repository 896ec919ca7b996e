"""Backpressure: every limit answers a problem with Retry-After and cannot be bypassed."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bulkjobs.errors import BulkJobsError
from bulkjobs.logs import JsonFormatter
from bulkjobs.security import hash_key
from bulkjobs.service.limits import RateLimiter
from tests.support import Gate, submit, wait_terminal

ONE = {"operation": "echo", "items": [{"n": 1}]}


async def test_submit_rate_per_tenant(make_client: Any) -> None:
    client: TestClient = await make_client(submit_rate_per_s=0.5, submit_burst=3)
    statuses = [(await client.post("/bulk-jobs", json=ONE)).status for _ in range(3)]
    assert statuses == [202, 202, 202]
    resp = await client.post("/bulk-jobs", json=ONE)
    problem = await resp.json()
    assert (resp.status, problem["code"]) == (429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1
    # invalid bodies spend tokens too: the limit holds before any parsing
    resp = await client.post("/bulk-jobs", data=b"{", headers={"Content-Type": "application/json"})
    assert resp.status == 429


async def test_rate_limiter_refills() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=2)
    limiter.take("t", now=0.0)
    limiter.take("t", now=0.0)
    with pytest.raises(BulkJobsError) as refused:
        limiter.take("t", now=0.1)
    assert refused.value.code == "rate_limited"
    limiter.take("t", now=0.6)  # one token back after 0.5 s
    limiter.take("other", now=0.6)  # tenants have their own buckets


async def test_active_jobs_per_tenant_cannot_be_bypassed_concurrently(
    make_client: Any, gate: Gate
) -> None:
    client: TestClient = await make_client(max_active_jobs=2)
    body = {"operation": "gated", "items": [{"n": 1}]}
    responses = await asyncio.gather(*(client.post("/bulk-jobs", json=body) for _ in range(10)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [202, 202] + [429] * 8
    refused = next(r for r in responses if r.status == 429)
    assert (await refused.json())["code"] == "too_many_active_jobs"
    assert "Retry-After" in refused.headers
    gate.opened.set()
    for r in responses:
        if r.status == 202:
            await wait_terminal(client, (await r.json())["id"])
    resp = await client.post("/bulk-jobs", json=body)
    assert resp.status == 202  # room again once they finished


async def test_low_disk_refuses_new_jobs_with_507(make_client: Any) -> None:
    client: TestClient = await make_client(min_free_disk_bytes=2**62)
    resp = await client.post("/bulk-jobs", json=ONE)
    problem = await resp.json()
    assert (resp.status, problem["code"]) == (507, "insufficient_storage")
    assert "Retry-After" in resp.headers
    resp = await client.get("/bulk-jobs")
    assert resp.status == 200  # reads still work


async def test_metrics_are_prometheus_text(client: TestClient) -> None:
    body = await submit(
        client, "echo", [{"n": i, "fail": "x" if i < 3 else None} for i in range(10)]
    )
    await wait_terminal(client, body["id"])
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    items = {
        (s.labels["operation"], s.labels["outcome"]): s.value
        for s in families["bulkjobs_items"].samples
        if s.name == "bulkjobs_items_total"
    }
    assert items[("echo", "succeeded")] == 7 and items[("echo", "failed")] == 3
    jobs = {s.labels["status"]: s.value for s in families["bulkjobs_jobs"].samples}
    assert jobs["completed"] == 1 and jobs["running"] == 0
    for name in (
        "bulkjobs_item_seconds",
        "bulkjobs_commit_rows",
        "bulkjobs_commit_seconds",
        "bulkjobs_queue_chunks",
        "bulkjobs_sse_subscribers",
        "bulkjobs_webhook_attempts",
    ):
        assert name in families, name


async def test_refusals_are_counted(make_client: Any) -> None:
    client: TestClient = await make_client(max_pending_items=1)
    resp = await client.post("/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}] * 2})
    assert resp.status == 503
    text = await (await client.get("/metrics")).text()
    assert 'bulkjobs_requests_rejected_total{code="server_busy"} 1.0' in text


async def test_readyz_reports_checks(client: TestClient) -> None:
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200
    assert body == {"ready": True, "store": "ok", "tasks_alive": True, "draining": False}


def test_json_log_lines_carry_job_and_tenant() -> None:
    record = logging.LogRecord("bulkjobs.x", logging.INFO, __file__, 1, "job %s done", ("j",), None)
    record.job_id, record.tenant = "job_1", "acme"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "job j done" and line["job_id"] == "job_1" and line["tenant"] == "acme"
    assert line["ts"].endswith("Z") and line["level"] == "info"


async def test_keys_file_and_environment(make_client: Any, tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# comment\nacme:sha256:{hash_key('k1')}\n")
    client: TestClient = await make_client(api_keys_file=str(keys))
    resp = await client.get("/bulk-jobs", headers={"Authorization": "Bearer k1"})
    assert resp.status == 200
    resp = await client.get("/bulk-jobs", headers={"Authorization": "Bearer k2"})
    assert resp.status == 401
