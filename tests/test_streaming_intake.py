"""Streaming intake: bodies are parsed while they arrive, staged in batches, and become
a job only in the transaction that answers 202. Fields come in any order; a failed or
abandoned upload leaves nothing behind."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.models import utcnow
from bulkjobs.web.keys import ENGINE
from tests.support import wait_terminal

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}


def items(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"n": i, "id": f"i{i}"} for i in range(start, start + n)]


async def chunked(data: bytes, size: int, pause_s: float = 0.0) -> AsyncIterator[bytes]:
    """The body in small pieces, without a Content-Length: the streaming path."""
    for i in range(0, len(data), size):
        yield data[i : i + size]
        if pause_s:
            await asyncio.sleep(pause_s)


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert body["code"] == code, body
    return body  # type: ignore[no-any-return]


def rows(db_path: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql).fetchall()


async def results(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/bulk-jobs/{job_id}/results")
    assert resp.status == 200
    return [orjson.loads(line) for line in (await resp.read()).splitlines()]


@pytest.mark.parametrize("size", [7, 4096])
async def test_fields_in_any_order_with_values_cut_by_chunks(client: TestClient, size: int) -> None:
    # numbers end exactly where a chunk ends; `operation` and `ttl_seconds` come last
    body = b'{ "items" : [' + b",".join(b'{"n":%d}' % (10**9 + i) for i in range(300))
    body += b'] , "ttl_seconds": 3600.0, "operation": "echo" }'
    resp = await client.post("/bulk-jobs", data=chunked(body, size), headers=JSON)
    job = await resp.json()
    assert resp.status == 202, job
    assert job["total_items"] == 300
    done = await wait_terminal(client, job["id"])
    assert done.succeeded == 300 and done.ttl_s == 3600
    got = await results(client, job["id"])
    assert [r["result"]["n"] for r in got] == [10**9 + i for i in range(300)]


async def test_a_big_json_body_is_staged_in_batches_and_committed_once(
    client: TestClient, db_path: str
) -> None:
    body = orjson.dumps({"operation": "echo", "items": items(20_000)})
    assert len(body) > 256 * 1024  # past the size parsed whole in the loop
    resp = await client.post("/bulk-jobs", data=body, headers=JSON)
    job = await resp.json()
    assert resp.status == 202, job
    done = await wait_terminal(client, job["id"])
    assert (done.total_items, done.succeeded) == (20_000, 20_000)
    assert rows(db_path, "SELECT count(*) FROM staging") == [(0,)]
    got = await results(client, job["id"])
    assert [r["id"] for r in got[:3]] == ["i0", "i1", "i2"] and len(got) == 20_000


@pytest.mark.parametrize(
    ("tail", "status", "code"),
    [
        (b', "extra": 1}', 422, "validation_error"),  # an unknown field after the items
        (b', "items": [{"n": 1}]}', 422, "validation_error"),  # items twice
        (b"} x", 400, "malformed_json"),  # data after the object
        (b", }", 400, "malformed_json"),
        (b"", 400, "malformed_json"),  # the body ends inside the object
        (b', "ttl_seconds": 1e400}', 400, "malformed_json"),  # not a finite number
        (b', "ttl_seconds": NaN}', 400, "malformed_json"),
    ],
)
async def test_what_follows_the_items_is_checked(
    client: TestClient, db_path: str, tail: bytes, status: int, code: str
) -> None:
    body = orjson.dumps({"operation": "echo", "items": items(5000)})[:-1] + tail
    resp = await client.post("/bulk-jobs", data=chunked(body, 65536), headers=JSON)
    await problem(resp, status, code)
    assert (await (await client.get("/bulk-jobs")).json())["data"] == []
    assert rows(db_path, "SELECT count(*) FROM staging") == [(0,)]


async def test_a_refused_upload_leaves_nothing_behind(client: TestClient, db_path: str) -> None:
    bad = items(30_000)
    bad[29_999] = {"n": "not a number"}  # the last item, after several staged batches
    body = orjson.dumps({"operation": "echo", "items": bad})
    resp = await client.post("/bulk-jobs", data=chunked(body, 1 << 16), headers=JSON)
    found = await problem(resp, 422, "validation_error")
    assert found["errors"][0]["pointer"] == "/items/29999/n"
    assert (await (await client.get("/bulk-jobs")).json())["data"] == []
    assert rows(db_path, "SELECT count(*) FROM staging") == [(0,)]
    engine = client.app[ENGINE]
    while rows(db_path, "SELECT count(*) FROM purge_queue") != [(0,)]:
        await engine.store.maintain(utcnow(), expire_jobs=0, purge_items=10_000, keep_s=0)
    assert rows(db_path, "SELECT count(*) FROM items") == [(0,)]


async def test_too_many_items_stops_reading_at_the_cap(make_client: Any) -> None:
    client = await make_client(max_items=1000)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"operation": "echo", "items": ['
        for _ in range(100):  # 100 x 1000 items, far past the cap
            part = b",".join([b'{"n": 1}'] * 1000) + b","
            sent += len(part)
            yield part
        yield b'{"n": 1}]}'

    resp = await client.post("/bulk-jobs", data=body(), headers=JSON)
    await problem(resp, 413, "too_many_items")


async def test_ndjson_streams_with_the_line_of_a_bad_item(client: TestClient) -> None:
    lines = [orjson.dumps(i) for i in items(10_000)]
    lines.insert(5000, b"")  # blank lines are skipped
    body = b"\n".join(lines) + b"\n"
    url = "/bulk-jobs?operation=echo"
    resp = await client.post(url, data=chunked(body, 3000), headers=NDJSON)
    job = await resp.json()
    assert resp.status == 202, job
    assert (await wait_terminal(client, job["id"])).succeeded == 10_000
    broken = body.replace(b'{"n":7000,', b'{"n":7000', 1)
    resp = await client.post(url, data=chunked(broken, 3000), headers=NDJSON)
    found = await problem(resp, 400, "malformed_json")
    assert found["line"] == 7002  # 7000 items, the blank line, then the broken one


@pytest.mark.parametrize("ndjson", [False, True])
async def test_idempotency_keys_fingerprint_a_streamed_body(
    client: TestClient, ndjson: bool
) -> None:
    if ndjson:
        url, headers = "/bulk-jobs?operation=echo", NDJSON
        body = b"\n".join(orjson.dumps(i) for i in items(9000))
    else:
        url, headers = "/bulk-jobs", JSON
        body = orjson.dumps({"operation": "echo", "items": items(9000)})
    key = {"Idempotency-Key": f"stream-{ndjson}"}
    first = await client.post(url, data=chunked(body, 50_000), headers={**headers, **key})
    assert first.status == 202, await first.text()
    again = await client.post(url, data=body, headers={**headers, **key})  # whole, this time
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == (await first.json())["id"]
    other = body.replace(b'"n":8999', b'"n":-1')
    resp = await client.post(url, data=chunked(other, 50_000), headers={**headers, **key})
    await problem(resp, 422, "idempotency_key_reused")


GZIP_BODY = gzip.compress(orjson.dumps({"operation": "echo", "items": items(10)}))


async def test_content_encoding_is_refused_by_default(client: TestClient) -> None:
    headers = {**JSON, "Content-Encoding": "gzip"}
    resp = await client.post("/bulk-jobs", data=GZIP_BODY, headers=headers)
    await problem(resp, 415, "unsupported_content_encoding")
    assert resp.headers["Accept-Encoding"] == "identity"


async def test_gzip_is_accepted_when_asked_for(make_client: Any) -> None:
    client = await make_client(accept_gzip=True)
    headers = {**JSON, "Content-Encoding": "gzip"}
    resp = await client.post("/bulk-jobs", data=GZIP_BODY, headers=headers)
    assert resp.status == 202, await resp.text()
    assert (await wait_terminal(client, (await resp.json())["id"])).succeeded == 10
    for other in ("deflate", "compress", "gzip, gzip"):
        resp = await client.post(
            "/bulk-jobs", data=GZIP_BODY, headers={**JSON, "Content-Encoding": other}
        )
        await problem(resp, 415, "unsupported_content_encoding")
    assert resp.headers["Accept-Encoding"] == "gzip"


async def test_a_gzip_bomb_is_refused_by_its_ratio(make_client: Any) -> None:
    client = await make_client(accept_gzip=True, max_inflate_ratio=50)
    bomb = gzip.compress(b'{"operation": "echo", "items": [' + b" " * (20 << 20) + b"]}")
    assert len(bomb) < 64 * 1024
    resp = await client.post("/bulk-jobs", data=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    found = await problem(resp, 413, "payload_too_large")
    assert "50 times" in found["detail"]


async def test_uploads_in_flight_are_bounded(make_client: Any) -> None:
    client = await make_client(max_uploads=2, max_uploads_per_tenant=1)
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b'{"operation": "echo", "items": [{"n": 1}'
        started.set()
        await asyncio.sleep(1.0)
        yield b"]}"

    first = asyncio.create_task(client.post("/bulk-jobs", data=slow(), headers=JSON))
    await started.wait()
    await asyncio.sleep(0.1)  # the first upload holds its slot now
    resp = await client.post("/bulk-jobs", data=chunked(b"{}", 1), headers=JSON)
    await problem(resp, 429, "too_many_uploads")
    assert resp.headers["Retry-After"] == "1"
    small = await client.post("/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}]})
    assert small.status == 202  # a small body is read whole: it takes no upload slot
    assert (await first).status == 202


async def test_an_abandoned_upload_is_discarded(client: TestClient, db_path: str) -> None:
    async def gone() -> AsyncIterator[bytes]:
        yield orjson.dumps({"operation": "echo", "items": items(20_000)})[:-10]
        raise ConnectionResetError("client gone")

    with pytest.raises(Exception):  # noqa: B017  (whatever the client library raises)
        await client.post("/bulk-jobs", data=gone(), headers=JSON)
    async with asyncio.timeout(10):
        while rows(db_path, "SELECT count(*) FROM staging") != [(0,)]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the server notices the reset on its own time
    assert (await (await client.get("/bulk-jobs")).json())["data"] == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"operation": "echo", "items": [{"n": ' + b"9" * 5000 + b"}]}", 400, "malformed_json"),
        (b'{"operation": "echo", "ttl_seconds": ' + b"9" * 5000 + b', "items": [{"n": 1}]}', 400,
         "malformed_json"),
        ('{"operation": "echo", "ttl_seconds": "²", "items": [{"n": 1}]}'.encode(), 422,
         "invalid_ttl"),
        (b'{"operation": "echo", "items": [{"n": 1, "id": "\\ud800"}]}', 400, "malformed_json"),
        (b'{"operation": "echo", "items": [{"n": 1e400}]}', 400, "malformed_json"),
        (b'\xff\xfe{"operation": "echo"}', 400, "malformed_json"),
        (b'{"operation": "echo", "items": [{"n": 1, "id": "\xc3"}]}', 400, "malformed_json"),
    ],
)  # fmt: skip
async def test_odd_bytes_are_refused_while_streaming(
    client: TestClient, db_path: str, body: bytes, status: int, code: str
) -> None:
    resp = await client.post("/bulk-jobs", data=chunked(body, 5), headers=JSON)
    await problem(resp, status, code)
    assert rows(db_path, "SELECT count(*) FROM staging") == [(0,)]
