"""The one-file executable (scripts/build_dist.py, `make dist`): built once per session with
the recipe for a user's `--app` module, copied to an empty folder and run there under
`env -i` (no venv, no PYTHONPATH): serve the README's seed job, drain on SIGTERM, serve
the bundled custom operation, and run the other subcommands."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulkjobs.version import build_commit
from tests.serverproc import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
SEED_JOB = {  # the README's quick start
    "operation": "update_orders_status",
    "items": [{"id": "ord_123", "status": "cancelled"}, {"id": "ord_124", "status": "shipped"}],
}


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/bulkjobs as `make dist APP=examples.custom_operation` builds it (once)."""
    if importlib.util.find_spec("PyInstaller") is None:
        reason = "PyInstaller is not installed (pip install -e '.[dist]')"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, str(ROOT / "scripts" / "build_dist.py")]
    cmd += ["--app", "examples.custom_operation", "--distpath", str(out)]
    cmd += ["--workpath", str(out / "build")]
    subprocess.run(cmd, check=True, timeout=540, cwd=ROOT)
    return out / "bulkjobs"


@pytest.fixture
def host(tmp_path: Path, binary: Path) -> Path:
    """An empty folder holding only the copied file: nothing of the checkout around."""
    folder = tmp_path / "host"
    folder.mkdir()
    shutil.copy2(binary, folder / "bulkjobs")
    (tmp_path / "tmp").mkdir()
    return folder


def clean_env(host: Path, **extra: str) -> dict[str, str]:
    """What `env -i HOME=… PATH=/usr/bin:/bin` leaves; TMPDIR is ours, to see it cleaned."""
    return {"HOME": str(host), "PATH": "/usr/bin:/bin", "TMPDIR": str(host.parent / "tmp"), **extra}


