"""Chaos run (issue 10): `kill -9` a real `bulkjobs serve` at random moments, again and
again, under mixed load, and check after every restart that nothing was lost.

    python -m tests.chaos --kills 100 --seed 1        (or `make chaos`)

Not part of `make test`: it takes minutes. The server is driven as a black box, over
HTTP on 127.0.0.1 only (submits of 1 to 20,000 `record` items, some failing; cancels;
retries of finished jobs' failures; deletes of finished jobs; SSE followers resuming
with `Last-Event-ID`; signed webhooks to a receiver in this process). From the SQLite
file it reads only `jobs(id, status, total_items, succeeded, failed, cancelled)` and
`webhook_messages(id, status)`, plus the consistency checker of tests/consistency.py.

Runs are counted outside the server's transactions: the `record` operation
(tests/fault_ops.py) appends `job_id:index` to an O_APPEND file before it does anything
else, so the file is the truth of how often each item ran, across every kill.

Checked, each violation failing the run (exit 1):
- after every kill and every restart: `check(db)` finds nothing (counters equal item
  outcomes, no half-stored job, ...);
- no accepted job is lost: every 202 is in the file until we deleted it, with its
  `total_items`, and ends `completed` (every item with the outcome it asked for) or,
  when we sent a cancel, `cancelled`; every succeeded/failed item ran at least once;
- no item ran twice without a kill in between; the items that ran again after kill k
  are at most the items in flight at kill k (ran, outcome not committed: per job,
  distinct items run minus succeeded minus failed), which is at most the in-flight
  bound derived from the server's settings (see `in_flight_bound`);
- every webhook message ever seen in the outbox, and the final event of every
  accepted job submitted with a webhook, reaches the receiver (at least once) with a
  valid signature;
- SSE ids only go up, and the final status an SSE stream announced is the job's;
- no 500, no server log line with a traceback or "database is locked", a clean
  SIGTERM exit at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from bulkjobs import jsonutil
from tests.consistency import TERMINAL, check
from tests.fault_ops import LOG_ENV
from tests.fault_support import FORBIDDEN, LoggedServer
from tests.sse_support import read_message
from tests.webhook_support import Receiver, random_secret, verify

#: The settings the server runs with (passed as flags; the bound is derived from them).
SERVER_SETTINGS: dict[str, Any] = {
    "workers": 2,
    "shutdown_grace_s": 2,
    "janitor_interval_s": 2,
    "webhook_allow_private": "true",
    "webhook_retry_schedule_s": "0.3,0.5,1,2,3,5,8",
    "access_log": "false",
}
NO_RUN = 0xFFFF  # "never ran" in the per-job arrays of last-run segments
MAX_BACKLOG = 40_000  # items not yet finished; the submitter waits above it
ACTIVE = ("pending", "running")
Row = tuple[str, int, int, int, int]  # status, total_items, succeeded, failed, cancelled


def in_flight_bound(batch_size: int, env: dict[str, str]) -> tuple[int, str]:
    """How many items may run again after one kill: the items that ran but whose
    outcomes were not committed. Those are at most
      - the chunks being worked: `workers` x `batch_size` (a worker holds one chunk,
        also while it waits to hand its outcomes to the full writer queue);
      - the outcomes queued for the writer: its queue holds 64 entries, one chunk
        (<= `batch_size` rows) each;
      - the group commit being written: the writer takes entries until it holds
        `commit_max_rows` rows, so < `commit_max_rows` + `batch_size`.
    Chunks in the work queue (`queue_chunks`) have not started: they do not count."""
    from bulkjobs.config import Settings

    s = Settings.from_env(env, workers=SERVER_SETTINGS["workers"])
    writer_queue = 64
    with contextlib.suppress(Exception):  # the writer is being rewritten: 64 if unknown
        from bulkjobs.service.writer import ResultWriter

        default = inspect.signature(ResultWriter.__init__).parameters["queue_size"].default
        writer_queue = int(default)
    working = s.workers * batch_size
    queued = writer_queue * batch_size
    flushing = s.commit_max_rows + batch_size - 1
    text = (
        f"{working + queued + flushing} = workers {s.workers} x batch {batch_size} (working)"
        f" + writer queue {writer_queue} x batch {batch_size} (queued)"
        f" + commit_max_rows {s.commit_max_rows} + batch {batch_size} - 1 (being committed)"
    )
    return working + queued + flushing, text


@attrs.define
class Expect:
    """What we asked for in a job that got a 202."""

    n: int
    fail_every: int  # items with index % fail_every == 0 fail; 0: none; 1: all
    webhook: bool

    def fails(self, idx: int) -> bool:
        return self.fail_every > 0 and idx % self.fail_every == 0


class Runs:
    """The run log, read after each kill (the process is dead: every line is whole)
    and split into segments, one per server process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.last: dict[str, array[int]] = {}  # job -> per index: segment of its last run
        self.distinct: Counter[str] = Counter()  # job -> items that ran at least once
        self.total = 0
        self.reruns: Counter[int] = Counter()  # segment of the earlier run -> re-runs
        self.reruns_job: Counter[tuple[int, str]] = Counter()
        self.same_segment: list[str] = []  # ran twice in one process: never allowed

    def ingest(self, segment: int) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].decode("ascii").splitlines():
            job, _, index = line.partition(":")
            self._one(job, int(index), segment)

    def _one(self, job: str, idx: int, segment: int) -> None:
        self.total += 1
        segs = self.last.get(job)
        if segs is None:
            segs = self.last[job] = array("H")
        if idx >= len(segs):
            segs.extend([NO_RUN] * (idx + 1 - len(segs)))
        prev = segs[idx]
        if prev == NO_RUN:
            self.distinct[job] += 1
        elif prev == segment:
            self.same_segment.append(f"{job}:{idx}")
        else:
            self.reruns[prev] += 1
            self.reruns_job[(prev, job)] += 1
        segs[idx] = segment

    def ran(self, job: str, idx: int) -> bool:
        segs = self.last.get(job)
        return segs is not None and idx < len(segs) and segs[idx] != NO_RUN


