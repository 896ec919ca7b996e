"""What a new user meets around the server (issue 14): a busy port and a typo'd path."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.serverproc import ROOT


async def test_a_typod_path_names_the_nearest_route(client: Any) -> None:
    resp = await client.get("/bulk-job")
    problem = await resp.json()
    assert resp.status == 404 and problem["code"] == "not_found"
    assert "Did you mean /bulk-jobs?" in problem["detail"]
    far = await (await client.get("/nothing-like-it")).json()
    assert "Did you mean" not in far["detail"]


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(port)]
        cmd += ["--db", str(tmp_path / "busy.sqlite3"), "--log-level", "ERROR"]
        done = subprocess.run(
            cmd, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], err
