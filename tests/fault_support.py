"""Test-side helpers of the fault suite: a server process whose log goes to a file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.serverproc import ServerProcess

#: Text that must never appear in a response body or the server's log.
FORBIDDEN = ("Traceback", "database is locked")


class LoggedServer(ServerProcess):
    """A `ServerProcess` writing stderr to a file: a busy or killed server can never
    block on a full pipe, and the log of every start survives for inspection."""

    def __init__(self, db_path: str, log_path: Path, *args: str, env: dict[str, str]) -> None:
        super().__init__(db_path, *args, env=env)
        self.log_path = log_path
        self.starts = 0

    async def start(self, timeout_s: float = 20, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(self.port)]
        cmd += ["--db", self.db_path, *self.args]
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                env={**self.env, **(env or {})},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        await self._wait_ready(timeout_s)

    async def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to end by itself (a failpoint); its return code."""
        assert self.proc is not None
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()

    def log_problems(self) -> list[str]:
        """Log lines showing a traceback, a locked database or an ERROR record."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [
            line
            for line in text.splitlines()
            if any(word in line for word in FORBIDDEN) or " ERROR " in line
        ]
