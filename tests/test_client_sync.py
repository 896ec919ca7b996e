"""`SyncClient` against a real `bulkjobs serve` process (the demo operations): every
method, blocking, from plain code and from inside a running event loop (a notebook)."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bulkjobs.client import (
    BulkJobsClient,
    Conflict,
    Gone,
    NotFound,
    RequestRetry,
    ServerUnreachable,
    SyncClient,
)
from tests.serverproc import ServerProcess, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(str(tmp_path / "jobs.sqlite3"))
    await proc.start()
    yield proc
    await proc.stop()


def test_every_method_blocks_and_answers(server: ServerProcess) -> None:
    items = [{"id": "ord_7", "status": "paid"}, {"id": "ord_nope", "status": "paid"}]
    with SyncClient(server.url) as client:
        assert {op["name"] for op in client.operations()} >= {"update_orders_status", "noop"}
        job = client.submit("update_orders_status", items)
        assert job.id.startswith("job_") and job.total_items == 2
        done = client.wait(job.id, timeout=20)
        assert (done.status, done.succeeded, done.failed) == ("completed", 1, 1)
        assert client.get(job.id) == done

        failed = list(client.items(job.id, status="failed"))
        assert [(r["index"], r["error"]["code"]) for r in failed] == [(1, "order_not_found")]
        assert [r["status"] for r in client.results(job.id)] == ["succeeded", "failed"]
        buffer = io.BytesIO()
        assert client.download(job.id, buffer, format="csv") == len(buffer.getvalue()) > 0
        assert [j.id for j in client.list(operation="update_orders_status")] == [job.id]
        events = list(client.events(job.id))
        assert events[-1].is_terminal and events[-1].status == "completed"

        retry = client.retry(job.id)
        assert client.wait(retry.id).total_items == 1
        client.delete(retry.id)
        with pytest.raises(Gone) as gone:
            client.get(retry.id)
        assert gone.value.code == "job_deleted"
        with pytest.raises(NotFound):
            client.get("job_nope")
        assert client.poll(job.id).status == "completed"


def test_cancel_and_a_stopped_iterator(server: ServerProcess) -> None:
    with SyncClient(server.url) as client:
        job = client.submit("sleep", [{"ms": 20} for _ in range(500)])
        for event in client.events(job.id):  # leave the stream early: it is closed
            if event.count("processed") > 0:
                break
        cancelled = client.cancel(job.id)
        assert cancelled.status in ("running", "cancelled")
        final = client.wait(job.id, timeout=20)
        assert final.status == "cancelled" and final.cancelled > 0
        with pytest.raises(Conflict):
            client.cancel(job.id)
    assert client._thread is None  # closed: the loop thread is gone


def test_its_own_loop_thread_starts_lazily_and_stops_on_close(server: ServerProcess) -> None:
    before = {t.name for t in threading.enumerate()}
    client = SyncClient.from_env(url=server.url)
    assert "bulkjobs-sync-client" not in before
    assert client.get(client.submit("noop", [{}]).id).total_items == 1
    assert any(t.name == "bulkjobs-sync-client" for t in threading.enumerate())
    client.close()
    assert not any(t.name == "bulkjobs-sync-client" for t in threading.enumerate())
    client.close()  # idempotent


async def test_works_inside_a_running_loop_like_a_notebook(server: ServerProcess) -> None:
    asyncio.get_running_loop()  # as in Jupyter: a loop runs in this thread
    with SyncClient(server.url) as client:
        job = client.wait(client.submit("noop", [{}, {}, {}]).id)
    assert job.status == "completed"
    async with BulkJobsClient(server.url) as async_client:  # the same answers
        assert (await async_client.get(job.id)) == job


def test_no_server_is_a_typed_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = SyncClient(url, retry=RequestRetry(max_attempts=1))
    with client, pytest.raises(ServerUnreachable) as err:
        client.operations()
    assert url in str(err.value)
