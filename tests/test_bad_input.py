"""Every malformed, oversized or hostile request gets a 4xx problem with a stable code."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.support import submit, wait_terminal

JSON = {"Content-Type": "application/json"}


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"].endswith(f"/errors/{code}")
    assert body["title"] and body["detail"]
    assert "Traceback" not in await resp.text()
    return body


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"nul", b'{"operation": "noop", "items": [}', b"\xff\xfe", b'{"a":1}garbage'],
)
async def test_malformed_json(client: TestClient, raw: bytes) -> None:
    await problem(await client.post("/bulk-jobs", data=raw, headers=JSON), 400, "malformed_json")


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_wrong_content_type(client: TestClient, ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    resp = await client.post("/bulk-jobs", data=b'{"operation": "noop"}', headers=headers)
    await problem(resp, 415, "unsupported_media_type")


async def test_body_over_limit(make_client: Any) -> None:
    client = await make_client(max_body_bytes=1000)
    body = b'{"operation": "noop", "items": [' + b'{"value": 1},' * 200 + b'{"value": 1}]}'
    await problem(
        await client.post("/bulk-jobs", data=body, headers=JSON), 413, "payload_too_large"
    )

    async def chunks() -> Any:  # no Content-Length: the limit holds while streaming too
        yield body

    resp = await client.post("/bulk-jobs", data=chunks(), headers=JSON)
    await problem(resp, 413, "payload_too_large")


@pytest.mark.parametrize(
    "body",
    [
        {"items": [{}]},
        {"operation": None, "items": [{}]},
        {"operation": 7, "items": [{}]},
        {"operation": "", "items": [{}]},
        {"operation": "no_such_operation", "items": [{}]},
    ],
)
async def test_missing_or_unknown_operation(client: TestClient, body: dict[str, Any]) -> None:
    await problem(await client.post("/bulk-jobs", json=body), 422, "unknown_operation")


@pytest.mark.parametrize(
    ("items", "detail"),
    [(None, "required"), ({"a": 1}, "must be an array"), ("x", "must be an array"), ([], "empty")],
)
async def test_items_missing_not_a_list_or_empty(
    client: TestClient, items: Any, detail: str
) -> None:
    body: dict[str, Any] = {"operation": "noop"}
    if items is not None:
        body["items"] = items
    p = await problem(await client.post("/bulk-jobs", json=body), 422, "validation_error")
    assert p["errors"][0]["pointer"] == "/items"
    assert detail in p["errors"][0]["detail"]


async def test_body_not_an_object(client: TestClient) -> None:
    p = await problem(await client.post("/bulk-jobs", json=[1, 2]), 422, "validation_error")
    assert p["errors"] == [{"pointer": "", "detail": "the body must be a JSON object"}]


async def test_unknown_top_level_field(client: TestClient) -> None:
    resp = await client.post("/bulk-jobs", json={"operation": "noop", "items": [{}], "x": 1})
    p = await problem(resp, 422, "validation_error")
    assert p["errors"] == [{"pointer": "/x", "detail": "unknown field"}]


async def test_too_many_items(make_client: Any) -> None:
    client = await make_client(max_items=10)
    resp = await client.post("/bulk-jobs", json={"operation": "noop", "items": [{}] * 11})
    await problem(resp, 413, "too_many_items")


async def test_item_type_errors_point_at_fields(client: TestClient) -> None:
    items: list[Any] = [{"id": "ord_1", "status": "shipped"}] * 10
    items[3] = {"id": "ord_1", "status": "teleported"}
    items[5] = {"status": "paid"}
    items[7] = {"id": 12, "status": "paid", "colour": "red"}
    items[8] = "not an object"
    resp = await client.post(
        "/bulk-jobs", json={"operation": "update_orders_status", "items": items}
    )
    p = await problem(resp, 422, "validation_error")
    pointers = {e["pointer"]: e["detail"] for e in p["errors"]}
    assert "must be one of" in pointers["/items/3/status"]
    assert pointers["/items/5/id"] == "required field missing"
    assert pointers["/items/7/colour"] == "unknown field"
    assert "expected string" in pointers["/items/7/id"]
    assert "must be an object" in pointers["/items/8"]
    # nothing was stored
    resp = await client.get("/bulk-jobs")
    assert (await resp.json())["data"] == []


async def test_at_most_100_item_errors_listed(client: TestClient) -> None:
    items = [{"id": "ord_1", "status": "nope"}] * 500
    resp = await client.post(
        "/bulk-jobs", json={"operation": "update_orders_status", "items": items}
    )
    p = await problem(resp, 422, "validation_error")
    assert len(p["errors"]) == 100


async def test_attrs_validator_errors_point_at_the_field(client: TestClient) -> None:
    resp = await client.post("/bulk-jobs", json={"operation": "sleep", "items": [{"ms": -5}]})
    p = await problem(resp, 422, "validation_error")
    assert p["errors"][0]["pointer"] == "/items/0/ms"


@pytest.mark.parametrize("ttl", [0, -1, "60", 1.5, True, 10**12])
async def test_bad_ttl(client: TestClient, ttl: Any) -> None:
    resp = await client.post(
        "/bulk-jobs", json={"operation": "noop", "items": [{}], "ttl_seconds": ttl}
    )
    p = await problem(resp, 422, "invalid_ttl")
    assert p["errors"][0]["pointer"] == "/ttl_seconds"


async def test_whole_float_ttl_is_an_integer(client: TestClient) -> None:
    resp = await client.post(
        "/bulk-jobs", json={"operation": "noop", "items": [{}], "ttl_seconds": 3600.0}
    )
    assert resp.status == 202


async def test_unknown_job_is_404_everywhere(client: TestClient) -> None:
    missing = "job_0000000000000000000000000"
    for method, path in [
        ("GET", f"/bulk-jobs/{missing}"),
        ("GET", f"/bulk-jobs/{missing}/items"),
        ("POST", f"/bulk-jobs/{missing}/cancel"),
        ("DELETE", f"/bulk-jobs/{missing}"),
        ("GET", "/bulk-jobs/../../etc/passwd"),
        ("GET", "/bulk-jobs/%00"),
    ]:
        resp = await client.request(method, path)
        assert resp.status == 404, (method, path)
        assert resp.content_type == "application/problem+json"


async def test_unknown_route_and_method(client: TestClient) -> None:
    await problem(await client.get("/nope"), 404, "not_found")
    resp = await client.put("/bulk-jobs")
    await problem(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


async def test_terminal_job_cannot_be_cancelled(client: TestClient) -> None:
    body = await submit(client, "noop", [{}])
    await wait_terminal(client, body["id"])
    await problem(await client.post(f"/bulk-jobs/{body['id']}/cancel"), 409, "job_terminal")


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "%FF", "ajp4"])
async def test_bad_cursor(client: TestClient, cursor: str) -> None:
    await problem(await client.get(f"/bulk-jobs?cursor={cursor}"), 400, "invalid_cursor")
    body = await submit(client, "noop", [{}])
    resp = await client.get(f"/bulk-jobs/{body['id']}/items?cursor={cursor}")
    await problem(resp, 400, "invalid_cursor")


async def test_cursor_of_another_list_is_refused(client: TestClient) -> None:
    body = await submit(client, "noop", [{}])
    items_cursor, jobs_cursor = "aTow", "ajox"  # "i:0", "j:1"
    await problem(await client.get(f"/bulk-jobs?cursor={items_cursor}"), 400, "invalid_cursor")
    resp = await client.get(f"/bulk-jobs/{body['id']}/items?cursor={jobs_cursor}")
    await problem(resp, 400, "invalid_cursor")


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=-1", "status=bogus"])
async def test_bad_list_parameters(client: TestClient, query: str) -> None:
    await problem(await client.get(f"/bulk-jobs?{query}"), 400, "invalid_request")


async def test_server_busy_when_backlog_full(make_client: Any) -> None:
    client = await make_client(max_pending_items=5)
    resp = await client.post("/bulk-jobs", json={"operation": "noop", "items": [{}] * 6})
    p = await problem(resp, 503, "server_busy")
    assert int(resp.headers["Retry-After"]) >= 1
    assert p["detail"]
