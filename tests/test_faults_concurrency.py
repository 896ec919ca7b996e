"""Fault suite, concurrency: 50 clients submit, poll, list, page, download, cancel,
retry and delete for a bounded time against one real server process.

No response is a 5xx or mentions a traceback or a locked database; the server's log
has no error; it still drains cleanly on SIGTERM; and the SQLite file passes the
consistency checker afterwards. Every job that got a 202 and was not deleted is there.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from tests.consistency import assert_consistent, job_counts
from tests.fault_ops import LOG_ENV
from tests.fault_support import FORBIDDEN, LoggedServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CLIENTS = 50
DURATION_S = 12.0


@attrs.define
class Tally:
    """What all clients saw."""

    statuses: Counter[int] = attrs.Factory(Counter)
    by_action: Counter[str] = attrs.Factory(Counter)
    bad: list[str] = attrs.Factory(list)
    accepted: set[str] = attrs.Factory(set)
    deleted: set[str] = attrs.Factory(set)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LoggedServer]:
    env = {
        LOG_ENV: str(tmp_path / "runs.log"),
        "BULKJOBS_SUBMIT_RATE_PER_S": "0",
        "BULKJOBS_MAX_ACTIVE_JOBS": "0",
    }
    proc = LoggedServer(
        str(tmp_path / "jobs.sqlite3"),
        tmp_path / "server.log",
        "--app",
        "tests.fault_ops:registry",
        "--workers",
        "4",
        "--shutdown-grace-s",
        "5",
        env=env,
    )
    await proc.start()
    yield proc
    await proc.stop()


class Client:
    """One simulated API user with its own seeded choices and its own jobs."""

    def __init__(self, n: int, http: aiohttp.ClientSession, base: str, tally: Tally) -> None:
        self.rnd = random.Random(n)
        self.n = n
        self.http = http
        self.base = base
        self.tally = tally
        self.jobs: list[str] = []
        self.etags: dict[str, str] = {}

    async def call(self, action: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, **kw) as resp:
            text = await resp.text()
        self.tally.statuses[resp.status] += 1
        self.tally.by_action[action] += 1
        if resp.status >= 500 or any(word in text for word in FORBIDDEN):
            self.tally.bad.append(f"{method} {path} -> {resp.status}: {text[:300]}")
        body: Any = None
        if text and resp.content_type in ("application/json", "application/problem+json"):
            body = await resp.json(content_type=None)
        if resp.status == 200 and "ETag" in resp.headers and path.count("/") == 2:
            self.etags[path] = resp.headers["ETag"]
        return resp.status, body

    def pick(self) -> str | None:
        return self.rnd.choice(self.jobs) if self.jobs else None

    async def run(self, deadline: float) -> None:
        actions = [self.submit] * 5 + [self.poll] * 4 + [self.browse] * 3
        actions += [self.cancel] * 2 + [self.delete] * 2 + [self.retry]
        while time.monotonic() < deadline:
            await self.rnd.choice(actions)()

    async def submit(self) -> None:
        rnd = self.rnd
        op = rnd.choice(["noop", "sleep", "record"])
        n = rnd.choice([1, 5, 50, 300])
        items: list[dict[str, Any]] = [
            {"value": i} if op == "noop" else {"ms": rnd.choice([0, 1, 3])} for i in range(n)
        ]
        if rnd.random() < 0.1:
            items[rnd.randrange(n)] = {"ms": "not a number"}  # 422 for sleep/record
        headers = {}
        if rnd.random() < 0.2:  # retried submits with the same key
            headers["Idempotency-Key"] = f"client-{self.n}-{rnd.randrange(3)}"
        body = {"operation": op, "items": items}
        status, job = await self.call("submit", "POST", "/bulk-jobs", json=body, headers=headers)
        if status in (200, 202) and job["id"] not in self.jobs:
            self.tally.accepted.add(job["id"])
            self.jobs.append(job["id"])

    async def poll(self) -> None:
        job_id = self.pick()
        if job_id is None:
            return
        path = f"/bulk-jobs/{job_id}"
        headers = {"If-None-Match": self.etags[path]} if path in self.etags else {}
        query = "?wait=0.5" if self.rnd.random() < 0.2 else ""
        await self.call("poll", "GET", path + query, headers=headers)

    async def browse(self) -> None:
        job_id = self.pick()
        choice = self.rnd.randrange(4)
        if choice == 0 or job_id is None:
            status = self.rnd.choice(["", "?status=running", "?status=completed&limit=5"])
            await self.call("list", "GET", "/bulk-jobs" + status)
        elif choice == 1:
            await self.call("items", "GET", f"/bulk-jobs/{job_id}/items?limit=200")
        elif choice == 2:
            query = "?status=failed&limit=20"
            await self.call("items", "GET", f"/bulk-jobs/{job_id}/items{query}")
        else:
            fmt = self.rnd.choice(["ndjson", "csv"])
            await self.call("results", "GET", f"/bulk-jobs/{job_id}/results?format={fmt}")

    async def cancel(self) -> None:
        job_id = self.pick()
        if job_id is not None:
            await self.call("cancel", "POST", f"/bulk-jobs/{job_id}/cancel")

    async def delete(self) -> None:
        job_id = self.pick()
        if job_id is None:
            return
        status, _ = await self.call("delete", "DELETE", f"/bulk-jobs/{job_id}")
        if status == 204:
            self.tally.deleted.add(job_id)
            self.jobs.remove(job_id)

    async def retry(self) -> None:
        job_id = self.pick()
        if job_id is None:
            return
        status, job = await self.call("retry", "POST", f"/bulk-jobs/{job_id}/retry")
        if status in (200, 201, 202):
            self.tally.accepted.add(job["id"])
            self.jobs.append(job["id"])


def stored_job_ids(db_path: str) -> set[str]:
    with closing(sqlite3.connect(db_path)) as db:
        return {r[0] for r in db.execute("SELECT id FROM jobs")}


async def test_fifty_clients_for_a_bounded_time(server: LoggedServer) -> None:
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        deadline = time.monotonic() + DURATION_S
        clients = [Client(n, http, server.url, tally) for n in range(CLIENTS)]
        async with asyncio.TaskGroup() as tg:
            for c in clients:
                tg.create_task(c.run(deadline))
        async with http.get(server.url + "/readyz") as resp:
            assert resp.status == 200

    requests = sum(tally.statuses.values())
    print(f"concurrency: {requests} requests, statuses {dict(sorted(tally.statuses.items()))}")
    print(f"  by action {dict(tally.by_action)}; jobs {len(tally.accepted)} accepted,")
    print(f"  {len(tally.deleted)} deleted")
    assert not tally.bad, "\n".join(tally.bad[:10])
    assert requests > 1000 and tally.by_action["submit"] > 100
    assert tally.statuses[202] > 50 and tally.statuses[204] > 5  # the mix really happened

    assert await server.terminate() == 0  # drains under load, exits cleanly
    assert not server.log_problems(), "\n".join(server.log_problems()[:10])
    assert_consistent(server.db_path)
    stored = stored_job_ids(server.db_path)
    assert tally.accepted - tally.deleted <= stored, "a job that got a 202 is gone"
    assert not stored & tally.deleted, "a deleted job is back"
    print(f"  jobs by status after drain: {job_counts(server.db_path)}")
