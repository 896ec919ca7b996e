"""`bulkjobs backup`: an online copy of the SQLite file while a real server works a job;
the copy passes integrity_check, holds the job and every item, and a server restarted on
it finishes the job."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bulkjobs.store.backup import BackupError, run_backup
from tests.consistency import assert_consistent
from tests.serverproc import ROOT, ServerProcess

pytestmark = pytest.mark.timeout(120)

ITEMS = [{"ms": 4, "id": f"it-{i}"} for i in range(3000)]


def backup_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulkjobs", "backup", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def read_copy(path: Path, job_id: str) -> tuple[str, str, int, int]:
    """(integrity_check, job status, items of the job, succeeded items) of a copy."""
    with closing(sqlite3.connect(path)) as db:
        (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
        status, items, succeeded = db.execute(
            "SELECT j.status, count(i.idx), coalesce(sum(i.status = 'succeeded'), 0)"
            " FROM jobs j JOIN items i ON i.job_pk = j.pk WHERE j.id = ?",
            (job_id,),
        ).fetchone()
    return integrity, status, items, succeeded


async def job_status(server: ServerProcess, job_id: str) -> dict[str, Any]:
    status, job = await server.request("GET", f"/bulk-jobs/{job_id}")
    assert status == 200, job
    return job  # type: ignore[no-any-return]


async def wait_processed(server: ServerProcess, job_id: str, at_least: int) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            job = await job_status(server, job_id)
            if job["processed"] >= at_least or job["status"] in (
                "completed",
                "failed",
                "cancelled",
            ):
                return job
            await asyncio.sleep(0.02)  # polling another process


async def test_backup_while_a_server_works_then_serve_the_copy(tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "live.sqlite3"), "--workers", "2")
    copy_server = ServerProcess(str(tmp_path / "copy.sqlite3"), "--workers", "2")
    try:
        await server.start()
        status, job = await server.request(
            "POST", "/bulk-jobs", json={"operation": "sleep", "items": ITEMS}
        )
        assert status == 202, job
        await wait_processed(server, job["id"], 100)

        done = await asyncio.to_thread(
            backup_cli, str(tmp_path / "copy.sqlite3"), "--db", server.db_path
        )
        assert done.returncode == 0, done.stderr
        assert "integrity_check ok" in done.stdout and "3000 items" in done.stdout
        # small steps while the server commits: SQLite restarts the copy, which still ends
        step = await asyncio.to_thread(
            run_backup, server.db_path, str(tmp_path / "steps.sqlite3"),
            pages_per_step=2, pause_s=0.002, max_restarts=0,
        )  # fmt: skip
        assert (step.integrity, step.jobs, step.items) == ("ok", 1, 3000)
        assert (await job_status(server, job["id"]))["status"] == "running"  # truly online
        assert await server.terminate() == 0

        for copy in ("copy.sqlite3", "steps.sqlite3"):
            integrity, status, items, succeeded = read_copy(tmp_path / copy, job["id"])
            assert (integrity, status, items) == ("ok", "running", 3000)
            assert 100 <= succeeded < 3000
            await asyncio.to_thread(assert_consistent, str(tmp_path / copy))

        await copy_server.start()  # the copy is a database a server resumes from
        final = await wait_processed(copy_server, job["id"], 3000)
        assert (final["status"], final["succeeded"]) == ("completed", 3000)
    finally:
        await server.stop()
        await copy_server.stop()


def test_backup_into_a_folder_of_a_stopped_database(tmp_path: Path) -> None:
    source = tmp_path / "jobs.sqlite3"
    with closing(sqlite3.connect(source)) as db:
        db.executescript(
            "PRAGMA journal_mode=WAL; CREATE TABLE jobs (pk INTEGER PRIMARY KEY);"
            " CREATE TABLE items (x); INSERT INTO jobs VALUES (1); INSERT INTO items VALUES (1);"
        )
    (tmp_path / "backups").mkdir()
    done = backup_cli(str(tmp_path / "backups"), "--db", str(source))
    assert done.returncode == 0, done.stderr
    (written,) = (tmp_path / "backups").iterdir()  # no partial file left beside it
    assert written.name.startswith("jobs-") and written.suffix == ".sqlite3"
    assert f"written to {written}" in done.stdout and "1 jobs, 1 items" in done.stdout


def test_backup_refuses_postgres_and_missing_files(tmp_path: Path) -> None:
    done = backup_cli(str(tmp_path / "x"), "--db", "postgresql://bulkjobs@db/bulkjobs")
    assert done.returncode == 2 and "pg_dump" in done.stderr
    done = backup_cli(str(tmp_path / "x"), "--db", str(tmp_path / "nothing.sqlite3"))
    assert done.returncode == 2 and "no SQLite database" in done.stderr
    assert not (tmp_path / "nothing.sqlite3").exists()  # not created by looking
    same = tmp_path / "same.sqlite3"
    sqlite3.connect(same).close()
    with pytest.raises(BackupError, match="itself"):
        run_backup(str(same), str(same))
