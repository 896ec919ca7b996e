"""The SQLite reader connection, one complete statement per trip to its thread.

Many coroutines share one reader connection. With a plain aiosqlite cursor a
statement is stepped in one trip and fetched and closed in later ones; while it is
open the connection keeps its read transaction, so every other coroutine's query in
between reads that old snapshot and misses what the writer committed since (a job
just stored answered 404, a job just admitted looked empty to the scheduler). Here
each query runs to its end in one trip (`execute_fetchall`), so no read transaction
outlives its statement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite


class Rows:
    """The rows of one finished query, with the cursor methods the stores use."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return self._rows


class Reader:
    """Wraps the reader connection; `execute` is used as `async with r.execute(...) as cur`."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    @asynccontextmanager
    async def execute(
        self, sql: str, parameters: Iterable[Any] | Mapping[str, Any] = ()
    ) -> AsyncIterator[Rows]:
        rows = await self.conn.execute_fetchall(sql, parameters)
        yield Rows(list(rows))

    async def close(self) -> None:
        await self.conn.close()
