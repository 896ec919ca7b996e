"""The Python client against a live app: every method, waiting over SSE and by
polling, resuming a cut stream, and retrying a dropped submit without a twin job."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.client import (
    BulkJobsClient,
    Conflict,
    Gone,
    NotFound,
    RetryPolicy,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from bulkjobs.security import hash_key
from tests.client_proxy import BreakingProxy
from tests.conftest import ClientFactory
from tests.support import Gate


def url_of(tc: TestClient) -> str:
    return f"http://127.0.0.1:{tc.server.port}"


class Recorder:
    """A trace config that records (method, path, status) and signals chosen statuses."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []
        self.statuses: dict[int, asyncio.Event] = {}
        self.config = aiohttp.TraceConfig()
        self.config.on_request_end.append(self._end)

    def event(self, status: int) -> asyncio.Event:
        return self.statuses.setdefault(status, asyncio.Event())

    async def _end(self, session: Any, ctx: SimpleNamespace, params: Any) -> None:
        self.seen.append((params.method, params.url.path, params.response.status))
        self.event(params.response.status).set()

    def statuses_of(self, method: str, suffix: str) -> list[int]:
        return [s for m, p, s in self.seen if m == method and p.endswith(suffix)]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    yield Recorder()


@pytest.fixture
async def traced(recorder: Recorder) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trace_configs=[recorder.config]) as session:
        yield session


async def test_submit_wait_and_inspect_a_job(client: TestClient) -> None:
    async with BulkJobsClient(url_of(client)) as bj:
        items = [{"n": i, "id": f"it{i}"} for i in range(10)] + [{"n": 99, "fail": "bad_n"}]
        job = await bj.submit("echo", items, ttl_seconds=3600)
        assert (job.operation, job.total_items) == ("echo", 11)
        done = await bj.wait(job.id, timeout=30)
        assert (done.status, done.succeeded, done.failed) == ("completed", 10, 1)
        assert done.is_terminal and not done.all_succeeded
        assert (await bj.get(job.id)).processed == 11

        failed = [i async for i in bj.items(job.id, status="failed")]
        assert [(i["index"], i["error"]["code"]) for i in failed] == [(10, "bad_n")]
        paged = [i["index"] async for i in bj.items(job.id, page_size=3)]
        assert paged == list(range(11))

        records = [r async for r in bj.results(job.id)]
        assert records[3]["result"]["n"] == 3 and records[10]["error"]["code"] == "bad_n"
        rows = [r async for r in bj.results(job.id, format="csv")]
        assert json.loads(rows[3]["result"])["n"] == 3 and rows[10]["error_code"] == "bad_n"
        only_failed = [r async for r in bj.results(job.id, status="failed")]
        assert [r["index"] for r in only_failed] == [10]
        buf = io.BytesIO()
        assert await bj.download(job.id, buf, format="csv") == len(buf.getvalue())
        assert buf.getvalue().startswith(b"index,id,status")


async def test_list_retry_delete_and_operations(client: TestClient) -> None:
    async with BulkJobsClient(url_of(client)) as bj:
        first = await bj.submit("echo", [{"n": 1, "fail": "nope"}, {"n": 2}])
        second = await bj.submit("noop", iter([{"id": "a"}]))
        await bj.wait(first.id)
        await bj.wait(second.id)
        listed = [j.id async for j in bj.list(page_size=1)]
        assert listed == [second.id, first.id]
        assert [j.id async for j in bj.list(operation="noop")] == [second.id]

        retry = await bj.retry(first.id)
        assert retry.total_items == 1
        assert (await bj.wait(retry.id)).failed == 1

        await bj.delete(second.id)
        with pytest.raises(Gone) as gone:
            await bj.get(second.id)
        assert gone.value.code == "job_deleted"
        names = {op["name"] for op in await bj.operations()}
        assert {"echo", "noop", "update_orders_status"} <= names


async def test_errors_are_typed_and_carry_the_problem_code(client: TestClient) -> None:
    async with BulkJobsClient(url_of(client)) as bj:
        with pytest.raises(NotFound) as missing:
            await bj.get("job_nope")
        assert (missing.value.status, missing.value.code) == (404, "job_not_found")
        with pytest.raises(ValidationFailed) as invalid:
            await bj.submit("echo", [{"n": 1}, {"n": "x"}])
        assert invalid.value.errors[0]["pointer"].startswith("/items/1")
        with pytest.raises(ValidationFailed) as unknown:
            await bj.submit("no_such_op", [{}])
        assert unknown.value.code == "unknown_operation"
        job = await bj.submit("noop", [{}])
        await bj.wait(job.id)
        with pytest.raises(Conflict) as terminal:
            await bj.cancel(job.id)
        assert terminal.value.code == "job_terminal"
        with pytest.raises(Conflict) as nothing:
            await bj.retry(job.id)
        assert nothing.value.code == "no_failed_items"


async def test_cancel_and_the_events_of_a_job(make_client: ClientFactory, gate: Gate) -> None:
    live = await make_client(cancel_wait_s=0.01)
    async with BulkJobsClient(url_of(live)) as bj:
        job = await bj.submit("gated", [{"n": i} for i in range(6)])
        await gate.entered.wait()
        winding = await bj.cancel(job.id)
        assert winding.raw["cancel_requested_at"] is not None
        gate.opened.set()
        events = [e async for e in bj.events(job.id)]
        assert events[-1].type == "status" and events[-1].status == "cancelled"
        assert events[-1].count("cancelled") >= 1
        seqs = [e.seq for e in events[1:]]
        assert seqs == sorted(set(seqs))
        assert (await bj.wait(job.id)).status == "cancelled"


