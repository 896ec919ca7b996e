"""A throwaway PostgreSQL cluster for the tests: one per session, one database per test.

`initdb` and `pg_ctl` run in a temporary directory on a free port of 127.0.0.1, as the
`postgres` user when the tests run as root (PostgreSQL refuses to run as root). With no
PostgreSQL binaries the tests that need it are skipped with a loud reason, except under
CI (`CI=true`), where a missing PostgreSQL fails the run instead.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest

from tests.serverproc import free_port

_USER = "postgres"


@attrs.frozen
class Cluster:
    """A running cluster: where it listens and how to reach its maintenance database."""

    port: int
    data_dir: Path
    bin_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str, timeout_s: float = 60) -> None:
        """Run `pg_ctl` on this cluster (e.g. `restart` in outage tests)."""
        _run(self.bin_dir / "pg_ctl", "-D", str(self.data_dir), *args, timeout_s=timeout_s)


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _run(*cmd: str | Path, timeout_s: float = 60) -> None:
    argv = [str(c) for c in cmd]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", _USER, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI: {reason}", pytrace=False)
    pytest.skip(f"!!! PostgreSQL tests SKIPPED: {reason} (apt-get install postgresql) !!!")


def start_cluster() -> tuple[Cluster, Path]:
    """initdb + pg_ctl start in a fresh temporary directory owned by the server's user."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        _missing("no initdb/pg_ctl found")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="bulkjobs-pg-"))
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(_USER)
        except KeyError:
            _missing(f"running as root and there is no {_USER!r} user to run the server")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data = root / "data"
    port = free_port()
    _run(bin_dir / "initdb", "-D", data, "-U", _USER, "-A", "trust", "--no-sync", "-E", "UTF8")
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    cluster = Cluster(port, data, bin_dir)
    cluster.pg_ctl("-o", options, "-l", str(root / "server.log"), "-w", "start")
    return cluster, root


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL cluster for the whole session, stopped (and removed) at its end."""
    started = time.monotonic()
    cluster, root = start_cluster()
    print(f"\nPostgreSQL cluster on 127.0.0.1:{cluster.port} in {time.monotonic() - started:.1f}s")
    try:
        yield cluster
    finally:
        try:
            cluster.pg_ctl("-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


async def create_database(cluster: Cluster) -> str:
    """A fresh, empty database on the cluster; its URL."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(cluster.url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return cluster.url(name)


async def drop_database(cluster: Cluster, url: str) -> None:
    """Drop a database made by `create_database`, disconnecting whoever is still in it."""
    import asyncpg

    admin = await asyncpg.connect(cluster.url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pg_url(pg_cluster: Cluster) -> AsyncIterator[str]:
    """A fresh, empty database for one test (dropped afterwards)."""
    url = await create_database(pg_cluster)
    yield url
    await drop_database(pg_cluster, url)
