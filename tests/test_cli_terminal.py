"""The CLI as a user sees it in an 80x24 terminal (a real pty, rendered by pyte): one
progress bar line that fits, a cancelled job that does not look done, Ctrl-C that
leaves the job running, and colour only where it belongs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.pty_support import TerminalRun
from tests.serverproc import ServerProcess
from tests.test_cli_client import bulkjobs

pytestmark = pytest.mark.slow

BAR_CHARS = ("█", "▓", "░", "·")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(str(tmp_path / "jobs.sqlite3"))  # the demo operations
    await proc.start()
    yield proc
    await proc.stop()


@pytest.fixture
async def terminals() -> AsyncIterator[list[TerminalRun]]:
    runs: list[TerminalRun] = []
    yield runs
    for run in runs:
        await run.close()


async def in_terminal(
    runs: list[TerminalRun], server: ServerProcess, *args: str, columns: int = 80
) -> TerminalRun:
    run = TerminalRun(server.url, *args, columns=columns, env={"BULKJOBS_PROGRESS_INTERVAL_S": "0"})
    runs.append(run)
    await run.start()
    return run


def sleep_items(n: int, ms: int, fail_every: int = 0) -> list[dict[str, Any]]:
    return [{"ms": ms, "fail": bool(fail_every) and i % fail_every == 0} for i in range(n)]


def write_items(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def bar_lines(run: TerminalRun) -> list[str]:
    return [line for line in run.lines if any(c in line for c in BAR_CHARS)]


async def submit(server: ServerProcess, items: list[dict[str, Any]]) -> str:
    status, job = await server.request(
        "POST", "/bulk-jobs", json={"operation": "sleep", "items": items}
    )
    assert status == 202, job
    return str(job["id"])


async def test_the_bar_fits_80_columns_on_one_line(
    server: ServerProcess, terminals: list[TerminalRun], tmp_path: Path
) -> None:
    items = write_items(tmp_path / "items.ndjson", sleep_items(2000, 3, fail_every=7))
    run = await in_terminal(terminals, server, "submit", "sleep", str(items), "--wait")
    running = await run.until(lambda text: "items/s" in text and "ETA" in text)
    assert len(bar_lines(run)) == 1, running  # redraws overwrite the line, never add one
    assert "failed" in running and "done (" in running

    code, out = await run.finish()
    assert code == 2  # some items failed
    assert run.lines[0].startswith("submitted job_")  # the id comes before the bar
    assert len(run.lines) == 2, run.text  # the id line and one bar line: nothing wrapped
    (bar,) = bar_lines(run)
    assert "2,000 of 2,000 done (100%)" in bar and "286 failed" in bar
    assert bar.startswith("█") and "▓" in bar  # segments: succeeded, then failed
    assert "2,000 of 2,000 done" in out and "286 failed" in out


async def test_a_narrow_terminal_keeps_one_line(
    server: ServerProcess, terminals: list[TerminalRun], tmp_path: Path
) -> None:
    items = write_items(tmp_path / "items.ndjson", sleep_items(1000, 2, fail_every=3))
    run = await in_terminal(terminals, server, "submit", "sleep", str(items), "--wait", columns=40)
    await run.until(lambda text: "done (" in text)
    code, _ = await run.finish()
    assert code == 2
    (bar,) = bar_lines(run)
    assert run.lines[-1] == bar, run.text  # nothing wrapped below it
    assert "1,000 of 1,000 done (100%)" in bar and len(bar) <= 40


async def test_a_cancelled_job_says_how_much_ran(
    server: ServerProcess, terminals: list[TerminalRun]
) -> None:
    job_id = await submit(server, sleep_items(4000, 3))
    run = await in_terminal(terminals, server, "watch", job_id)
    await run.until(lambda text: "items/s" in text)
    status, _ = await server.request("POST", f"/bulk-jobs/{job_id}/cancel")
    assert status in (200, 202)
    code, out = await run.finish()
    assert code == 1
    (bar,) = bar_lines(run)
    assert " ran, " in bar and "cancelled" in bar and "100%" not in bar
    assert "░" in bar  # the cancelled segment
    _, job = await server.request("GET", f"/bulk-jobs/{job_id}")
    ran = job["succeeded"] + job["failed"]
    assert f"{ran:,} of 4,000 ran, {job['cancelled']:,} cancelled" in bar
    assert f"{ran:,} of 4,000 ran" in out

    listed = await bulkjobs(server, "list")
    (row,) = [line for line in listed.out.splitlines() if job_id in line]
    assert "cancelled" in row and "% ran" in row and "100%" not in row


async def test_ctrl_c_leaves_the_job_running_and_says_how_to_follow(
    server: ServerProcess, terminals: list[TerminalRun], tmp_path: Path
) -> None:
    items = write_items(tmp_path / "items.ndjson", sleep_items(3000, 5))
    run = await in_terminal(terminals, server, "submit", "sleep", str(items), "--wait")
    await run.until(lambda text: "items/s" in text)
    run.interrupt()
    code, _ = await run.finish()
    assert code == 130
    job_id = run.lines[0].split()[1]
    assert f"bulkjobs watch {job_id}" in run.text
    _, job = await server.request("GET", f"/bulk-jobs/{job_id}")
    assert job["status"] == "running"
    await server.request("POST", f"/bulk-jobs/{job_id}/cancel")


async def test_list_is_coloured_only_on_a_terminal(
    server: ServerProcess, terminals: list[TerminalRun]
) -> None:
    job_id = await submit(server, sleep_items(3, 0))
    coloured = TerminalRun(server.url, "list", tty_stdout=True)
    terminals.append(coloured)
    await coloured.start()
    await coloured.finish()
    assert b"\x1b[3" in coloured.raw  # a colour
    assert coloured.lines[0].split()[:3] == ["ID", "OPERATION", "STATUS"]
    piped = await bulkjobs(server, "list")
    assert "\x1b" not in piped.out
    assert all(line == line.rstrip() for line in piped.out.splitlines())
    header = piped.out.splitlines()[0].split()
    assert header == ["ID", "OPERATION", "STATUS", "PROGRESS", "FAILED", "CREATED"]
    assert job_id in piped.out


async def test_no_color_turns_colour_off_on_a_terminal(
    server: ServerProcess, terminals: list[TerminalRun]
) -> None:
    await submit(server, sleep_items(3, 0))
    run = TerminalRun(server.url, "list", env={"NO_COLOR": "1"}, tty_stdout=True)
    terminals.append(run)
    await run.start()
    await run.finish()
    assert b"\x1b[3" not in run.raw and "OPERATION" in run.text
