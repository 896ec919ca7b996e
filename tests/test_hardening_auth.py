"""Issue 13 item 3: auth never fails open. A configured but empty key source refuses
to start; a non-loopback bind without keys needs an explicit `--insecure-open`.
Each case runs a real `bulkjobs serve` and reads its exit code and stderr."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from bulkjobs.cli import is_loopback
from bulkjobs.security import hash_key
from tests.serverproc import ROOT, free_port

pytestmark = pytest.mark.timeout(60)

#: TEST-NET-1 (RFC 5737): not on any interface, so the bind fails and nothing listens.
UNBINDABLE = "192.0.2.1"


async def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `bulkjobs serve` to its exit; (exit code, stderr)."""
    cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(free_port())]
    cmd += ["--db", str(tmp_path / "jobs.sqlite3"), *args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BULKJOBS_")}
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        env={**full_env, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


def _refused_empty(code: int, err: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one clear line, no traceback
    assert "none was found" in lines[0] and "refusing to run open" in lines[0], err


async def test_keys_file_with_only_comments_refuses_to_start(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# acme's key goes here\n\n   # and globex's\n")
    _refused_empty(*await serve(tmp_path, "--api-keys-file", str(keys)))


async def test_blank_keys_environment_refuses_to_start(tmp_path: Path) -> None:
    _refused_empty(*await serve(tmp_path, env={"BULKJOBS_API_KEYS": " "}))


async def test_non_loopback_without_keys_needs_insecure_open(tmp_path: Path) -> None:
    code, err = await serve(tmp_path, "--host", UNBINDABLE)
    assert code == 2, err
    assert err.strip().splitlines() == [
        f"bulkjobs: refusing to serve {UNBINDABLE} without API keys; configure"
        " --api-keys-file (or BULKJOBS_API_KEYS), or pass --insecure-open"
    ]
    # With the explicit flag it goes on (and warns); the bind itself then fails.
    _, err = await serve(tmp_path, "--host", UNBINDABLE, "--insecure-open")
    assert "refusing" not in err
    assert f"no API keys configured and bound to {UNBINDABLE}: anyone can reach it" in err


async def test_non_loopback_with_keys_needs_no_flag(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# ops\nacme:sha256:{hash_key('bjk_x')}\n")
    _, err = await serve(tmp_path, "--host", UNBINDABLE, "--api-keys-file", str(keys))
    assert "refusing" not in err and "anyone can reach it" not in err, err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
