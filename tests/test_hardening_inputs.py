"""Issue 13 item 10: malformed numbers, tokens, header bytes and deep JSON are 4xx
problems, never 500s with tracebacks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs import jsonutil
from bulkjobs.parsing import ascii_decimal, ascii_uint
from bulkjobs.security import TokenSigner, hash_key
from tests.support import submit, wait_terminal

KEY = "bjk_hardening-key-0001"
KEYS = f"acme:sha256:{hash_key(KEY)}"
AUTH = {"Authorization": f"Bearer {KEY}"}
ODD_NUMBERS = ["²", "١٢", "9" * 5000, "1e3", "-1", " 5", "5\n", "0x10", "nan", "inf"]


@pytest.mark.parametrize("text", ODD_NUMBERS)
def test_shared_parser_takes_only_bounded_ascii_digits(text: str) -> None:
    assert ascii_uint(text) is None
    assert ascii_decimal(text) is None


def test_shared_parser_reads_plain_numbers() -> None:
    assert ascii_uint("0") == 0 and ascii_uint("123456") == 123456
    assert ascii_uint("1" * 19) is None
    assert ascii_decimal("2") == 2.0 and ascii_decimal("0.25") == 0.25


async def _problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    body = await resp.text()
    assert resp.status == status, body
    assert resp.content_type == "application/problem+json", body
    problem: dict[str, Any] = jsonutil.loads(body)
    assert problem["code"] == code, problem
    assert "Traceback" not in body
    return problem


@pytest.mark.parametrize("value", ODD_NUMBERS)
async def test_odd_limit_is_invalid_request(client: TestClient, value: str) -> None:
    job = await submit(client, "echo", [{"n": 1}])
    for path in ("/bulk-jobs", f"/bulk-jobs/{job['id']}/items"):
        resp = await client.get(path, params={"limit": value})
        await _problem(resp, 400, "invalid_request")


@pytest.mark.parametrize("value", ODD_NUMBERS)
async def test_odd_last_event_id_is_invalid_request(client: TestClient, value: str) -> None:
    job = await submit(client, "echo", [{"n": 1}])
    url = f"/bulk-jobs/{job['id']}/events"
    resp = await client.get(url, params={"last_event_id": value})
    await _problem(resp, 400, "invalid_request")
    if value.strip() == value:  # HTTP trims whitespace around header values
        resp = await client.get(url, headers={"Last-Event-ID": value})
        await _problem(resp, 400, "invalid_request")


@pytest.mark.parametrize("value", ODD_NUMBERS)
async def test_odd_wait_is_invalid_request(client: TestClient, value: str) -> None:
    job = await submit(client, "echo", [{"n": 1}])
    resp = await client.get(f"/bulk-jobs/{job['id']}", params={"wait": value})
    await _problem(resp, 400, "invalid_request")


@pytest.mark.parametrize("value", ["²", "9" * 5000, "١٢"])
async def test_odd_ndjson_ttl_is_invalid_ttl(client: TestClient, value: str) -> None:
    resp = await client.post(
        "/bulk-jobs",
        params={"operation": "echo", "ttl_seconds": value},
        data=b'{"n": 1}\n',
        headers={"Content-Type": "application/x-ndjson"},
    )
    await _problem(resp, 422, "invalid_ttl")


async def test_huge_json_ttl_is_a_problem(client: TestClient) -> None:
    body = b'{"operation": "echo", "items": [{"n": 1}], "ttl_seconds": ' + b"9" * 5000 + b"}"
    resp = await client.post("/bulk-jobs", data=body, headers={"Content-Type": "application/json"})
    assert 400 <= resp.status < 500, await resp.text()


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [200, 256, 300, 1024])
async def test_deep_json_is_malformed(client: TestClient, depth: int) -> None:
    item = b'{"n": 1, "x": ' + _nested(depth) + b"}"
    body = b'{"operation": "echo", "items": [' + item + b"]}"
    resp = await client.post("/bulk-jobs", data=body, headers={"Content-Type": "application/json"})
    problem = await _problem(resp, 400, "malformed_json")
    assert "depth" in problem["detail"] or "nested deeper" in problem["detail"]
    resp = await client.post(
        "/bulk-jobs",
        params={"operation": "echo"},
        data=item + b"\n",
        headers={"Content-Type": "application/x-ndjson"},
    )
    await _problem(resp, 400, "malformed_json")


async def test_moderate_nesting_is_accepted(client: TestClient) -> None:
    assert jsonutil.loads(_nested(jsonutil.MAX_DEPTH)) is not None
    with pytest.raises(jsonutil.JSONDecodeError):
        jsonutil.loads(_nested(jsonutil.MAX_DEPTH + 1))
    wide = jsonutil.dumps([[i] for i in range(1000)])  # many brackets, shallow
    assert len(jsonutil.loads(wide)) == 1000


# -- authentication -----------------------------------------------------------------


@pytest.fixture
async def secured(make_client: Any) -> TestClient:
    client: TestClient = await make_client(api_keys=KEYS)
    return client


@pytest.mark.parametrize(
    "token",
    [
        "².acme.mac",
        "١٢٣٤٥٦٧٨٩٠١.acme.mac",
        "9" * 5000 + ".acme.mac",
        "99999999999.acmé.mac",
        "99999999999.acme.mäc",
        "99999999999.acme." + "ü" * 43,
        "99999999999.ac\u0000me.mac",
    ],
)
async def test_odd_event_tokens_are_401(secured: TestClient, token: str) -> None:
    resp = await secured.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}]}, headers=AUTH
    )
    job = await resp.json()
    resp = await secured.get(f"/bulk-jobs/{job['id']}/events", params={"token": token})
    await _problem(resp, 401, "unauthorized")


def test_token_check_compares_bytes() -> None:
    signer = TokenSigner(b"k" * 32)
    token = signer.sign("job_1", "acme")
    assert signer.check(token, "job_1") == "acme"
    expiry, tenant, mac = token.split(".")
    assert signer.check(f"{expiry}.{tenant}.{mac[:-1]}é", "job_1") is None
    assert signer.check(f"{expiry}.acmé.{mac}", "job_1") is None
    assert signer.check(token, "job_\udcff") is None


async def _raw_request(client: TestClient, head: bytes) -> bytes:
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("value", [b"Bearer bjk_\xff\xfe\x80", b"\xff\xff", b"Bearer \xc3"])
async def test_non_utf8_authorization_is_401(secured: TestClient, value: bytes) -> None:
    head = (
        b"GET /bulk-jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: " + value + b"\r\n\r\n"
    )
    answer = await _raw_request(secured, head)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    assert b"Traceback" not in answer


async def test_good_key_and_token_still_work(secured: TestClient) -> None:
    resp = await secured.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}]}, headers=AUTH
    )
    job = await resp.json()
    await wait_terminal(secured, job["id"])
    events = job["links"]["events"]
    resp = await secured.get(events)
    assert resp.status == 200, await resp.text()
