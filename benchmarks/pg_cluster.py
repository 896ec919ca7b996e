"""A throwaway PostgreSQL cluster for benchmarks (the approach of tests/pg_support.py,
without pytest): `initdb` + `pg_ctl` in a temporary directory on a free port of
127.0.0.1, as the `postgres` user when run as root (PostgreSQL refuses root).

Unlike the tests' cluster it keeps `fsync` on (commits are acknowledged before their WAL
is flushed: `synchronous_commit=off`, the counterpart of SQLite's `synchronous=NORMAL`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs
from common import free_port

USER = "postgres"
OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c synchronous_commit=off -c max_connections=200"
    " -c shared_buffers=256MB"
)


@attrs.frozen
class Cluster:
    port: int
    root: Path
    bin_dir: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, writers)."""
        parent = self.postmaster_pid()
        found = [parent]
        for status in glob.glob("/proc/[0-9]*/status"):
            try:
                text = Path(status).read_text()
            except OSError:
                continue  # exited meanwhile
            for line in text.splitlines():
                if line.startswith("PPid:"):
                    if int(line.split()[1]) == parent:
                        found.append(int(status.split("/")[2]))
                    break
        return found

    def cpu_seconds(self) -> float:
        """CPU time of the cluster so far: live processes, plus what the postmaster
        reaped of its exited children."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        parent = self.postmaster_pid()
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == parent:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime
        return total / tick

    def stop(self) -> None:
        try:
            _run(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _run(*cmd: str | Path, timeout_s: float = 120) -> None:
    argv = [str(c) for c in cmd]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", USER, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")


def start_cluster(options: str = OPTIONS) -> Cluster:
    """initdb + pg_ctl start; `Cluster.stop()` stops it and removes its files."""
    found = bin_dir()
    if found is None:
        raise SystemExit("PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="bulkjobs-bench-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(free_port(), root, found)
    _run(found / "initdb", "-D", cluster.data_dir, "-U", USER, "-A", "trust", "-E", "UTF8")
    opts = f"-p {cluster.port} -k {root} {options}"
    log = root / "server.log"
    _run(found / "pg_ctl", "-D", cluster.data_dir, "-o", opts, "-l", log, "-w", "start")
    return cluster
