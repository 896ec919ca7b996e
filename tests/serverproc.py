"""A real `bulkjobs serve` in a subprocess, for crash and shutdown tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """Start, kill and restart one server on a fixed port and database file."""

    def __init__(self, db_path: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.db_path = db_path
        self.port = free_port()
        self.args = args
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 20) -> None:
        cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(self.port)]
        cmd += ["--db", self.db_path, *self.args]
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        await self._wait_ready(timeout_s)

    async def _wait_ready(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as http:
            while True:
                assert self.proc is not None and self.proc.returncode is None, await self.stderr()
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)  # polling a process we do not control

    async def stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        return (await self.proc.stderr.read()).decode(errors="replace")

    async def kill(self) -> int:
        """kill -9: no cleanup of any kind runs."""
        assert self.proc is not None
        self.proc.kill()
        return await self.proc.wait()

    async def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM, then wait for the graceful exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.url + path, **kw) as resp,
        ):
            body = await resp.json(content_type=None) if resp.status != 204 else None
            return resp.status, body

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
