"""`bulkjobs serve` subprocesses on PostgreSQL whose logs go to files (an outage or a
busy test logs a lot, and a full stderr pipe would block the server)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.serverproc import ServerProcess

#: DiskGuard reads free space next to a SQLite file; a database URL has none.
PG_ARGS = ("--min-free-disk-bytes", "0", "--workers", "4")


class LoggedServer(ServerProcess):
    """A `ServerProcess` logging to `log`; `stderr()` reads the file."""

    def __init__(self, db: str, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(db, *args, env=env)
        self.log = log

    async def start(self, timeout_s: float = 20) -> None:
        cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(self.port)]
        cmd += ["--db", self.db_path, *self.args]
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=log
            )
        await self._wait_ready(timeout_s)

    async def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_clean_log(self) -> None:
        """No request answered 500 and no loop died."""
        log = self.log.read_text(errors="replace")
        assert "unhandled error" not in log, log[-4000:]
        assert "is dead" not in log, log[-4000:]
