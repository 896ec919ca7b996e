"""The CLI covers the whole API: status of a running job (progress, rate, ETA, human
times), watch, items, operations, retry and delete, each through the real entry point
against a real server process serving the demo operations."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ROOT, ServerProcess
from tests.test_cli_client import bulkjobs

pytestmark = pytest.mark.slow

HUMAN_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(str(tmp_path / "jobs.sqlite3"))  # the demo operations
    await proc.start()
    yield proc
    await proc.stop()


async def submit(server: ServerProcess, operation: str, items: list[dict[str, Any]]) -> str:
    status, job = await server.request(
        "POST", "/bulk-jobs", json={"operation": operation, "items": items}
    )
    assert status == 202, job
    return str(job["id"])


async def until_running(server: ServerProcess, job_id: str, processed: int) -> dict[str, Any]:
    """Long-poll (`?wait=`) until the job has run `processed` items."""
    job: dict[str, Any] = {}
    while not (job.get("status") == "running" and job.get("processed", 0) >= processed):
        _, job = await server.request("GET", f"/bulk-jobs/{job_id}?wait=5")
    return job


async def test_status_of_a_running_job_shows_progress_rate_and_eta(
    server: ServerProcess,
) -> None:
    job_id = await submit(server, "sleep", [{"ms": 5} for _ in range(6000)])
    await until_running(server, job_id, 1000)
    run = await bulkjobs(server, "status", job_id)
    assert run.code == 0, run.err
    assert "None" not in run.out
    assert "running" in run.out and "items/s" in run.out and "ETA" in run.out
    assert re.search(r"created\s+" + HUMAN_TIME.pattern, run.out)
    assert "of 6,000 done" in run.out

    await server.request("POST", f"/bulk-jobs/{job_id}/cancel")
    watched = await bulkjobs(server, "watch", job_id, "--json")
    assert watched.code == 1, watched.err  # cancelled
    assert watched.json()["status"] == "cancelled"
    done = await bulkjobs(server, "status", job_id)
    assert "cancelled" in done.out and "ETA" not in done.out and "  eta " not in done.out
    assert re.search(r"of 6,000 ran, [\d,]+ cancelled", done.out)
    assert re.search(r"completed\s+" + HUMAN_TIME.pattern, done.out)


async def test_items_retry_delete_and_operations(server: ServerProcess) -> None:
    items = [
        {"id": "ord_1", "status": "paid"},
        {"id": "ord_99999", "status": "paid"},
        {"id": "ord_2", "status": "delivered"},
    ]
    job_id = await submit(server, "update_orders_status", items)
    watched = await bulkjobs(server, "watch", job_id)
    assert watched.code == 2, watched.err  # some items failed
    assert "1 succeeded, 2 failed" in watched.out

    failed = await bulkjobs(server, "items", job_id, "--status", "failed")
    assert failed.code == 0, failed.err
    assert failed.out.splitlines()[0].split()[:3] == ["INDEX", "ID", "STATUS"]
    assert "order_not_found" in failed.out and "invalid_transition" in failed.out
    assert "ord_1 " not in failed.out
    as_json = await bulkjobs(server, "items", job_id, "--status", "failed", "--json")
    assert [row["index"] for row in as_json.json()] == [1, 2]

    retried = await bulkjobs(server, "retry", job_id)
    assert retried.code == 0, retried.err
    retry_id = retried.out.split()[0]
    assert f"bulkjobs watch {retry_id}" in retried.out
    assert "retries the 2 failed items of " + job_id in retried.out
    again = await bulkjobs(server, "watch", retry_id, "--json")
    assert again.code == 2 and again.json()["total_items"] == 2

    deleted = await bulkjobs(server, "delete", retry_id)
    assert (deleted.code, deleted.out.strip()) == (0, f"{retry_id} deleted")
    gone = await bulkjobs(server, "status", retry_id, "--json")
    assert gone.code == 1 and json.loads(gone.err)["error"]["code"] == "job_deleted"

    ops = await bulkjobs(server, "operations")
    assert ops.code == 0, ops.err
    names = [line.split()[0] for line in ops.out.splitlines()[1:]]
    assert names == ["update_orders_status", "noop", "sleep"]
    ops_json = await bulkjobs(server, "operations", "--json")
    assert {op["name"] for op in ops_json.json()} == set(names)


def test_version() -> None:
    from importlib import metadata

    run = subprocess.run(
        [sys.executable, "-m", "bulkjobs", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert run.returncode == 0
    assert run.stdout.startswith(f"bulkjobs {metadata.version('bulkjobs')} (commit ")


async def test_without_an_event_stream_progress_comes_from_polling(tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "jobs.sqlite3"), "--sse-max-streams", "0")
    await server.start()
    try:
        job_id = await submit(server, "sleep", [{"ms": 2} for _ in range(5000)])
        env = {"BULKJOBS_PROGRESS_INTERVAL_S": "0"}
        run = await bulkjobs(server, "watch", job_id, env=env)
    finally:
        await server.stop()
    assert run.code == 0, run.err
    lines = run.err.splitlines()
    assert all(line.startswith(job_id) for line in lines)
    running = {line for line in lines if re.search(r" running: [1-9][\d,]* of 5,000 done", line)}
    assert len(running) >= 2, lines  # drawn while it ran, not only at the start and end
    assert "5,000 of 5,000 done (100%)" in run.out
