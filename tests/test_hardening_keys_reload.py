"""Issue 13 item 15: `kill -HUP` reloads the API keys file of a running `bulkjobs serve`,
atomically: a bad file keeps the old keys and the log says why."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bulkjobs.security import hash_key
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(60)

ACME, GLOBEX = "bjk_acme-reload-key-0001", "bjk_globex-reload-key-0002"


def line(tenant: str, key: str) -> str:
    return f"{tenant}:sha256:{hash_key(key)}\n"


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, Path]]:
    keys = tmp_path / "keys"
    keys.write_text("# tenants\n" + line("acme", ACME))
    server = ServerProcess(str(tmp_path / "jobs.sqlite3"), "--api-keys-file", str(keys))
    await server.start()
    try:
        yield server, keys
    finally:
        await server.stop()


async def status_with(server: ServerProcess, key: str) -> int:
    status, _ = await server.request(
        "GET", "/bulk-jobs", headers={"Authorization": f"Bearer {key}"}
    )
    return status


async def hup_and_read(server: ServerProcess, marker: str) -> str:
    """Send SIGHUP and return the log line that contains `marker`."""
    assert server.proc is not None and server.proc.stderr is not None
    server.proc.send_signal(signal.SIGHUP)
    async with asyncio.timeout(10):
        while True:
            raw = await server.proc.stderr.readline()
            assert raw, "the server closed its log"
            if marker in raw.decode(errors="replace"):
                return raw.decode(errors="replace")


async def test_sighup_adds_and_revokes_keys(keyed: tuple[ServerProcess, Path]) -> None:
    server, keys = keyed
    assert (await status_with(server, ACME), await status_with(server, GLOBEX)) == (200, 401)
    keys.write_text(line("acme", ACME) + line("globex", GLOBEX))
    await hup_and_read(server, "API keys reloaded: 2 keys")
    assert (await status_with(server, ACME), await status_with(server, GLOBEX)) == (200, 200)
    keys.write_text(line("globex", GLOBEX))  # revoke acme
    await hup_and_read(server, "API keys reloaded: 1 keys")
    assert (await status_with(server, ACME), await status_with(server, GLOBEX)) == (401, 200)
    assert server.proc is not None and server.proc.returncode is None


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (line("globex", GLOBEX) + "garbage, not a key line\n", "line 2 is not"),
        ("# only comments now\n", "none was found"),
        (b"\xff\xfe\x00 binary", "can't decode"),
        (None, "No such file"),
    ],
)
async def test_a_bad_file_keeps_the_old_keys(
    keyed: tuple[ServerProcess, Path], content: str | bytes | None, why: str
) -> None:
    server, keys = keyed
    if content is None:
        keys.unlink()
    elif isinstance(content, bytes):
        keys.write_bytes(content)
    else:
        keys.write_text(content)
    logged = await hup_and_read(server, "API keys not reloaded")
    assert why in logged and "the old keys stay in use" in logged
    assert (await status_with(server, ACME), await status_with(server, GLOBEX)) == (200, 401)
