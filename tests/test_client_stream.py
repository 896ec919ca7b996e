"""Streaming a 200,000-item submit from a generator: the client's memory stays bounded
(the server runs in its own process, so tracemalloc sees only the client)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkjobs.client import BulkJobsClient
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow

N_ITEMS = 200_000
PAD = "x" * 48


def generated_items() -> Iterator[dict[str, Any]]:
    for i in range(N_ITEMS):
        yield {"id": f"item-{i:07d}", "value": PAD}


async def test_200k_items_stream_with_bounded_client_memory(tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "jobs.sqlite3"), "--max-body-bytes", str(64 << 20))
    await server.start()
    try:
        async with BulkJobsClient(server.url) as bj:
            await bj.operations()  # connect first: measure the submit alone
            tracemalloc.start()
            try:
                job = await bj.submit("noop", generated_items())
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            status, page = await server.request("GET", f"/bulk-jobs/{job.id}/items?limit=1")
    finally:
        await server.stop()
    body_bytes = N_ITEMS * len('{"id":"item-0000000","value":""}\n' + PAD)
    print(f"client peak {peak / 2**20:.1f} MiB for a {body_bytes / 2**20:.1f} MiB body")
    assert job.total_items == N_ITEMS
    assert status == 200 and page["data"][0]["id"] == "item-0000000"
    assert body_bytes > 15 * 2**20
    assert peak < 8 * 2**20  # chunks + the in-memory part of the replay spool