def read_jobs(db_path: str) -> dict[str, Row]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        sql = "SELECT id, status, total_items, succeeded, failed, cancelled FROM jobs"
        return {r[0]: tuple(r[1:]) for r in db.execute(sql)}  # type: ignore[misc]


def read_messages(db_path: str) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        return dict(db.execute("SELECT id, status FROM webhook_messages").fetchall())


@attrs.define
class Stream:
    """One SSE follower's place in its job's stream."""

    job: str
    last: int | None = None  # the last event id seen, sent as Last-Event-ID on resume
    done: bool = False


@attrs.define
class Stats:
    submits: int = 0
    items_accepted: int = 0
    rejected: Counter[int] = attrs.Factory(Counter)
    cancels: Counter[int] = attrs.Factory(Counter)
    retries: int = 0
    deletes: int = 0
    sse_streams: int = 0
    sse_events: int = 0
    sse_resumes: int = 0
    connection_errors: int = 0


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.secret = random_secret()
        self.receiver = Receiver()
        self.run_log = workdir / "runs.log"
        env = {
            LOG_ENV: str(self.run_log),
            "BULKJOBS_SUBMIT_RATE_PER_S": "0",
            "BULKJOBS_WEBHOOK_SECRETS": self.secret,
            "BULKJOBS_FAILPOINTS": "",
        }
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in SERVER_SETTINGS.items()]
        self.server = LoggedServer(
            str(workdir / "jobs.sqlite3"),
            workdir / "server.log",
            "--app",
            "tests.fault_ops:registry",
            *flags,
            env=env,
        )
        self.server_env = {k: v for k, v in self.server.env.items() if k.startswith("BULKJOBS_")}
        self.runs = Runs(self.run_log)
        self.violations: list[str] = []
        self.stats = Stats()
        self.accepted: dict[str, Expect] = {}
        self.cancel_sent: dict[str, int | None] = {}  # job -> answer (None: none came)
        self.deleted: set[str] = set()  # 204
        self.maybe_deleted: set[str] = set()  # DELETE sent, no answer
        self.retried: set[str] = set()
        self.following: set[str] = set()
        self.sse_final: dict[str, str] = {}  # job -> terminal status announced by SSE
        self.rows: dict[str, Row] = {}  # latest read of the jobs table
        self.messages_seen: set[str] = set()  # ids ever seen in webhook_messages
        self.in_flight: list[int] = []  # per kill
        self.in_flight_job: dict[tuple[int, str], int] = {}
        self.kill_times: list[float] = []
        self.stop = asyncio.Event()
        self.up = asyncio.Event()
        self.bound = 0
        self.bound_text = ""
        self.lost = 0
        self.undelivered_count = 0

    def violation(self, text: str) -> None:
        self.violations.append(text)
        print(f"  VIOLATION: {text}", flush=True)

    # -- the server ------------------------------------------------------------------

    async def start_server(self) -> None:
        try:
            await self.server.start(timeout_s=60)
        except (AssertionError, TimeoutError) as exc:
            tail = (await self.server.stderr())[-3000:]
            raise SystemExit(f"the server did not start ({exc!r}); log tail:\n{tail}") from None
        self.up.set()

    async def kill_cycle(self, k: int) -> None:
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        self.up.clear()
        code = await self.server.kill()
        if code != -9:
            self.violation(f"kill {k}: the server had exited by itself ({code})")
        await asyncio.to_thread(self.after_kill, k)
        await self.start_server()
        problems = await asyncio.to_thread(check, self.server.db_path)
        for p in problems[:10]:
            self.violation(f"after restart {k + 1}: {p}")

    def after_kill(self, k: int) -> None:
        """The process is dead: read what it left (segment k of the run log)."""
        self.runs.ingest(k)
        rows = read_jobs(self.server.db_path)
        self.rows = rows
        self.messages_seen |= set(read_messages(self.server.db_path))
        for p in check(self.server.db_path)[:10]:
            self.violation(f"at kill {k}: {p}")
        in_flight = 0
        for job, (status, _total, ok, failed, _c) in rows.items():
            ran = self.runs.distinct[job]
            if ran < ok + failed:
                self.violation(f"kill {k}: {job} has {ok + failed} outcomes, {ran} items ran")
            if status in ACTIVE and ran > ok + failed:
                self.in_flight_job[(k, job)] = ran - ok - failed
                in_flight += ran - ok - failed
        self.in_flight.append(in_flight)
        for job, exp in self.accepted.items():
            if job not in rows and job not in self.deleted | self.maybe_deleted:
                self.violation(f"kill {k}: accepted job {job} ({exp.n} items) is gone")
        if in_flight > self.bound:
            self.violation(f"kill {k}: {in_flight} items in flight > bound {self.bound}")

    # -- load --------------------------------------------------------------------------

    async def loop(self, http: aiohttp.ClientSession, step: Callable[..., Awaitable[None]]) -> None:
        """Run one kind of load until stopped; a dead server is only a pause."""
        while not self.stop.is_set():
            await self.up.wait()
            try:
                await step(http)
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                self.stats.connection_errors += 1
                await asyncio.sleep(0.05)

    async def answer(self, resp: aiohttp.ClientResponse, what: str) -> Any:
        body = await resp.json(content_type=None) if resp.status != 204 else None
        if resp.status >= 500 and resp.status != 503:
            self.violation(f"{what}: {resp.status} {str(body)[:300]}")
        return body

    def backlog(self) -> int:
        return sum(t - ok - f - c for s, t, ok, f, c in self.rows.values() if s in ACTIVE)

    def job_size(self) -> int:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randint(1, 50)
        if r < 0.8:
            return self.rng.randint(51, 1000)
        if r < 0.95:
            return self.rng.randint(1001, 5000)
        return self.rng.randint(15_000, 20_000)

    async def submit(self, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(self.rng.uniform(0.02, 0.25))
        if self.backlog() > MAX_BACKLOG:
            await asyncio.sleep(0.2)
            return
        n = self.job_size()
        fail_every = self.rng.choice([0, 0, 3, 7, 50])
        ms = self.rng.choice([0, 1, 5]) if n <= 200 else self.rng.choice([0, 0, 1])
        webhook = self.rng.random() < 0.7
        items = [
            {"ms": ms, "fail": True} if fail_every and i % fail_every == 0 else {"ms": ms}
            for i in range(n)
        ]
        body: dict[str, Any] = {"operation": "record", "items": items}
        if webhook:
            body["webhook"] = {"url": self.receiver.url}
        self.stats.submits += 1
        async with http.post(self.server.url + "/bulk-jobs", json=body) as resp:
            job = await self.answer(resp, "submit")
            if resp.status == 202:
                if job["total_items"] != n:
                    self.violation(f"submit: {job['id']} total_items {job['total_items']} != {n}")
                self.accepted[job["id"]] = Expect(n, fail_every, webhook)
                self.stats.items_accepted += n
            elif resp.status in (429, 503):
                self.stats.rejected[resp.status] += 1
                await asyncio.sleep(min(2.0, float(resp.headers.get("Retry-After", "1"))))
            else:
                self.violation(f"submit: {resp.status} {str(job)[:300]}")

    def pick(self, want: Callable[[str, Row], bool]) -> str | None:
        jobs = [j for j in self.accepted if j in self.rows and want(j, self.rows[j])]
        return self.rng.choice(jobs) if jobs else None

    async def cancel(self, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(self.rng.uniform(0.3, 1.5))
        job = self.pick(lambda j, r: r[0] in ACTIVE and j not in self.cancel_sent)
        if job is None:
            return
        self.cancel_sent[job] = None
        async with http.post(f"{self.server.url}/bulk-jobs/{job}/cancel") as resp:
            body = await self.answer(resp, f"cancel {job}")
            self.cancel_sent[job] = resp.status
            self.stats.cancels[resp.status] += 1
            if resp.status == 200 and body["status"] != "cancelled":
                self.violation(f"cancel {job}: 200 with status {body['status']}")
            elif resp.status not in (200, 202, 409):
                self.violation(f"cancel {job}: {resp.status} {str(body)[:300]}")

    async def retry(self, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        job = self.pick(lambda j, r: r[0] in TERMINAL and r[3] > 0 and j not in self.retried)
        if job is None:
            return
        self.retried.add(job)
        async with http.post(f"{self.server.url}/bulk-jobs/{job}/retry") as resp:
            body = await self.answer(resp, f"retry {job}")
            if resp.status == 202:
                self.stats.retries += 1
                failed = self.rows[job][3]
                if body["total_items"] != failed:
                    self.violation(f"retry {job}: {body['total_items']} items, {failed} failed")
                self.accepted[body["id"]] = Expect(body["total_items"], 1, False)
            elif resp.status in (429, 503):
                self.stats.rejected[resp.status] += 1
            elif resp.status not in (404, 410):
                self.violation(f"retry {job}: {resp.status} {str(body)[:300]}")

    def announced(self) -> set[tuple[str, str]]:
        """(job id, event type) of every webhook received."""
        return {(r.json["data"]["id"], r.json["type"]) for r in self.receiver.log}

    async def delete(self, http: aiohttp.ClientSession) -> None:
        """Delete a finished job (once the receiver has its final webhook, if any)."""
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        announced = self.announced()
        job = self.pick(
            lambda j, r: (
                r[0] in TERMINAL
                and j not in self.maybe_deleted
                and (not self.accepted[j].webhook or (j, f"job.{r[0]}") in announced)
            )
        )
        if job is None:
            return
        self.maybe_deleted.add(job)
        async with http.delete(f"{self.server.url}/bulk-jobs/{job}") as resp:
            body = await self.answer(resp, f"delete {job}")
            if resp.status == 204:
                self.deleted.add(job)
                self.stats.deletes += 1
            elif resp.status not in (404, 410):  # 409: the file said it was terminal
                self.violation(f"delete {job} ({self.rows[job][0]}): {resp.status} {body}")

    async def follow(self, http: aiohttp.ClientSession) -> None:
        """Follow one active job over SSE to its end, resuming after every drop."""
        await asyncio.sleep(self.rng.uniform(0.1, 1.0))
        active = [
            j
            for j in self.accepted
            if self.rows.get(j, ("",))[0] in ACTIVE and j not in self.following
        ]
        if not active:
            return
        if self.rng.random() < 0.5:  # often the longest one: alive at the next kill
            job = max(active, key=lambda j: self.rows[j][1] - sum(self.rows[j][2:]))
        else:
            job = self.rng.choice(active)
        self.following.add(job)
        self.stats.sse_streams += 1
        stream = Stream(job)
        try:
            while not self.stop.is_set() and not stream.done:
                await self.up.wait()
                try:
                    await self._stream(http, stream)
                except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError):
                    await asyncio.sleep(0.05)
        finally:
            self.following.discard(job)

    async def _stream(self, http: aiohttp.ClientSession, stream: Stream) -> None:
        job, headers = stream.job, {}
        if stream.last is not None:
            headers["Last-Event-ID"] = str(stream.last)
            self.stats.sse_resumes += 1
        async with http.get(f"{self.server.url}/bulk-jobs/{job}/events", headers=headers) as resp:
            if resp.status in (404, 410):  # deleted meanwhile
                stream.done = True
                return
            if resp.status != 200:
                await self.answer(resp, f"events {job}")
                await asyncio.sleep(0.2)
                return
            first = True
            while (msg := await read_message(resp)) is not None:
                if msg.event is None or msg.id is None:
                    continue
                self.stats.sse_events += 1
                last = stream.last
                if last is not None and (msg.id < last or (msg.id == last and not first)):
                    self.violation(f"events {job}: id {msg.id} after {last}")
                first = False
                stream.last = msg.id
                status = (msg.data.get("job") or msg.data).get("status")
                if status in TERMINAL:
                    self.sse_final[job] = status
                    stream.done = True
                    return

    async def poll_rows(self, _http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(0.3)
        self.rows = await asyncio.to_thread(read_jobs, self.server.db_path)

    # -- the end -----------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.rows = await asyncio.to_thread(read_jobs, self.server.db_path)
            active = [j for j, r in self.rows.items() if r[0] in ACTIVE]
            if not active:
                return
            await asyncio.sleep(0.2)
        self.violation(f"{len(active)} jobs still active {timeout_s:.0f} s after the last kill")

    def undelivered(self) -> set[str]:
        got = {r.id for r in self.receiver.log}
        wanted = set(self.messages_seen)
        return wanted - got

    async def wait_webhooks(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.messages_seen |= set(await asyncio.to_thread(read_messages, self.server.db_path))
            if not self.undelivered() and not self.missing_final_webhooks():
                return
            await asyncio.sleep(0.2)

    def missing_final_webhooks(self) -> list[str]:
        announced = self.announced()
        missing = []
        for job, exp in self.accepted.items():
            row = self.rows.get(job)
            if exp.webhook and row is not None and (job, f"job.{row[0]}") not in announced:
                missing.append(job)
        return missing

    async def check_results(self, http: aiohttp.ClientSession) -> int:
        """Every item of every accepted job still there: its outcome as asked, and it
        ran; returns the number of items lost."""
        lost = 0
        for job, exp in self.accepted.items():
            row = self.rows.get(job)
            if row is None:
                continue
            status, total, *_ = row
            cancel = self.cancel_sent.get(job, "never")
            if total != exp.n:
                self.violation(f"{job}: total_items {total} != {exp.n}")
            if cancel == 200 and status != "cancelled":
                self.violation(f"{job}: {status} after its cancel got a 200")
            elif cancel == "never" and status != "completed":
                self.violation(f"{job}: {status}, never cancelled")
            if job in self.sse_final and self.sse_final[job] != status:
                self.violation(f"{job}: SSE announced {self.sse_final[job]}, it is {status}")
            seen = 0
            wrong: list[str] = []
            url = f"{self.server.url}/bulk-jobs/{job}/results?format=ndjson"
            async with http.get(url) as resp:
                if resp.status != 200:
                    self.violation(f"results {job}: {resp.status}")
                    continue
                async for line in resp.content:
                    if line.strip():
                        seen += 1
                        wrong += self._check_item(job, exp, status, jsonutil.loads(line))
            if wrong:
                self.violation(f"{job}: {len(wrong)} items wrong, e.g. {'; '.join(wrong[:3])}")
                lost += len(wrong)
            if seen != total:
                self.violation(f"results {job}: {seen} items, total_items {total}")
                lost += max(0, total - seen)
        return lost

    def _check_item(self, job: str, exp: Expect, status: str, item: dict[str, Any]) -> list[str]:
        """What is wrong with one item's outcome (nothing: [])."""
        idx, st = item["index"], item["status"]
        want = "failed" if exp.fails(idx) else "succeeded"
        if st in ("succeeded", "failed") and not self.runs.ran(job, idx):
            return [f"{idx} is {st} and never ran"]
        if st in ("succeeded", "failed") and st != want:
            return [f"{idx} is {st}, it asked to be {want}"]
        if st != want and status == "completed":
            return [f"{idx} is {st} in a completed job"]
        return []

    def check_reruns(self) -> None:
        for key in self.runs.same_segment[:10]:
            self.violation(f"{key} ran twice in one server process")
        for (k, job), n in self.runs.reruns_job.items():
            if n > self.in_flight_job.get((k, job), 0):
                was = self.in_flight_job.get((k, job), 0)
                self.violation(f"kill {k}: {n} items of {job} ran again, {was} were in flight")
        for k, n in self.runs.reruns.items():
            if n > self.bound:
                self.violation(f"kill {k}: {n} re-runs > bound {self.bound}")
        for job, exp in self.accepted.items():
            if self.runs.distinct[job] > exp.n:
                self.violation(f"{job}: {self.runs.distinct[job]} distinct items ran of {exp.n}")

    # -- the whole run -----------------------------------------------------------------

    async def run(self) -> int:
        started = time.monotonic()
        runner = web.AppRunner(self.receiver.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.receiver.url = f"http://127.0.0.1:{port}/hook"
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.start_server()
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=60, sock_read=20)
            ) as http:
                async with http.get(self.server.url + "/operations") as resp:
                    ops = {o["name"]: o for o in (await resp.json())["data"]}
                batch = int(ops["record"]["limits"]["batch_size"])
                self.bound, self.bound_text = in_flight_bound(batch, self.server_env)
                print(f"in-flight bound per kill: {self.bound_text}", flush=True)
                steps = [self.submit, self.cancel, self.retry, self.delete]
                steps += [self.follow] * 3 + [self.poll_rows]
                tasks = [asyncio.create_task(self.loop(http, s)) for s in steps]
                for k in range(self.args.kills):
                    await self.kill_cycle(k)
                    if self.args.verbose or (k + 1) % 10 == 0 or k + 1 == self.args.kills:
                        print(self.progress(k + 1, started), flush=True)
                self.stop.set()
                await self.finish(http, tasks)
            await self.final_checks()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.stop()
            await runner.cleanup()
        return self.report(time.monotonic() - started)

    def progress(self, kills: int, started: float) -> str:
        return (
            f"kills {kills}: {time.monotonic() - started:.0f} s, {len(self.accepted)} jobs"
            f" accepted ({self.stats.items_accepted} items), {self.runs.total} runs,"
            f" in flight at the last kill {self.in_flight[-1]}, backlog {self.backlog()},"
            f" violations {len(self.violations)}"
        )

    async def finish(self, http: aiohttp.ClientSession, tasks: list[asyncio.Task[None]]) -> None:
        """After the last kill: no new work, everything finishes on the last server."""
        _, pending = await asyncio.wait(tasks, timeout=5)
        await self.drain(timeout_s=240)
        # Nothing is active and nothing new comes: the run log is complete (whole lines).
        await asyncio.to_thread(self.runs.ingest, self.args.kills)
        if pending:
            await asyncio.wait(pending, timeout=10)  # SSE followers see their jobs end
        for t in tasks:
            t.cancel()
        await self.wait_webhooks(timeout_s=60)
        self.lost = await self.check_results(http)

    async def final_checks(self) -> None:
        code = await self.server.terminate(timeout_s=30)
        if code != 0:
            self.violation(f"SIGTERM: exit code {code}")
        self.runs.ingest(self.args.kills)
        for p in check(self.server.db_path)[:10]:
            self.violation(f"at the end: {p}")
        self.rows = read_jobs(self.server.db_path)
        self.check_reruns()
        for job in self.deleted:
            if job in self.rows:
                self.violation(f"{job}: deleted (204) but still in the file")
        undelivered = self.undelivered()
        self.undelivered_count = len(undelivered)
        for msg in sorted(undelivered)[:10]:
            self.violation(f"webhook message {msg} never delivered")
        for job in self.missing_final_webhooks()[:10]:
            self.violation(f"{job}: its final webhook never arrived")
        bad = [r.id for r in self.receiver.log if not verify(self.secret, r.headers, r.body)]
        for msg in bad[:10]:
            self.violation(f"webhook {msg}: bad signature")
        for line in self.server.log_problems()[:10]:
            if any(word in line for word in FORBIDDEN) or " ERROR " in line:
                self.violation(f"server log: {line[:300]}")

    def report(self, wall_s: float) -> int:
        reruns = [self.runs.reruns.get(k, 0) for k in range(self.args.kills)]
        s = self.stats
        lines = [
            ("kills", f"{self.args.kills} (seed {self.args.seed})"),
            ("jobs accepted", f"{len(self.accepted)} ({s.items_accepted} items)"),
            ("retries, deletes", f"{s.retries} retries, {s.deletes} deleted"),
            ("cancels", f"{dict(s.cancels)}"),
            ("refused", f"{dict(s.rejected)}; connection errors {s.connection_errors}"),
            ("item runs", f"{self.runs.total} ({sum(reruns)} re-runs)"),
            ("SSE", f"{s.sse_streams} streams, {s.sse_events} events, {s.sse_resumes} resumes"),
            ("webhooks", f"{len(self.receiver.log)} received, {len(self.messages_seen)} in outbox"),
            ("items lost", f"{self.lost}"),
            (
                "in flight per kill",
                f"max {max(self.in_flight, default=0)}, median {_median(self.in_flight)}",
            ),
            ("re-runs per kill", f"max {max(reruns, default=0)}, median {_median(reruns)}"),
            ("in-flight bound", self.bound_text),
            ("webhooks undelivered", f"{self.undelivered_count}"),
            ("wall time", f"{wall_s:.0f} s"),
            ("violations", f"{len(self.violations)}"),
        ]
        print("\n== chaos report ==")
        for label, value in lines:
            print(f"{label + ':':22}{value}")
        for v in self.violations[:40]:
            print(f"  - {v}")
        return 1 if self.violations else 0


async def _until_signalled(run: Awaitable[int]) -> int:
    """SIGTERM/SIGINT cancel the run, so its `finally` still ends the server it started."""
    task = asyncio.ensure_future(run)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        print("chaos: interrupted", flush=True)
        return 130


def _median(values: list[int]) -> float:
    return statistics.median(values) if values else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--verbose", action="store_true", help="a line after every kill")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    workdir = Path(tempfile.mkdtemp(prefix="bulkjobs-chaos-"))
    print(f"chaos: {args.kills} kills, seed {args.seed}, files in {workdir}", flush=True)
    code = 1
    try:
        code = asyncio.run(_until_signalled(Chaos(args, workdir).run()))
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"files kept in {workdir} (server.log, runs.log, jobs.sqlite3)")
    sys.exit(code)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
