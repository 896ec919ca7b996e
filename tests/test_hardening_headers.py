"""Issue 13 item 13: security headers on every response; the dashboard under a CSP."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.security import hash_key
from bulkjobs.web.dashboard import STATIC_DIR
from bulkjobs.web.headers import CONTENT_SECURITY_POLICY
from tests.support import submit, wait_terminal

KEY = "bjk_headers-key-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}
CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


def _common(resp: Any) -> None:
    assert resp.headers["X-Content-Type-Options"] == "nosniff", resp.url
    assert resp.headers["Referrer-Policy"] == "no-referrer", resp.url
    assert resp.headers["Server"] == "bulkjobs", resp.url
    assert not re.search(r"\d", resp.headers["Server"])


async def test_dashboard_page_has_the_csp(client: TestClient) -> None:
    assert CSP == CONTENT_SECURITY_POLICY
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.headers["Content-Security-Policy"] == CSP
    _common(resp)
    for asset in ("dashboard/dashboard.js", "dashboard/dashboard.css"):
        _common(await client.get(f"/{asset}"))


@pytest.mark.parametrize(
    "path", ["/bulk-jobs", "/healthz", "/metrics", "/openapi.json", "/no-such-thing", "/errors"]
)
async def test_every_response_has_the_common_headers(client: TestClient, path: str) -> None:
    resp = await client.get(path)
    _common(resp)
    assert "Cache-Control" not in resp.headers or "private" not in resp.headers["Cache-Control"]


async def test_problems_streams_and_results_have_them_too(client: TestClient) -> None:
    job = await submit(client, "echo", [{"n": 1}])
    await wait_terminal(client, job["id"])
    _common(
        await client.post("/bulk-jobs", data=b"{", headers={"Content-Type": "application/json"})
    )
    _common(await client.get(f"/bulk-jobs/{job['id']}/events"))
    _common(await client.get(f"/bulk-jobs/{job['id']}/results"))
    _common(await client.delete("/bulk-jobs"))  # 405


async def test_authenticated_answers_are_private(make_client: Any) -> None:
    client: TestClient = await make_client(api_keys=f"acme:sha256:{hash_key(KEY)}")
    resp = await client.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}]}, headers=AUTH
    )
    job = await resp.json()
    assert resp.headers["Cache-Control"].startswith("private")
    resp = await client.get(f"/bulk-jobs/{job['id']}", headers=AUTH)
    assert resp.headers["Cache-Control"] == "private, no-cache"  # the job's own no-cache kept
    _common(resp)
    resp = await client.get("/bulk-jobs", headers=AUTH)
    assert "private" in resp.headers["Cache-Control"]
    public = await client.get("/healthz")
    assert "private" not in public.headers.get("Cache-Control", "")
    refused = await client.get("/bulk-jobs")
    assert refused.status == 401
    _common(refused)


def test_dashboard_script_sets_styles_through_cssom() -> None:
    script = (STATIC_DIR / "dashboard.js").read_text()
    assert not re.search(r"""setAttribute\(\s*["']style""", script)
    assert not re.search(r"""\bstyle\s*:""", script)  # a style attribute via el(..., {style})
    html = (STATIC_DIR / "index.html").read_text()
    assert "style=" not in html and "<style" not in html
    assert not re.search(r"<script>(?!</script>)", html)  # no inline script