async def test_wait_times_out_with_a_typed_error(client: TestClient) -> None:
    async with BulkJobsClient(url_of(client)) as bj:
        job = await bj.submit("gated", [{"n": 1}])
        with pytest.raises(WaitTimeout) as late:
            await bj.wait(job.id, timeout=0.2)
        assert late.value.job_id == job.id and isinstance(late.value, TimeoutError)


async def test_wait_falls_back_to_polling_with_etags(
    make_client: ClientFactory,
    gate: Gate,
    recorder: Recorder,
    traced: aiohttp.ClientSession,
) -> None:
    live = await make_client(sse_max_streams=0)  # every event stream answers 503
    async with BulkJobsClient(url_of(live), session=traced) as bj:
        job = await bj.submit("gated", [{"n": 1}, {"n": 2}])
        waiter = asyncio.create_task(bj.wait(job.id, timeout=30))
        try:
            await recorder.event(304).wait()  # a poll found the job unchanged
            gate.opened.set()
            done = await waiter
        finally:
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
    assert done.status == "completed"
    assert recorder.statuses_of("GET", "/events") == [503]
    polls = recorder.statuses_of("GET", job.id)
    assert polls[0] == 200 and 304 in polls and polls[-1] == 200


async def test_a_cut_event_stream_resumes_with_last_event_id(
    make_client: ClientFactory, gate: Gate
) -> None:
    live = await make_client()
    proxy = BreakingProxy(live.server.port, rule=cut_after_snapshot)
    await proxy.start()
    try:
        async with BulkJobsClient(url_of(live)) as direct:
            job = await direct.submit("gated", [{"n": i} for i in range(4)])
        async with BulkJobsClient(proxy.url, max_reconnect_delay_s=0.2) as bj:
            events = []
            async for event in bj.events(job.id):
                events.append(event)
                if proxy.broken.is_set():
                    gate.opened.set()  # progress happens while the client is away
    finally:
        await proxy.stop()
    assert events[0].type == "snapshot"
    assert events[-1].is_terminal and events[-1].status == "completed"
    assert proxy.connections >= 2
    resumed = proxy.requests[1].decode()
    assert f"Last-Event-ID: {events[0].seq}" in resumed
    seqs = [e.seq for e in events if e.seq is not None]
    assert seqs == sorted(set(seqs)) or seqs[0] == seqs[1]  # snapshot may share a seq


def cut_after_snapshot(conn: int, chunk: bytes) -> str:
    return "cut" if conn == 0 and b"event: snapshot" in chunk else "pass"


def drop_first_response(conn: int, chunk: bytes) -> str:
    return "drop" if conn == 0 else "pass"


async def test_a_dropped_submit_is_retried_without_a_second_job(client: TestClient) -> None:
    proxy = BreakingProxy(client.server.port, rule=drop_first_response)
    await proxy.start()
    try:
        policy = RetryPolicy(initial_backoff_s=0.01)
        async with BulkJobsClient(proxy.url, retry=policy) as bj:
            job = await bj.submit("noop", ({"id": f"x{i}"} for i in range(500)))
            assert proxy.broken.is_set() and proxy.connections == 2
            assert job.total_items == 500
            jobs = [j async for j in bj.list()]
    finally:
        await proxy.stop()
    assert [j.id for j in jobs] == [job.id]  # the server made one job, not two
    assert proxy.requests[0].split(b"\r\n")[0] == proxy.requests[1].split(b"\r\n")[0]


async def test_a_busy_server_is_retried_after_retry_after(
    make_client: ClientFactory,
    gate: Gate,
    recorder: Recorder,
    traced: aiohttp.ClientSession,
) -> None:
    live = await make_client(max_pending_items=3)
    async with BulkJobsClient(url_of(live), session=traced) as bj:
        await bj.submit("gated", [{"n": 1}, {"n": 2}, {"n": 3}])

        def later_items() -> Iterator[dict[str, int]]:
            yield from ({"n": i} for i in range(2))

        submit = asyncio.create_task(bj.submit("echo", later_items()))
        try:
            await recorder.event(503).wait()
            gate.opened.set()
            job = await submit
        finally:
            submit.cancel()
            await asyncio.gather(submit, return_exceptions=True)
        assert job.total_items == 2
        assert recorder.statuses_of("POST", "/bulk-jobs")[-2:] == [503, 202]
        assert (await bj.wait(job.id)).succeeded == 2


async def test_retries_give_up_with_the_last_problem(make_client: ClientFactory) -> None:
    live = await make_client(max_pending_items=1)
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_wait_s=0.01)
    async with BulkJobsClient(url_of(live), retry=policy) as bj:
        with pytest.raises(Unavailable) as busy:
            await bj.submit("noop", [{}, {}])
    assert busy.value.code == "server_busy" and busy.value.retry_after_s == 1


async def test_a_failing_item_source_aborts_the_submit(client: TestClient) -> None:
    def broken_items() -> Iterator[dict[str, int]]:
        yield from ({"n": i} for i in range(2000))
        raise LookupError("the source broke")

    async with BulkJobsClient(url_of(client)) as bj:
        with pytest.raises(LookupError, match="the source broke"):
            await bj.submit("echo", broken_items())
        assert [j async for j in bj.list()] == []  # nothing half-submitted


async def test_the_api_key_is_sent_as_a_bearer_token(make_client: ClientFactory) -> None:
    live = await make_client(api_keys=f"acme:sha256:{hash_key('key-acme-1')}")
    async with BulkJobsClient(url_of(live), api_key="key-acme-1") as bj:
        job = await bj.wait((await bj.submit("echo", [{"n": 1}])).id, timeout=30)
        assert job.succeeded == 1
    async with BulkJobsClient(url_of(live), api_key="wrong") as bj:
        with pytest.raises(Unauthorized) as denied:
            await bj.get(job.id)
    assert denied.value.code == "unauthorized"
