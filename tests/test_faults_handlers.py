"""Fault suite, handlers: faults that tests/test_processing.py does not already cover
(it has the raising, timing-out and `object()`-returning handlers).

Here: a handler that leaks memory on every call, handlers raising `SystemExit`,
`KeyboardInterrupt` or another `BaseException` (from the loop and from a thread), an
exception that cannot even be printed, a sync handler blocked past its timeout, and
more kinds of unserialisable results. In every case the item fails (or succeeds)
on its own, the job's other items complete, and every worker is still alive.

`SystemExit` / `KeyboardInterrupt` from a handler fail that item as `internal_error`:
a handler is library code called for one item, not the owner of the process; the
operator stops the server with SIGTERM/SIGINT, which never arrive as an exception
inside a handler (aiohttp's runner turns them into a graceful shutdown).
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs import ItemContext, Registry
from bulkjobs.web.keys import ENGINE
from tests.support import Value, submit, wait_terminal

pytestmark = pytest.mark.timeout(60)

LEAK_BYTES = 100 * 1024
SECRET_TEXT = "could not connect to db-7.corp.internal:5432 as app/hunter2"


class Interrupt(BaseException):
    """A user-defined BaseException that is none of the standard ones."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken too")


def _raise_for(n: int) -> None:
    """n % 5: 0 ok, 1 SystemExit, 2 KeyboardInterrupt, 3 Interrupt, 4 Unprintable."""
    kind = n % 5
    if kind == 1:
        sys.exit(3)
    if kind == 2:
        raise KeyboardInterrupt
    if kind == 3:
        raise Interrupt("not an Exception")
    if kind == 4:
        raise Unprintable


class Faults:
    """A registry of misbehaving operations and the state they leak."""

    def __init__(self) -> None:
        self.leaked: list[bytes] = []
        self.release = threading.Event()
        self.registry = self._build()

    def _build(self) -> Registry:
        reg = Registry()

        @reg.operation("leak", item_type=Value, batch_size=10)
        async def leak(item: Value, ctx: ItemContext) -> dict[str, int]:
            self.leaked.append(b"x" * LEAK_BYTES)  # never freed, by design of the test
            return {"n": item.n}

        @reg.operation("exits", item_type=Value, batch_size=7)
        async def exits(item: Value, ctx: ItemContext) -> dict[str, int]:
            _raise_for(item.n)
            return {"n": item.n}

        @reg.operation("sync_exits", item_type=Value, batch_size=7)
        def sync_exits(item: Value, ctx: ItemContext) -> dict[str, int]:
            _raise_for(item.n)
            return {"n": item.n}

        @reg.batch_operation("batch_exits", item_type=Value, batch_size=3)
        async def batch_exits(items: list[Value], ctx: Any) -> list[Any]:
            for v in items:
                _raise_for(v.n)
            return [{"n": v.n} for v in items]

        @reg.operation("sync_hang", item_type=Value, batch_size=1, timeout_s=0.1)
        def sync_hang(item: Value, ctx: ItemContext) -> None:
            if item.n % 4 == 0:
                self.release.wait(30)  # blocks a thread far past its timeout

        @reg.operation("garbage_kinds", item_type=Value, batch_size=5)
        async def garbage_kinds(item: Value, ctx: ItemContext) -> Any:
            loop: dict[str, Any] = {}
            loop["self"] = loop
            kinds: list[Any] = [
                {"ok": item.n},
                {1, 2},
                2**70,
                loop,
                {(1, 2): "tuple key"},
                (x for x in ()),
                {"big": "y" * 1_000_000},
            ]
            return kinds[item.n % len(kinds)]

        @reg.operation("leaky_text", item_type=Value)
        async def leaky_text(item: Value, ctx: ItemContext) -> None:
            raise ConnectionError(SECRET_TEXT)

        @reg.operation("sync_leaky_text", item_type=Value)
        def sync_leaky_text(item: Value, ctx: ItemContext) -> None:
            raise RuntimeError(SECRET_TEXT)

        @reg.operation("echo", item_type=Value)
        async def echo(item: Value, ctx: ItemContext) -> dict[str, int]:
            return {"n": item.n}

        return reg


@pytest.fixture
def faults() -> Iterator[Faults]:
    f = Faults()
    yield f
    f.release.set()  # let blocked handler threads end before the loop closes


async def items_of(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/bulk-jobs/{job_id}/items?limit=1000")
    assert resp.status == 200
    return (await resp.json())["data"]  # type: ignore[no-any-return]


async def assert_pool_survives(client: TestClient) -> None:
    engine = client.app[ENGINE]
    assert engine.alive, "a background task died"
    assert engine.workers.busy == 0
    again = await submit(client, "echo", [{"n": i} for i in range(50)])
    assert (await wait_terminal(client, again["id"])).succeeded == 50
    assert engine.alive


async def test_handler_leaking_memory_every_call(make_client: Any, faults: Faults) -> None:
    client = await make_client(registry=faults.registry, workers=2)
    body = await submit(client, "leak", [{"n": i} for i in range(200)])
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded) == ("completed", 200)
    # The service neither caps nor frees a handler's own memory; it keeps working.
    assert len(faults.leaked) == 200  # ~20 MB held by the handler's module list
    await assert_pool_survives(client)


