"""`POST /bulk-jobs` with `Content-Type: application/x-ndjson`: options in the query
string, one item per line, the same validation and problems as a JSON body."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.support import wait_terminal

NDJSON = {"Content-Type": "application/x-ndjson"}


async def post(client: TestClient, body: bytes, **query: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/bulk-jobs", data=body, params=query, headers=NDJSON)
    return resp.status, await resp.json()


async def test_ndjson_lines_become_items_in_order(client: TestClient) -> None:
    body = b'{"n": 1}\n{"n": 2, "id": "b"}\r\n\n{"n": 3}\n'
    status, job = await post(client, body, operation="echo", ttl_seconds="3600")
    assert status == 202, job
    assert job["total_items"] == 3
    done = await wait_terminal(client, job["id"])
    assert done.succeeded == 3
    items = await (await client.get(f"/bulk-jobs/{job['id']}/items")).json()
    assert [(i["index"], i.get("id"), i["result"]["n"]) for i in items["data"]] == [
        (0, None, 1),
        (1, "b", 2),
        (2, None, 3),
    ]


async def test_a_bad_line_is_named(client: TestClient) -> None:
    status, problem = await post(client, b'{"n": 1}\n{"n": \n', operation="echo")
    assert status == 400
    assert problem["code"] == "malformed_json"
    assert problem["line"] == 2 and "Line 2" in problem["detail"]


async def test_an_invalid_item_has_the_json_pointer(client: TestClient) -> None:
    status, problem = await post(client, b'{"n": 1}\n{"n": "x"}\n', operation="echo")
    assert status == 422
    assert problem["code"] == "validation_error"
    assert problem["errors"][0]["pointer"].startswith("/items/1")


async def test_empty_unknown_and_bad_options(client: TestClient) -> None:
    assert (await post(client, b"\n", operation="echo"))[1]["errors"][0]["pointer"] == "/items"
    status, problem = await post(client, b'{"n": 1}\n', operation="nope")
    assert (status, problem["code"]) == (422, "unknown_operation")
    status, problem = await post(client, b'{"n": 1}\n')
    assert (status, problem["code"]) == (422, "unknown_operation")
    status, problem = await post(client, b'{"n": 1}\n', operation="echo", ttl_seconds="soon")
    assert problem["errors"][0]["pointer"] == "/ttl_seconds"
    status, problem = await post(client, b'{"n": 1}\n', operation="echo", colour="red")
    assert problem["errors"][0] == {"pointer": "/colour", "detail": "unknown field"}


async def test_the_body_limit_applies(make_client: Any) -> None:
    client = await make_client(max_body_bytes=1000)
    status, problem = await post(client, b'{"n": 1}\n' * 200, operation="echo")
    assert (status, problem["code"]) == (413, "payload_too_large")


async def test_idempotency_key_covers_the_query_options(client: TestClient) -> None:
    headers = {**NDJSON, "Idempotency-Key": "nd-1"}
    url = "/bulk-jobs"
    first = await client.post(url, data=b'{"n":1}\n', params={"operation": "echo"}, headers=headers)
    again = await client.post(url, data=b'{"n":1}\n', params={"operation": "echo"}, headers=headers)
    other = await client.post(url, data=b'{"n":1}\n', params={"operation": "noop"}, headers=headers)
    assert (first.status, again.status, other.status) == (202, 200, 422)
    assert (await first.json())["id"] == (await again.json())["id"]
    assert (await other.json())["code"] == "idempotency_key_reused"
