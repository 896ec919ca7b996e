"""Several real `bulkjobs serve` processes on one PostgreSQL database (issue 11): events
and cancels cross processes (NOTIFY, with the poll as safety net), a kill -9 loses
nothing, fairness holds across the fleet, and a worker-only process does the work.

"Watcher" processes serve a registry without the `sleep` operation: they never claim
its items, so whatever they know of such a job came from another process.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest

from bulkjobs.demo import NoopItem, noop
from bulkjobs.registry import Registry
from bulkjobs.store.postgres_listen import _payloads, parse_payload
from tests.serverproc import ROOT, ServerProcess

pytestmark = pytest.mark.slow

# DiskGuard reads free space next to a SQLite file; a URL has none.
_ARGS = ("--min-free-disk-bytes", "0", "--workers", "4", "--access-log", "false")
_WATCHER = (*_ARGS, "--app", "tests.test_pg_multiprocess:watcher_registry")
_TERMINAL = ("completed", "failed", "cancelled")


def watcher_registry() -> Registry:
    """Only `noop`: a process serving this never works a `sleep` job."""
    reg = Registry()
    reg.operation("noop", item_type=NoopItem, batch_size=500)(noop)
    return reg


async def submit(server: ServerProcess, operation: str, items: list[dict[str, Any]]) -> Any:
    status, job = await server.request(
        "POST", "/bulk-jobs", json={"operation": operation, "items": items}
    )
    assert status == 202, job
    return job


def sleeps(n: int, ms: int) -> list[dict[str, Any]]:
    return [{"ms": ms} for _ in range(n)]


async def wait_terminal(server: ServerProcess, job_id: str, timeout_s: float = 30) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            status, job = await server.request("GET", f"/bulk-jobs/{job_id}?wait=5")
            assert status == 200, job
            if job["status"] in _TERMINAL:
                return job


async def wait_processed(server: ServerProcess, job_id: str, at_least: int) -> Any:
    async with asyncio.timeout(20):
        while True:
            status, job = await server.request("GET", f"/bulk-jobs/{job_id}")
            assert status == 200, job
            if job["processed"] >= at_least:
                return job
            await asyncio.sleep(0.02)  # polling processes we do not control


async def sse_events(server: ServerProcess, job_id: str) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) of a job's event stream until the server closes it."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"{server.url}/bulk-jobs/{job_id}/events") as resp,
    ):
        assert resp.status == 200, await resp.text()
        kind, data = "", b""
        async for raw in resp.content:
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
            elif not line and data:
                yield kind, orjson.loads(data)
                kind, data = "", b""


async def follow(server: ServerProcess, job_id: str) -> list[tuple[str, Any]]:
    return [event async for event in sse_events(server, job_id)]


async def db_fetch(url: str, sql: str, *args: Any) -> list[Any]:
    db = await asyncpg.connect(url)
    try:
        return list(await db.fetch(sql, *args))
    finally:
        await db.close()


@pytest.fixture
async def fleet(pg_url: str) -> AsyncIterator[list[ServerProcess]]:
    """Processes a test starts (append them); all killed at the end, whatever happened."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        await server.stop()


async def start(fleet: list[ServerProcess], *servers: ServerProcess) -> None:
    fleet.extend(servers)
    await asyncio.gather(*(s.start() for s in servers))


