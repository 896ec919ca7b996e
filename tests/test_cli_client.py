"""`bulkjobs submit/status/list/cancel/results` through the real entry point, in a
subprocess, against a real server process: exit codes, input formats, `--failures`,
`--json`."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.serverproc import ROOT, ServerProcess

pytestmark = pytest.mark.slow


@attrs.frozen
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(str(tmp_path / "jobs.sqlite3"), "--app", "tests.support:make_registry")
    await proc.start()
    yield proc
    await proc.stop()


async def bulkjobs(
    server: ServerProcess,
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BULKJOBS_URL": server.url, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bulkjobs",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def write_ndjson(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


async def test_all_succeeded_exits_0_with_json_summary(
    server: ServerProcess, tmp_path: Path
) -> None:
    items = write_ndjson(tmp_path / "items.ndjson", [{"n": i} for i in range(20)])
    run = await bulkjobs(server, "submit", "echo", str(items), "--wait", "--json")
    assert run.code == 0, run.err
    job = run.json()
    assert (job["status"], job["succeeded"], job["total_items"]) == ("completed", 20, 20)
    # stderr is not a terminal: the job id, then no bar (plain lines come every 10 s)
    assert run.err == f"submitted {job['id']} (20 items)\n"


async def test_some_failed_exits_2_and_writes_the_failures(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "items.csv"
    source.write_text("id,n,fail\na,1,\nb,2,bad_value\nc,3,\nd,4,also_bad\n")
    failures = tmp_path / "failures.csv"
    run = await bulkjobs(
        server, "submit", "echo", str(source), "--wait", "--failures", str(failures)
    )
    assert run.code == 2, run.err
    assert "2 failed" in run.out and "2 failed items written" in run.out
    with failures.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["n"], r["_index"], r["_error_code"]) for r in rows] == [
        ("b", "2", "1", "bad_value"),
        ("d", "4", "3", "also_bad"),
    ]
    # Fix the rows and resubmit the same file: its _ columns are ignored.
    fixed = failures.read_text().replace("bad_value", "").replace("also_bad", "")
    failures.write_text(fixed.replace(",,", ",", 0))
    with failures.open(newline="") as f:
        rows = [{**r, "fail": ""} for r in csv.DictReader(f)]
    with failures.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    again = await bulkjobs(server, "submit", "echo", str(failures), "--wait", "--json")
    assert again.code == 0, again.err
    assert again.json()["succeeded"] == 2


async def test_json_array_on_stdin(server: ServerProcess) -> None:
    body = json.dumps([{"n": 1, "id": "x"}, {"n": 2}]).encode()
    run = await bulkjobs(server, "submit", "echo", "-", "--wait", "--json", stdin=body)
    assert run.code == 0, run.err
    assert run.json()["total_items"] == 2


async def test_job_failure_exits_1(server: ServerProcess, tmp_path: Path) -> None:
    items = write_ndjson(tmp_path / "bad.jsonl", [{"n": i, "fail": "no"} for i in range(30)])
    run = await bulkjobs(server, "submit", "threshold", str(items), "--wait", "--json")
    assert run.code == 1, run.err
    assert run.json()["status"] == "failed"


async def test_errors_exit_1_with_the_problem(server: ServerProcess, tmp_path: Path) -> None:
    items = write_ndjson(tmp_path / "items.ndjson", [{"n": "one"}])
    invalid = await bulkjobs(server, "submit", "echo", str(items))
    assert invalid.code == 1
    assert "validation_error" in invalid.err and "/items/0/n" in invalid.err
    unknown = await bulkjobs(server, "status", "job_nope", "--json")
    assert unknown.code == 1 and json.loads(unknown.err)["error"]["code"] == "job_not_found"
    broken = tmp_path / "broken.ndjson"
    broken.write_text('{"n": 1}\n{"n": \n')
    bad_file = await bulkjobs(server, "submit", "echo", str(broken))
    assert bad_file.code == 1 and "broken.ndjson:2" in bad_file.err
    nowhere = await bulkjobs(server, "list", "--url", "http://127.0.0.1:9")
    assert nowhere.code == 1
    assert nowhere.err == (
        "bulkjobs: no bulkjobs server at http://127.0.0.1:9 — is it running?"
        " set --url or BULKJOBS_URL\n"
    )
    typo = await bulkjobs(server, "submit", "ecko", str(items))
    assert typo.code == 1
    assert "registered: " in typo.err and "'echo'" in typo.err
    assert typo.err.rstrip().endswith("Did you mean 'echo'?")


async def test_status_list_cancel_and_results(server: ServerProcess, tmp_path: Path) -> None:
    items = write_ndjson(tmp_path / "items.ndjson", [{"n": 1}, {"n": 2, "fail": "x"}])
    submitted = await bulkjobs(server, "submit", "echo", str(items))
    assert submitted.code == 0
    job_id = submitted.out.strip()
    assert job_id.startswith("job_")
    await bulkjobs(server, "submit", "echo", str(items), "--wait")  # a second, finished job

    status = await bulkjobs(server, "status", job_id)
    assert status.code == 0 and job_id in status.out and "echo" in status.out
    listed = await bulkjobs(server, "list", "--json", "--limit", "5")
    assert len(listed.json()) == 2 and listed.json()[1]["id"] == job_id
    human = await bulkjobs(server, "list", "--operation", "echo")
    assert len(human.out.strip().splitlines()) == 3  # the header and two jobs

    out = tmp_path / "results.csv"
    results = await bulkjobs(server, "results", job_id, "--format", "csv", "-o", str(out))
    assert results.code == 0, results.err
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["succeeded", "failed"]
    ndjson = await bulkjobs(server, "results", job_id, "--status", "failed")
    assert [json.loads(line)["index"] for line in ndjson.out.splitlines()] == [1]

    cancel = await bulkjobs(server, "cancel", job_id)
    assert cancel.code == 1 and "job_terminal" in cancel.err


async def test_plain_progress_lines_when_stderr_is_not_a_terminal(
    server: ServerProcess, tmp_path: Path
) -> None:
    items = write_ndjson(tmp_path / "items.ndjson", [{"n": i} for i in range(300)])
    env = {"BULKJOBS_PROGRESS_INTERVAL_S": "0"}
    run = await bulkjobs(server, "submit", "echo", str(items), "--wait", env=env)
    assert run.code == 0, run.err
    first, *progress = run.err.splitlines()
    job_id = first.split()[1]
    assert first == f"submitted {job_id} (300 items)"
    assert progress and all(line.startswith(f"{job_id} ") for line in progress)
    assert "\x1b" not in run.err and "\r" not in run.err  # no terminal control codes
    assert "300 of 300 done (100%)" in run.out
