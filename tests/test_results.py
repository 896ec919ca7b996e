"""Result downloads (NDJSON, CSV), their filters and errors, and retry of failures."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.support import Gate, submit, wait_terminal

pytestmark = pytest.mark.both_backends  # the store's answers, on each backend

TRICKY_ID = 'a,"b"\nc'


async def finished(client: TestClient, items: list[dict[str, Any]], op: str = "echo") -> str:
    body = await submit(client, op, items)
    await wait_terminal(client, body["id"])
    return str(body["id"])


def mixed_items() -> list[dict[str, Any]]:
    return [
        {"n": 0, "id": "first"},
        {"n": 1, "fail": "bad_value"},
        {"n": 2, "id": TRICKY_ID},
        {"n": 3, "id": "x", "fail": "out_of_stock"},
    ]


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code
    return body


async def test_terminal_job_links_its_results(client: TestClient) -> None:
    job_id = await finished(client, mixed_items())
    body = await (await client.get(f"/bulk-jobs/{job_id}")).json()
    assert body["result_url"] == body["links"]["results"] == f"/bulk-jobs/{job_id}/results"


async def test_ndjson_has_one_record_per_item_in_request_order(client: TestClient) -> None:
    job_id = await finished(client, mixed_items())
    resp = await client.get(f"/bulk-jobs/{job_id}/results")
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    assert f'filename="{job_id}-results.ndjson"' in resp.headers["Content-Disposition"]
    records = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert records[0]["id"] == "first" and records[0]["status"] == "succeeded"
    assert records[0]["result"]["n"] == 0
    assert "id" not in records[1]
    assert records[1]["error"] == {"code": "bad_value", "message": "item 1 failed as asked"}
    assert records[2]["id"] == TRICKY_ID
    assert records[3]["error"]["code"] == "out_of_stock"


async def test_csv_quotes_commas_quotes_and_newlines(client: TestClient) -> None:
    job_id = await finished(client, mixed_items())
    resp = await client.get(f"/bulk-jobs/{job_id}/results?format=csv")
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert resp.headers["Content-Disposition"].endswith(f'"{job_id}-results.csv"')
    rows = list(csv.DictReader(io.StringIO(await resp.text(), newline="")))
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[2]["id"] == TRICKY_ID
    assert json.loads(rows[0]["result"])["n"] == 0
    assert rows[1]["error_code"] == "bad_value" and rows[1]["result"] == ""
    assert rows[3]["error_message"] == "item 3 failed as asked"


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ("text/csv", "text/csv"),
        ("application/x-ndjson", "application/x-ndjson"),
        ("text/csv;q=0.5, application/x-ndjson", "application/x-ndjson"),
        ("*/*", "application/x-ndjson"),
    ],
)
async def test_accept_header_chooses_the_format(
    client: TestClient, accept: str, media: str
) -> None:
    job_id = await finished(client, [{"n": 1}])
    resp = await client.get(f"/bulk-jobs/{job_id}/results", headers={"Accept": accept})
    assert resp.status == 200 and resp.content_type == media


async def test_status_filter_returns_exactly_the_failures(client: TestClient) -> None:
    job_id = await finished(client, mixed_items())
    resp = await client.get(f"/bulk-jobs/{job_id}/results?status=failed&format=csv")
    assert f'"{job_id}-failed.csv"' in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await resp.text(), newline="")))
    assert [r["index"] for r in rows] == ["1", "3"]
    resp = await client.get(f"/bulk-jobs/{job_id}/results?status=succeeded")
    assert [json.loads(x)["index"] for x in (await resp.text()).splitlines()] == [0, 2]


async def test_large_result_spans_many_pages(client: TestClient) -> None:
    job_id = await finished(client, [{"value": i} for i in range(4500)], op="noop")
    resp = await client.get(f"/bulk-jobs/{job_id}/results")
    lines = (await resp.text()).splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(4500))


async def test_running_job_is_409_unless_partial(client: TestClient, gate: Gate) -> None:
    body = await submit(client, "gated", [{"n": i} for i in range(3)])
    await gate.entered.wait()
    resp = await client.get(f"/bulk-jobs/{body['id']}/results")
    p = await problem(resp, 409, "job_not_terminal")
    assert p["job_status"] in ("pending", "running")
    resp = await client.get(f"/bulk-jobs/{body['id']}/results?partial=true")
    records = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert {r["status"] for r in records} == {"pending"}
    gate.opened.set()
    await wait_terminal(client, body["id"])


@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        ("format=xml", {}, 400, "unsupported_format"),
        ("status=broken", {}, 400, "invalid_status_filter"),
        ("partial=maybe", {}, 400, "invalid_request"),
        ("", {"Accept": "application/xml"}, 406, "not_acceptable"),
        ("", {"Accept": "text/csv;q=0"}, 406, "not_acceptable"),
    ],
)
async def test_bad_download_requests(
    client: TestClient, query: str, headers: dict[str, str], status: int, code: str
) -> None:
    job_id = await finished(client, [{"n": 1}])
    resp = await client.get(f"/bulk-jobs/{job_id}/results?{query}", headers=headers)
    await problem(resp, status, code)


async def test_unknown_job_results_are_404(client: TestClient) -> None:
    resp = await client.get("/bulk-jobs/job_0000000000000000000000000a/results")
    await problem(resp, 404, "job_not_found")


# -- retry -------------------------------------------------------------------


async def test_retry_creates_a_linked_job_of_the_failures(client: TestClient) -> None:
    source_id = await finished(client, mixed_items())
    before = await client.get(f"/bulk-jobs/{source_id}")
    resp = await client.post(f"/bulk-jobs/{source_id}/retry")
    assert resp.status == 202
    retry = await resp.json()
    assert resp.headers["Location"] == retry["links"]["self"]
    assert retry["operation"] == "echo" and retry["total_items"] == 2
    assert retry["links"]["retry_of"] == f"/bulk-jobs/{source_id}"
    await wait_terminal(client, retry["id"])
    after = await client.get(f"/bulk-jobs/{source_id}")
    assert after.headers["ETag"] != before.headers["ETag"]
    assert (await after.json())["links"]["retried_by"] == f"/bulk-jobs/{retry['id']}"
    results = await client.get(f"/bulk-jobs/{retry['id']}/results")
    records = [json.loads(line) for line in (await results.text()).splitlines()]
    assert [(r["index"], r.get("id")) for r in records] == [(0, None), (1, "x")]
    assert [r["error"]["code"] for r in records] == ["bad_value", "out_of_stock"]


async def test_retry_without_failures_is_409(client: TestClient) -> None:
    job_id = await finished(client, [{"n": 1}])
    await problem(await client.post(f"/bulk-jobs/{job_id}/retry"), 409, "no_failed_items")


async def test_retry_of_running_job_is_409(client: TestClient, gate: Gate) -> None:
    body = await submit(client, "gated", [{"n": 1}])
    await gate.entered.wait()
    resp = await client.post(f"/bulk-jobs/{body['id']}/retry")
    await problem(resp, 409, "job_not_terminal")
    gate.opened.set()
    await wait_terminal(client, body["id"])


async def test_retry_of_unknown_job_is_404(client: TestClient) -> None:
    resp = await client.post("/bulk-jobs/job_0000000000000000000000000a/retry")
    await problem(resp, 404, "job_not_found")