async def test_sse_on_b_follows_a_job_worked_on_a(pg_url: str, fleet: list[ServerProcess]) -> None:
    a, b = ServerProcess(pg_url, *_ARGS), ServerProcess(pg_url, *_WATCHER)
    await start(fleet, a, b)
    job = await submit(a, "sleep", sleeps(400, 20))
    events = await follow(b, job["id"])
    kinds = [k for k, _ in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "status", kinds
    last = events[-1][1]
    assert (last["status"], last["processed"], last["succeeded"]) == ("completed", 400, 400)
    progress = [d["processed"] for k, d in events if k == "progress"]
    assert len(progress) >= 3, kinds  # A's progress reached B in between
    assert progress == sorted(progress) and progress[0] > 0 and progress[-1] <= 400
    # the lag metric counts the notifications B received
    async with aiohttp.ClientSession() as http, http.get(b.url + "/metrics") as resp:
        text = await resp.text()
    count = next(
        ln for ln in text.splitlines() if ln.startswith("bulkjobs_notify_lag_seconds_count")
    )
    assert float(count.split()[-1]) > 3


async def test_cancel_on_b_stops_the_job_on_a_within_a_second(
    pg_url: str, fleet: list[ServerProcess]
) -> None:
    # Heartbeats every 10 s (lease 30 s): only NOTIFY can be this quick.
    a, b = ServerProcess(pg_url, *_ARGS), ServerProcess(pg_url, *_WATCHER)
    await start(fleet, a, b)
    job = await submit(a, "sleep", sleeps(2000, 50))  # 4 workers: 80 items/s, 25 s
    seen = await wait_processed(b, job["id"], 40)
    started = time.monotonic()
    status, cancelled = await b.request("POST", f"/bulk-jobs/{job['id']}/cancel")
    elapsed = time.monotonic() - started
    assert status == 200 and cancelled["status"] == "cancelled", (status, cancelled)
    assert elapsed < 1.0, f"cancel took {elapsed:.2f}s to stop the work on A"
    done = await wait_terminal(a, job["id"])
    assert done["status"] == "cancelled"
    # at most a second of work (80 items) plus the chunks in flight ran after the request
    assert done["succeeded"] - seen["processed"] <= 80 + 4 * 10, (seen, done)
    assert done["succeeded"] + done["cancelled"] == 2000 and done["failed"] == 0
    rows = await db_fetch(
        pg_url,
        "SELECT i.status, count(*) FROM items i JOIN jobs j ON j.pk = i.job_pk"
        " WHERE j.id = $1 GROUP BY i.status",
        job["id"],
    )
    assert dict(rows) == {"succeeded": done["succeeded"], "cancelled": done["cancelled"]}


async def test_kill_9_of_one_of_three_loses_nothing(
    pg_url: str, fleet: list[ServerProcess]
) -> None:
    # Leases of 50 items, so that all three work the job at once.
    args = (*_ARGS, "--lease-s", "2", "--load-page-items", "50")
    servers = [ServerProcess(pg_url, *args) for _ in range(3)]
    await start(fleet, *servers)
    job = await submit(servers[0], "sleep", sleeps(900, 10))
    holding = await lease_holders(pg_url, servers, at_least=2)
    victim = holding[-1]
    c = next(s for s in servers if s is not victim)
    assert (await victim.kill()) != 0  # its leases come back after 2 s
    done = await wait_terminal(c, job["id"], timeout_s=60)
    assert (done["status"], done["succeeded"], done["failed"]) == ("completed", 900, 0)
    rows = await db_fetch(
        pg_url,
        "SELECT count(*), count(DISTINCT i.idx), count(*) FILTER (WHERE i.status = 'succeeded'),"
        " min(j.succeeded), min(j.failed), min(j.cancelled)"
        " FROM items i JOIN jobs j ON j.pk = i.job_pk WHERE j.id = $1",
        job["id"],
    )
    # every item exactly one outcome, and the counters say the same as the outcomes
    assert tuple(rows[0]) == (900, 900, 900, 900, 0, 0)
    assert await db_fetch(pg_url, "SELECT * FROM leases") == []


async def lease_holders(
    url: str, servers: list[ServerProcess], at_least: int
) -> list[ServerProcess]:
    """The servers holding a lease, once at least `at_least` of them do."""
    async with asyncio.timeout(15):
        while True:
            owners = " ".join(r[0] for r in await db_fetch(url, "SELECT owner FROM leases"))
            held = [s for s in servers if s.proc is not None and f":{s.proc.pid}:" in owners]
            if len(held) >= at_least:
                return held
            await asyncio.sleep(0.05)  # polling the database


async def test_a_small_job_behind_a_big_one_finishes_fast(
    pg_url: str, fleet: list[ServerProcess]
) -> None:
    a, b = ServerProcess(pg_url, *_ARGS), ServerProcess(pg_url, *_ARGS)
    await start(fleet, a, b)
    body = orjson.dumps({"operation": "noop", "items": [{"value": i} for i in range(200_000)]})
    headers = {"Content-Type": "application/json"}
    status, big = await a.request("POST", "/bulk-jobs", data=io.BytesIO(body), headers=headers)
    assert status == 202, big
    await wait_processed(b, big["id"], 1)  # the big job runs on the fleet
    started = time.monotonic()
    small = await submit(b, "noop", [{"value": i} for i in range(10)])
    done = await wait_terminal(a, small["id"])
    elapsed = time.monotonic() - started
    assert done["status"] == "completed" and elapsed < 2.0, elapsed
    _, still = await a.request("GET", f"/bulk-jobs/{big['id']}")
    print(f"\n10-item job done in {elapsed:.2f}s; the 200k job was at {still['processed']}")
    await wait_terminal(a, big["id"], timeout_s=60)


async def test_a_worker_only_process_runs_jobs_submitted_elsewhere(
    pg_url: str, fleet: list[ServerProcess], tmp_path: Path
) -> None:
    # A leaves leases of chunks it did not finish: 3 s until the worker takes them over.
    a = ServerProcess(pg_url, *_ARGS, "--lease-s", "3")
    await start(fleet, a)
    log = tmp_path / "worker.log"
    worker = await start_worker(pg_url, log)
    try:
        job = await submit(a, "sleep", sleeps(400, 20))
        await wait_processed(a, job["id"], 20)
        await drain(a)  # A drains and leaves; the worker does the rest
        async with asyncio.timeout(30):
            while True:
                rows = await db_fetch(
                    pg_url, "SELECT status, succeeded FROM jobs WHERE id = $1", job["id"]
                )
                if rows[0][0] in _TERMINAL:
                    break
                await asyncio.sleep(0.1)  # polling the database
        assert tuple(rows[0]) == ("completed", 400)
        worker.send_signal(15)  # SIGTERM drains it like `serve`
        async with asyncio.timeout(30):
            assert await worker.wait() == 0, log.read_text()
        text = log.read_text()
        assert "worker-only" in text and "Traceback" not in text, text
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


async def drain(server: ServerProcess) -> None:
    """SIGTERM; the exit must be clean and prompt (the log says why not)."""
    try:
        code = await server.terminate(timeout_s=15)
    except TimeoutError:
        await server.kill()
        raise AssertionError((await server.stderr())[-4000:]) from None
    assert code == 0, (await server.stderr())[-4000:]


async def start_worker(pg_url: str, log: Path) -> asyncio.subprocess.Process:
    """`bulkjobs serve --no-http`, ready once it says so in its log."""
    cmd = [sys.executable, "-m", "bulkjobs", "serve", "--db", pg_url, *_ARGS, "--no-http"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    async with asyncio.timeout(20):
        while "worker-only" not in (text := await asyncio.to_thread(log.read_text)):
            assert proc.returncode is None, text
            await asyncio.sleep(0.05)  # polling a process we do not control
    return proc


async def test_sse_reaches_the_end_when_the_listen_connection_is_killed(
    pg_url: str, fleet: list[ServerProcess]
) -> None:
    a, b = ServerProcess(pg_url, *_ARGS), ServerProcess(pg_url, *_WATCHER)
    await start(fleet, a, b)
    assert b.proc is not None
    name = f"bulkjobs-listen:{b.proc.pid}"
    before = await listener_pid(pg_url, name)
    job = await submit(a, "sleep", sleeps(600, 20))  # about 3 s on A
    events, killed = [], []
    async for kind, data in sse_events(b, job["id"]):
        events.append((kind, data))
        if kind == "progress" and not killed:
            killed = await db_fetch(pg_url, "SELECT pg_terminate_backend($1)", before)
            assert killed[0][0] is True
    assert events[-1][0] == "status" and events[-1][1]["status"] == "completed", events
    assert events[-1][1]["succeeded"] == 600 and killed
    after = await listener_pid(pg_url, name)  # B listens again, on a new connection
    assert after != before


async def listener_pid(url: str, name: str) -> int:
    async with asyncio.timeout(10):
        while True:
            rows = await db_fetch(
                url, "SELECT pid FROM pg_stat_activity WHERE application_name = $1", name
            )
            if rows:
                return int(rows[0][0])
            await asyncio.sleep(0.05)  # polling the database


async def test_poll_only_mode_follows_without_listen(
    pg_url: str, fleet: list[ServerProcess]
) -> None:
    """`--pg-listen false` (PgBouncer in transaction mode): the poll alone carries events."""
    a, b = ServerProcess(pg_url, *_ARGS), ServerProcess(pg_url, *_WATCHER, "--pg-listen", "false")
    await start(fleet, a, b)
    job = await submit(a, "sleep", sleeps(200, 20))
    events = await follow(b, job["id"])
    assert events[-1][1]["status"] == "completed" and events[-1][1]["succeeded"] == 200
    listening = await db_fetch(
        pg_url,
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
        "bulkjobs-listen:%",
    )
    assert b.proc is not None and a.proc is not None
    assert [r[0] for r in listening] == [f"bulkjobs-listen:{a.proc.pid}"]


def test_notify_payloads_stay_under_the_limit_and_round_trip() -> None:
    pks = list(range(10**12, 10**12 + 3000))  # 13-digit pks: several payloads
    payloads = list(_payloads(1_700_000_000_123, pks))
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    parsed = [parse_payload(p) for p in payloads]
    assert {sent for sent, _ in parsed} == {1_700_000_000_123}
    assert [pk for _, part in parsed for pk in part] == pks
