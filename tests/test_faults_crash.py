"""Fault suite, crashes: a real `bulkjobs serve` is kill -9'd at chosen points (failpoints
inside the store's transactions, a handler mid-item, or from outside while a large
POST is being uploaded), then restarted on the same file.

After every kill, and again once everything has finished after the restart:
- the file is consistent (tests/consistency.py: counters equal item outcomes, no
  half-stored job, no pending item in a terminal job, ...);
- every job that got a 202 finishes: `cancelled` if its cancel got a 200, otherwise
  `completed` with every item succeeded (or `cancelled` if the cancel was in flight);
- no item is lost: every succeeded item ran at least once (the `record` operation logs
  each run as `job_id:index` to an append-only file);
- an item ran twice only if it was in flight at the kill: it had run before the kill
  and its outcome was not committed yet.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from tests.consistency import assert_consistent
from tests.fault_ops import LOG_ENV, read_runs
from tests.fault_support import LoggedServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

# (step, name, items, ms per item) for submits; (step, name) for cancels.
SCRIPT: list[tuple[Any, ...]] = [
    ("submit", "A", 300, 3),
    ("submit", "B", 40, 3),
    ("cancel", "B"),
    ("submit", "C", 5000, 0),  # the large one: a long insert transaction
    ("submit", "D", 300, 3),
    ("cancel", "D"),
    ("submit", "E", 100, 3),
    ("cancel", "E"),
]

#: kill point x runs: each failpoint at two or three different passes.
FAILPOINTS = [
    "insert_job:1",  # ingest: the first job's rows are written, its COMMIT not done
    "insert_job:3",  # ingest of the 5000-item job, after two jobs were accepted
    "insert_job:5",
    "item:25",  # mid-processing: a handler is running, its outcome not stored
    "item:400",
    "item:2000",
    "commit:3",  # inside a group commit: item UPDATEs done, COMMIT not done
    "commit:12",
    "commit:30",
    "cancel:1",  # inside the cancel's transaction
    "cancel:2",  # ... after B's cancel got its 200
    "cancel:3",
]


@attrs.define
class Run:
    """What the client saw before the kill."""

    ids: dict[str, str] = attrs.Factory(dict)  # script name -> job id
    accepted: dict[str, int] = attrs.Factory(dict)  # job id -> total items (got a 202)
    cancels: dict[str, int | None] = attrs.Factory(dict)  # job id -> cancel status, None: lost
    broken_at: str | None = None


@attrs.frozen
class Snapshot:
    """The file and the run log right after the kill."""

    pending: frozenset[str]  # job_id:index still pending
    ran: frozenset[str]  # job_id:index that had run at least once


REPORT: list[str] = []


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LoggedServer]:
    env = {LOG_ENV: str(tmp_path / "runs.log"), "BULKJOBS_SUBMIT_RATE_PER_S": "0"}
    proc = LoggedServer(
        str(tmp_path / "jobs.sqlite3"),
        tmp_path / "server.log",
        "--app",
        "tests.fault_ops:registry",
        "--workers",
        "2",
        "--shutdown-grace-s",
        "2",
        env=env,
    )
    yield proc
    await proc.stop()


async def drive(http: aiohttp.ClientSession, server: LoggedServer, script: list[Any]) -> Run:
    """Play the script until it ends or the server dies under it."""
    run = Run()
    for step in script:
        try:
            if step[0] == "submit":
                await _submit(http, server, run, *step[1:])
            else:
                await _cancel(http, server, run, run.ids[step[1]])
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            run.broken_at = " ".join(map(str, step))
            break
    return run


async def keep_busy(http: aiohttp.ClientSession, server: LoggedServer, run: Run) -> None:
    """After the script, small jobs one after the other until a late failpoint fires."""
    for i in range(60):
        try:
            await _submit(http, server, run, f"F{i}", 50, 1)
            await _wait_terminal(http, server, run.ids[f"F{i}"])
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            run.broken_at = f"filler F{i}"
            return


async def _wait_terminal(http: aiohttp.ClientSession, server: LoggedServer, job_id: str) -> None:
    while True:
        async with http.get(f"{server.url}/bulk-jobs/{job_id}") as resp:
            job = await resp.json()
            assert resp.status == 200, job
        if job["status"] not in ("pending", "running"):
            return
        await asyncio.sleep(0.02)  # polling another process


async def _submit(
    http: aiohttp.ClientSession, server: LoggedServer, run: Run, name: str, n: int, ms: int
) -> None:
    body = {"operation": "record", "items": [{"ms": ms}] * n}
    async with http.post(server.url + "/bulk-jobs", json=body) as resp:
        job = await resp.json()
        assert resp.status == 202, job
    run.ids[name] = job["id"]
    run.accepted[job["id"]] = n


async def _cancel(http: aiohttp.ClientSession, server: LoggedServer, run: Run, job_id: str) -> None:
    run.cancels[job_id] = None
    async with http.post(f"{server.url}/bulk-jobs/{job_id}/cancel") as resp:
        body = await resp.json()
        assert resp.status in (200, 202, 409), body
        run.cancels[job_id] = resp.status
    if resp.status == 200:
        assert body["status"] == "cancelled", body


def snapshot(server: LoggedServer) -> Snapshot:
    with closing(sqlite3.connect(server.db_path)) as db:
        rows = db.execute(
            "SELECT j.id, i.idx FROM items i JOIN jobs j ON j.pk = i.job_pk"
            " WHERE i.status = 'pending'"
        ).fetchall()
    ran = read_runs(server.env[LOG_ENV])
    return Snapshot(frozenset(f"{j}:{i}" for j, i in rows), frozenset(ran))


def outcomes(server: LoggedServer) -> dict[str, tuple[str, int, list[tuple[int, str]]]]:
    """job id -> (status, total_items, [(index, item status)])."""
    with closing(sqlite3.connect(server.db_path)) as db:
        jobs = {
            r[0]: (r[1], r[2], []) for r in db.execute("SELECT id, status, total_items FROM jobs")
        }
        for job_id, idx, status in db.execute(
            "SELECT j.id, i.idx, i.status FROM items i JOIN jobs j ON j.pk = i.job_pk"
        ):
            jobs[job_id][2].append((idx, status))
    return jobs  # type: ignore[return-value]


def unfinished(db_path: str) -> int:
    with closing(sqlite3.connect(db_path)) as db:
        row = db.execute("SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')")
        return int(row.fetchone()[0])


async def restart_and_finish(server: LoggedServer) -> None:
    await server.start(env={"BULKJOBS_FAILPOINTS": ""})
    async with asyncio.timeout(60):
        while True:
            if not await asyncio.to_thread(unfinished, server.db_path):
                break
            await asyncio.sleep(0.05)  # polling another process
    assert await server.terminate() == 0


def verify(server: LoggedServer, run: Run, at_kill: Snapshot, point: str) -> tuple[int, int, int]:
    """Check the outcome against what the client saw; (items lost, duplicates, in flight)."""
    assert_consistent(server.db_path)
    jobs = outcomes(server)
    runs = read_runs(server.env[LOG_ENV])
    assert set(run.accepted) <= set(jobs), "a job that got a 202 is gone"
    if point.startswith("insert_job") or point.startswith("upload"):
        assert set(jobs) == set(run.accepted), "a job without a 202 was stored"
    lost = 0
    for job_id, (status, total, items) in jobs.items():
        cancel = run.cancels.get(job_id, "never")
        if cancel == 200:
            assert status == "cancelled", (job_id, status)
        elif cancel == "never":
            assert status == "completed", (job_id, status)
        else:
            assert status in ("completed", "cancelled"), (job_id, status, cancel)
        assert len(items) == total
        lost += sum(
            1
            for idx, st in items
            if (st == "succeeded" and runs.get(f"{job_id}:{idx}", 0) < 1)
            or (status == "completed" and st != "succeeded")
        )
    in_flight = at_kill.pending & at_kill.ran
    duplicates = {key for key, n in runs.items() if n > 1}
    assert duplicates <= in_flight, sorted(duplicates - in_flight)[:10]
    assert all(n <= 2 for n in runs.values()), "an item ran three times after one kill"
    assert lost == 0
    return lost, len(duplicates), len(in_flight)


@pytest.mark.parametrize("point", FAILPOINTS)
async def test_kill_9_at_failpoint_then_restart(server: LoggedServer, point: str) -> None:
    server.env["BULKJOBS_FAILPOINTS"] = point
    await server.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        run = await drive(http, server, SCRIPT)
        if run.broken_at is None:
            await keep_busy(http, server, run)
    assert await server.wait_exit(30) == -9, f"failpoint {point} never fired"
    assert_consistent(server.db_path)  # the state a crash leaves is already consistent
    at_kill = await asyncio.to_thread(snapshot, server)

    await restart_and_finish(server)
    lost, dups, in_flight = verify(server, run, at_kill, point)
    assert not server.log_problems(), server.log_problems()[:5]
    REPORT.append(f"{point}: broke at {run.broken_at}, lost {lost}, dup {dups}/{in_flight}")
    print(REPORT[-1])


async def _upload_then_kill(server: LoggedServer, kill_after_chunks: int) -> AsyncIterator[bytes]:
    yield b'{"operation": "record", "items": ['
    chunk = b",".join([b'{"ms": 0}'] * 20_000)
    for i in range(10):
        if i == kill_after_chunks:
            assert await server.kill() == -9  # the body is half sent: no 202 can exist
        yield (b"," if i else b"") + chunk
    yield b"]}"


@pytest.mark.parametrize("kill_after_chunks", [1, 6])
async def test_kill_9_while_a_large_post_is_uploading(
    server: LoggedServer, kill_after_chunks: int
) -> None:
    await server.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        run = await drive(http, server, SCRIPT[:3])
        assert run.broken_at is None and len(run.accepted) == 2
        with pytest.raises((aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
            async with http.post(
                server.url + "/bulk-jobs",
                data=_upload_then_kill(server, kill_after_chunks),
                headers={"Content-Type": "application/json"},
            ) as resp:
                pytest.fail(f"the upload got an answer: {resp.status}")
    assert_consistent(server.db_path)
    at_kill = await asyncio.to_thread(snapshot, server)

    await restart_and_finish(server)
    lost, dups, in_flight = verify(server, run, at_kill, "upload")
    REPORT.append(f"upload:{kill_after_chunks}: lost {lost}, dup {dups}/{in_flight}")
    print(REPORT[-1])