@pytest.mark.parametrize("operation", ["exits", "sync_exits"])
async def test_base_exceptions_from_a_handler_fail_only_their_item(
    make_client: Any, faults: Faults, operation: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(registry=faults.registry, workers=2)
    body = await submit(client, operation, [{"n": i} for i in range(40)])
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded, job.failed) == ("completed", 8, 32)
    items = await items_of(client, body["id"])
    for item in items:
        if item["index"] % 5 == 0:
            assert item["status"] == "succeeded", item
        else:
            assert item["error"]["code"] == "internal_error", item
    # the tenant gets a reference, the log has the exception under it (issue 13 item 14)
    logged = {r.getMessage() for r in caplog.records}
    for k, kind in ((1, "SystemExit"), (2, "KeyboardInterrupt"), (3, "Interrupt: not an")):
        ref = _ref(items[k]["error"]["message"])
        assert any(f"raised {kind}" in line and f"(ref {ref})" in line for line in logged)
    ref = _ref(items[4]["error"]["message"])
    assert any("raised Unprintable" in line and f"(ref {ref})" in line for line in logged)
    await assert_pool_survives(client)


def _ref(message: str) -> str:
    match = re.fullmatch(r"internal error \(ref ([0-9a-f]{12})\)", message)
    assert match is not None, message
    return match[1]


@pytest.mark.parametrize("operation", ["leaky_text", "sync_leaky_text"])
async def test_handler_exception_text_reaches_only_the_log(
    make_client: Any, faults: Faults, operation: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(registry=faults.registry, workers=2)
    body = await submit(client, operation, [{"n": 1}, {"n": 2}])
    await wait_terminal(client, body["id"])
    items = await items_of(client, body["id"])
    assert {i["error"]["code"] for i in items} == {"internal_error"}
    refs = {_ref(i["error"]["message"]) for i in items}
    assert len(refs) == 2  # one reference per failure
    resp = await client.get(f"/bulk-jobs/{body['id']}/results?format=ndjson")
    assert SECRET_TEXT not in await resp.text()
    for ref in refs:
        [line] = [r.getMessage() for r in caplog.records if f"(ref {ref})" in r.getMessage()]
        assert SECRET_TEXT in line and operation in line


async def test_base_exception_from_a_batch_handler_fails_its_batch(
    make_client: Any, faults: Faults
) -> None:
    client = await make_client(registry=faults.registry, workers=2)
    # batches of 3: [5, 10, 15] succeed, the 3 batches holding 1, 2, 3 fail entirely
    items = [{"n": n} for n in (1, 5, 10, 2, 5, 10, 3, 5, 10, 5, 10, 15)]
    body = await submit(client, "batch_exits", items)
    job = await wait_terminal(client, body["id"])
    assert (job.status, job.succeeded, job.failed) == ("completed", 3, 9)
    await assert_pool_survives(client)


async def test_sync_handler_blocked_past_its_timeout(make_client: Any, faults: Faults) -> None:
    client = await make_client(registry=faults.registry, workers=2)
    body = await submit(client, "sync_hang", [{"n": i} for i in range(12)])
    job = await wait_terminal(client, body["id"])
    items = await items_of(client, body["id"])
    assert [i["index"] for i in items if i["status"] == "failed"] == [0, 4, 8]
    assert {i["error"]["code"] for i in items if i["status"] == "failed"} == {"timeout"}
    assert (job.status, job.succeeded) == ("completed", 9)
    await assert_pool_survives(client)


async def test_unserialisable_results_fail_their_item(make_client: Any, faults: Faults) -> None:
    client = await make_client(registry=faults.registry, workers=2)
    body = await submit(client, "garbage_kinds", [{"n": i} for i in range(14)])
    job = await wait_terminal(client, body["id"])
    items = await items_of(client, body["id"])
    good = [i["index"] for i in items if i["status"] == "succeeded"]
    assert good == [0, 6, 7, 13]  # a plain dict and a 1 MB string are fine
    bad = [i for i in items if i["status"] == "failed"]
    assert {i["error"]["code"] for i in bad} == {"internal_error"}
    assert all(i["error"]["message"].startswith("bad result") for i in bad)
    assert job.failed == 10
    resp = await client.get(f"/bulk-jobs/{body['id']}/results?format=ndjson")
    assert resp.status == 200
    assert len((await resp.read()).splitlines()) == 14
    await assert_pool_survives(client)