def run(host: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["./bulkjobs", *args], cwd=host, env=clean_env(host, **env),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


class BinaryServer:
    """`./bulkjobs serve` in `host`: a launcher process with the server as its child."""

    def __init__(self, host: Path, *args: str, **env: str) -> None:
        self.host = host
        self.args = args
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = host.parent / "serve.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *, port_flag: bool = True) -> None:
        """Start and wait for /healthz; the port by flag or by BULKJOBS_PORT."""
        args = ["serve", *(["--port", str(self.port)] if port_flag else []), *self.args]
        env = clean_env(self.host, **self.env)
        if not port_flag:
            env["BULKJOBS_PORT"] = str(self.port)
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                "./bulkjobs", *args, cwd=self.host, env=env, stdout=log, stderr=log
            )
        async with asyncio.timeout(60), aiohttp.ClientSession() as http:
            while True:
                assert self.proc.returncode is None, self.log.read_text()
                try:
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)  # polling a process we do not control

    def server_pid(self) -> int:
        """The child the launcher started: the Python process that serves."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        (pid,) = children.split()
        return int(pid)

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.url + path, **kw) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def wait_terminal(self, job_id: str) -> dict[str, Any]:
        async with asyncio.timeout(30):
            while True:
                status, job = await self.request("GET", f"/bulk-jobs/{job_id}?wait=5")
                assert status == 200, job
                if job["status"] in ("completed", "failed", "cancelled"):
                    return job  # type: ignore[no-any-return]

    async def terminate(self, timeout_s: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # the launcher; its child goes with it (PDEATHSIG)
            await self.proc.wait()


@pytest.fixture
async def server(host: Path) -> AsyncIterator[BinaryServer]:
    proc = BinaryServer(host)
    yield proc
    await proc.stop()


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_version_names_the_commit(host: Path) -> None:
    done = run(host, "--version")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"bulkjobs \d+\.\d+\.\d+\S* \(commit [0-9a-f]{7,}(-dirty)?\)\n", done.stdout
    )
    assert f"(commit {build_commit()}" in done.stdout  # baked in: no git, no checkout here


async def test_seed_job_from_an_empty_folder_then_sigterm_drains(
    host: Path, server: BinaryServer
) -> None:
    await server.start(port_flag=False)  # BULKJOBS_PORT: the environment works as in the venv
    child = server.server_pid()
    rss_mb = vm_rss_mb(child)
    assert rss_mb < 150, f"server RSS {rss_mb:.0f} MB"
    status, page = await server.request("GET", "/openapi.json")
    assert status == 200 and page["info"]["title"]
    async with aiohttp.ClientSession() as http, http.get(server.url + "/") as resp:
        assert resp.status == 200 and "<html" in await resp.text()  # embedded static files

    status, job = await server.request("POST", "/bulk-jobs", json=SEED_JOB)
    assert status == 202, job
    final = await server.wait_terminal(job["id"])
    assert (final["status"], final["succeeded"], final["failed"]) == ("completed", 2, 0)
    shown = await asyncio.to_thread(
        run, host, "status", job["id"], "--json", BULKJOBS_URL=server.url
    )
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["status"] == "completed"

    assert await server.terminate() == 0  # the launcher passes SIGTERM on, the child drains
    await asyncio.to_thread(check_after_exit, server, child, job["id"])


def check_after_exit(server: BinaryServer, child: int, job_id: str) -> None:
    """Server and launcher are gone, cleanly; the database is in the folder; backup runs."""
    assert not Path(f"/proc/{child}").exists()
    log = server.log.read_text()
    assert "Traceback" not in log and f"job {job_id} completed" in log
    assert list((server.host.parent / "tmp").iterdir()) == []  # the unpacked files are gone
    assert (server.host / "bulkjobs.sqlite3").is_file()
    done = run(server.host, "backup", str(server.host.parent / "copy.sqlite3"))
    assert done.returncode == 0, done.stderr
    assert "1 jobs, 2 items, integrity_check ok" in done.stdout


async def test_bundled_custom_operation(host: Path) -> None:
    server = BinaryServer(host, "--app", "examples.custom_operation:registry", "--db", "app.db")
    try:
        await server.start()
        items = [{"record_id": 1, "tag": "vip"}, {"record_id": 100_000, "tag": "vip"}]
        status, job = await server.request(
            "POST", "/bulk-jobs", json={"operation": "tag_records", "items": items}
        )
        assert status == 202, job
        final = await server.wait_terminal(job["id"])
        assert (final["status"], final["succeeded"], final["failed"]) == ("completed", 1, 1)
        assert await server.terminate() == 0
    finally:
        await server.stop()
    assert not await asyncio.to_thread((host / "examples").exists)  # served from the file


async def test_serves_postgres_with_the_bundled_driver(host: Path, pg_url: str) -> None:
    server = BinaryServer(host, "--db", pg_url, "--min-free-disk-bytes", "0")
    try:
        await server.start()
        status, job = await server.request("POST", "/bulk-jobs", json=SEED_JOB)
        assert status == 202, job
        final = await server.wait_terminal(job["id"])
        assert (final["status"], final["succeeded"], final["failed"]) == ("completed", 2, 0)
        assert await server.terminate() == 0
    finally:
        await server.stop()
    assert not await asyncio.to_thread((host / "bulkjobs.sqlite3").exists)  # all in PostgreSQL


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """examples/bulkjobs.service and the backup timer pass `systemd-analyze verify`, and
    the service keeps its hardening."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        reason = "systemd-analyze is missing (apt-get install systemd): unit not verified"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    text = (ROOT / "examples" / "bulkjobs.service").read_text()
    for line in (
        "DynamicUser=yes", "StateDirectory=bulkjobs", "MemoryMax=256M", "Restart=on-failure",
        "KillSignal=SIGTERM", "NoNewPrivileges=yes", "ProtectSystem=strict",
        "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "EnvironmentFile=",
    ):  # fmt: skip
        assert line in text, line
    stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert stop_s > 10  # longer than the drain (--shutdown-grace-s, 10 s)
    exe = tmp_path / "bulkjobs"  # verify checks that ExecStart's file exists
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    units = ["bulkjobs.service", "bulkjobs-backup.service", "bulkjobs-backup.timer"]
    for name in units:
        unit = (ROOT / "examples" / name).read_text()
        (tmp_path / name).write_text(unit.replace("/usr/local/bin/bulkjobs ", f"{exe} "))
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in units)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    for name in units[:2]:
        done = subprocess.run(
            [analyze, "security", "--offline=yes", str(tmp_path / name)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        exposure = re.search(rf"Overall exposure level for {name}: ([\d.]+)", done.stdout)
        assert exposure is not None, done.stdout + done.stderr
        assert float(exposure.group(1)) <= 2.0, done.stdout  # systemd calls < 2 "OK"
