"""Open mode (no API keys) answers only loopback Host names and refuses changes that a
browser sends from another site; clients that send no such headers are unaffected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.web.origin import split_host
from tests.support import Gate, submit
from tests.test_auth import ACME, KEYS, auth

ONE = {"operation": "echo", "items": [{"n": 1}]}


async def code_of(resp: Any) -> str | None:
    if resp.status < 400:
        return None
    return str((await resp.json())["code"])


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8080", "LOCALHOST.", "app.localhost:1", "127.0.0.1",
             "127.9.9.9:80", "[::1]:8080", "[::1]"]
)  # fmt: skip
async def test_loopback_hosts_are_answered(client: TestClient, host: str) -> None:
    resp = await client.get("/bulk-jobs", headers={"Host": host})
    assert resp.status == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "localhost.evil.example",
             "10.0.0.5", "[::ffff:7f00:1]x", ""]
)  # fmt: skip
async def test_other_hosts_are_refused(client: TestClient, host: str) -> None:
    for method, path in [("GET", "/bulk-jobs"), ("GET", "/healthz"), ("POST", "/bulk-jobs")]:
        resp = await client.request(method, path, json=ONE, headers={"Host": host})
        assert (resp.status, await code_of(resp)) == (403, "host_not_allowed"), (method, path)


async def test_unknown_routes_stay_404_whatever_the_host(client: TestClient) -> None:
    resp = await client.get("/no-such-thing", headers={"Host": "evil.example"})
    assert (resp.status, await code_of(resp)) == (404, "not_found")


async def test_allowed_hosts_and_the_bound_address(make_client: Any, tmp_path: Path) -> None:
    def db(name: str) -> str:
        return str(tmp_path / f"{name}.sqlite3")

    client: TestClient = await make_client(allowed_hosts="jobs.internal, Other.Example")
    for host in ["jobs.internal:8080", "other.example", "127.0.0.1"]:
        assert (await client.get("/bulk-jobs", headers={"Host": host})).status == 200, host
    assert (await client.get("/bulk-jobs", headers={"Host": "evil.example"})).status == 403
    client = await make_client(
        host="192.168.7.7", db_path=db("bound")
    )  # bound to one address: it is allowed
    assert (await client.get("/bulk-jobs", headers={"Host": "192.168.7.7:80"})).status == 200
    client = await make_client(allowed_hosts="*", db_path=db("any"))
    assert (await client.get("/bulk-jobs", headers={"Host": "evil.example"})).status == 200


async def test_cross_site_changes_are_refused(client: TestClient, gate: Gate) -> None:
    own = f"http://{client.server.host}:{client.server.port}"
    refused = [
        {"Origin": "http://evil.example"},
        {"Origin": f"http://{client.server.host}:{client.server.port + 1}"},  # another port
        {"Origin": "null"},
        {"Origin": "not a url"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": own, "Sec-Fetch-Site": "cross-site"},
    ]
    job = await submit(client, "gated", [{"n": 1}])
    for headers in refused:
        for method, path in [
            ("POST", "/bulk-jobs"),
            ("POST", f"/bulk-jobs/{job['id']}/cancel"),
            ("DELETE", f"/bulk-jobs/{job['id']}"),
        ]:
            resp = await client.request(method, path, json=ONE, headers=headers)
            assert (resp.status, await code_of(resp)) == (403, "cross_site_request"), headers
    assert (await (await client.get(f"/bulk-jobs/{job['id']}")).json())["status"] != "cancelled"
    # reads are not changes; a browser's CORS rules keep their answers from the page
    resp = await client.get("/bulk-jobs", headers={"Origin": "http://evil.example"})
    assert resp.status == 200
    gate.opened.set()


async def test_same_origin_and_headerless_clients_keep_working(client: TestClient) -> None:
    own = f"http://{client.server.host}:{client.server.port}"
    for headers in [
        {},  # curl, the CLI, the Python client
        {"Origin": own, "Sec-Fetch-Site": "same-origin"},  # the dashboard
        {"Origin": own.upper()},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
    ]:
        resp = await client.post("/bulk-jobs", json=ONE, headers=headers)
        assert resp.status == 202, (headers, await resp.text())


async def test_with_api_keys_the_guards_do_not_apply(make_client: Any) -> None:
    client: TestClient = await make_client(api_keys=KEYS)
    headers = {"Host": "jobs.example.com", "Origin": "https://app.example.com", **auth(ACME)}
    resp = await client.post("/bulk-jobs", json=ONE, headers=headers)
    assert resp.status == 202


def test_split_host() -> None:
    assert split_host("Example.COM.:8080") == ("example.com", "8080")
    assert split_host("[::1]:80") == ("::1", "80")
    assert split_host("::1") == ("::1", "")
    assert split_host("localhost") == ("localhost", "")
