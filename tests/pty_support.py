"""The CLI in a real pseudo-terminal of a fixed size, its output rendered by a terminal
emulator (pyte), so tests see the screen a user would see."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import signal
import struct
import sys
import termios
from collections.abc import Callable

import pyte

from tests.serverproc import ROOT


class TerminalRun:
    """`python -m bulkjobs ARGS` with stdin and stderr on a COLUMNS x LINES terminal;
    stdout is a pipe (what a script would capture) unless `tty_stdout`."""

    def __init__(
        self,
        url: str,
        *args: str,
        columns: int = 80,
        lines: int = 24,
        env: dict[str, str] | None = None,
        tty_stdout: bool = False,
    ) -> None:
        self.args = args
        self.tty_stdout = tty_stdout
        self.extra_env = env or {}
        self.url = url
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.proc: asyncio.subprocess.Process | None = None
        self._master, self._slave = pty.openpty()
        fcntl.ioctl(self._slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self._changed = asyncio.Event()  # set and replaced on every chunk read
        self._eof = False

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env |= {"PYTHONPATH": str(ROOT), "BULKJOBS_URL": self.url, "TERM": "xterm-256color"}
        env |= self.extra_env
        self.proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bulkjobs", *self.args),
            env=env,
            stdin=self._slave,
            stdout=self._slave if self.tty_stdout else asyncio.subprocess.PIPE,
            stderr=self._slave,
        )
        os.close(self._slave)
        asyncio.get_running_loop().add_reader(self._master, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            chunk = b""
        if not chunk:
            self._eof = True
            asyncio.get_running_loop().remove_reader(self._master)
        self.raw += chunk
        self.stream.feed(chunk)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    async def until(self, predicate: Callable[[str], bool], timeout_s: float = 20) -> str:
        """Wait until the screen's text satisfies `predicate`; the screen's text."""
        async with asyncio.timeout(timeout_s):
            await self._wait_for(lambda: predicate(self.text) or self._eof)
        assert predicate(self.text), f"screen never matched:\n{self.text}"
        return self.text

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display).rstrip("\n")

    @property
    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]

    def interrupt(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)

    async def finish(self, timeout_s: float = 30) -> tuple[int, str]:
        """Wait for the exit and for the terminal to drain; (exit code, stdout)."""
        assert self.proc is not None
        async with asyncio.timeout(timeout_s):
            out = await self.proc.stdout.read() if self.proc.stdout is not None else b""
            code = await self.proc.wait()
            await self._wait_for(lambda: self._eof)
        return code, out.decode()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if not self._eof:
            asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
