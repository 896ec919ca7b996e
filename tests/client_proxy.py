"""A TCP proxy in front of a live app that breaks chosen connections, for the client's
retry and resume tests (the real failure: bytes stop, the socket closes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Decides, per connection number and chunk from the server, whether to cut now:
#: "pass" forwards it, "drop" closes without forwarding it, "cut" forwards it, then closes.
Rule = Callable[[int, bytes], str]


def passthrough(conn: int, chunk: bytes) -> str:
    return "pass"


class BreakingProxy:
    """Forwards 127.0.0.1:`port` to the upstream port; `rule` may break the responses."""

    def __init__(self, upstream_port: int, rule: Rule = passthrough) -> None:
        self.upstream_port = upstream_port
        self.rule = rule
        self.port = 0
        self.connections = 0
        self.requests: list[bytes] = []  # the first chunk of each connection's request
        self.broken = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(self.connections, reader, writer))
        self.connections += 1
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        pipes = [
            asyncio.create_task(self._requests(conn, reader, up_writer)),
            asyncio.create_task(self._responses(conn, up_reader, writer)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            writer.close()
            up_writer.close()

    async def _requests(
        self, conn: int, src: asyncio.StreamReader, dst: asyncio.StreamWriter
    ) -> None:
        first = True
        while data := await src.read(65536):
            if first:
                self.requests.append(data)
                first = False
            dst.write(data)
            await dst.drain()

    async def _responses(
        self, conn: int, src: asyncio.StreamReader, dst: asyncio.StreamWriter
    ) -> None:
        while data := await src.read(65536):
            action = self.rule(conn, data)
            if action != "drop":
                dst.write(data)
                await dst.drain()
            if action != "pass":
                self.broken.set()
                return
