"""API keys and tenant isolation, endpoint by endpoint; signed event-stream tokens."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.security import TokenSigner, hash_key
from bulkjobs.web.keys import SIGNER
from tests.support import wait_terminal

ACME, GLOBEX = "bjk_acme-secret-key-0001", "bjk_globex-secret-key-0002"
KEYS = f"acme:sha256:{hash_key(ACME)},globex:sha256:{hash_key(GLOBEX)}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def secured(make_client: Any) -> TestClient:
    client: TestClient = await make_client(api_keys=KEYS)
    return client


async def acme_job(client: TestClient, items: list[Any] | None = None) -> dict[str, Any]:
    resp = await client.post(
        "/bulk-jobs",
        json={"operation": "echo", "items": items or [{"n": 1}, {"n": 2, "fail": "bad"}]},
        headers=auth(ACME),
    )
    assert resp.status == 202, await resp.text()
    body: dict[str, Any] = await resp.json()
    await wait_terminal(client, body["id"])
    return body


def endpoints(job_id: str) -> list[tuple[str, str]]:
    j = f"/bulk-jobs/{job_id}"
    return [
        ("GET", j),
        ("GET", f"{j}/items"),
        ("GET", f"{j}/items?status=failed"),
        ("GET", f"{j}/results"),
        ("GET", f"{j}/events"),
        ("GET", f"{j}/webhook-deliveries"),
        ("POST", f"{j}/webhook-deliveries/msg_x/redeliver"),
        ("POST", f"{j}/retry"),
        ("POST", f"{j}/cancel"),
        ("DELETE", j),
    ]


async def test_missing_or_wrong_key_is_401_with_challenge(secured: TestClient) -> None:
    job = await acme_job(secured)
    for method, path in [*endpoints(job["id"]), ("GET", "/bulk-jobs"), ("POST", "/bulk-jobs")]:
        for headers in ({}, auth("bjk_wrong"), {"Authorization": "Basic abc"}):
            resp = await secured.request(method, path, headers=headers)
            body = await resp.json()
            assert resp.status == 401, (method, path, headers)
            assert body["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="bulkjobs"')
    resp = await secured.get("/operations", headers=auth("bjk_wrong"))
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_public_endpoints_need_no_key(secured: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/"):
        resp = await secured.get(path)
        assert resp.status == 200, path


async def test_other_tenants_job_is_404_everywhere(secured: TestClient) -> None:
    job = await acme_job(secured)
    for method, path in endpoints(job["id"]):
        resp = await secured.request(method, path, headers=auth(GLOBEX))
        assert resp.status == 404, (method, path, await resp.text())
        assert (await resp.json())["code"] in ("job_not_found", "not_found")
    resp = await secured.get("/bulk-jobs", headers=auth(GLOBEX))
    assert (await resp.json())["data"] == []
    # ... while the owner still sees all of it
    resp = await secured.get("/bulk-jobs", headers=auth(ACME))
    assert [j["id"] for j in (await resp.json())["data"]] == [job["id"]]
    for method, path in endpoints(job["id"])[:4]:
        resp = await secured.request(method, path, headers=auth(ACME))
        assert resp.status == 200, (method, path)


async def test_deleted_job_of_another_tenant_stays_404(secured: TestClient) -> None:
    job = await acme_job(secured)
    resp = await secured.delete(f"/bulk-jobs/{job['id']}", headers=auth(ACME))
    assert resp.status == 204
    resp = await secured.get(f"/bulk-jobs/{job['id']}", headers=auth(ACME))
    assert resp.status == 410
    resp = await secured.get(f"/bulk-jobs/{job['id']}", headers=auth(GLOBEX))
    assert resp.status == 404  # even the tombstone is not leaked


async def test_events_link_carries_a_job_scoped_token(secured: TestClient) -> None:
    job = await acme_job(secured)
    events = job["links"]["events"]
    assert "?token=" in events
    resp = await secured.get(events)  # no Authorization header, like EventSource
    assert resp.status == 200
    assert "event: snapshot" in await resp.text()

    other = await acme_job(secured, [{"n": 3}])
    token = events.split("token=")[1]
    resp = await secured.get(f"/bulk-jobs/{other['id']}/events?token={token}")
    assert resp.status == 401  # scoped to the first job
    resp = await secured.get(f"/bulk-jobs/{job['id']}?token={token}")
    assert resp.status == 401  # only the events stream accepts it
    tampered = events[:-3] + ("AAA" if not events.endswith("AAA") else "BBB")
    resp = await secured.get(tampered)
    assert resp.status == 401  # tampered


async def test_expired_or_foreign_tokens_are_refused(secured: TestClient) -> None:
    job = await acme_job(secured)
    signer = secured.app[SIGNER]
    expired = signer.sign(job["id"], "acme", now=0)
    resp = await secured.get(f"/bulk-jobs/{job['id']}/events?token={expired}")
    assert resp.status == 401
    forged = TokenSigner(b"another secret").sign(job["id"], "acme")
    resp = await secured.get(f"/bulk-jobs/{job['id']}/events?token={forged}")
    assert resp.status == 401
    globex = signer.sign(job["id"], "globex")  # valid signature, wrong tenant for this job
    resp = await secured.get(f"/bulk-jobs/{job['id']}/events?token={globex}")
    assert resp.status == 404


async def test_keys_and_tokens_never_reach_the_logs(
    secured: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    job = await acme_job(secured)
    await secured.get(job["links"]["events"])
    await secured.get("/bulk-jobs", headers=auth("bjk_wrong-key-9"))
    token = job["links"]["events"].split("token=")[1]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (ACME, "bjk_wrong-key-9", token):
        assert secret not in text


async def test_open_mode_uses_the_default_tenant(client: TestClient) -> None:
    resp = await client.post("/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}]})
    body = await resp.json()
    assert resp.status == 202
    assert "token=" not in body["links"]["events"]
    job = await wait_terminal(client, body["id"])
    assert job.tenant == "default"
