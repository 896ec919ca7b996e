"""Supervision of background loops: restart on errors with bounded backoff.

A loop that raises is restarted after a backoff that doubles up to `max_backoff_s`.
Store and I/O errors (the store unreachable, the disk full, a lock timeout) are
transient: retried for as long as they last. Any other error is a bug: after
`max_failures` in a row without a healthy run in between, the loop is declared dead,
and stays so; `dead` names it, which turns `/readyz` and submits into 503.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


def _postgres_errors() -> tuple[type[BaseException], ...]:
    """asyncpg's errors, when the PostgreSQL driver is installed."""
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - asyncpg is a dependency today
        return ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError)


#: Errors a loop survives however often they come: the store or the network.
TRANSIENT: tuple[type[BaseException], ...] = (
    sqlite3.Error,
    OSError,
    TimeoutError,
    *_postgres_errors(),
)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    """Owns named background loops: starts, restarts, reports and stops them."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        healthy_s: float = 30.0,
    ) -> None:
        self.max_failures = max_failures
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_s = healthy_s
        self.dead: dict[str, str] = {}
        self.died = asyncio.Event()  # set once any loop is declared dead
        self.restarts: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, factory: LoopFactory) -> asyncio.Task[None]:
        """Run `factory()` under supervision as a task named `name`."""
        task = asyncio.create_task(self._guard(name, factory), name=name)
        self._tasks[name] = task
        return task

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    async def _guard(self, name: str, factory: LoopFactory) -> None:
        streak = bugs = 0  # failures in a row; of them, the ones that were not transient
        while True:
            started = time.monotonic()
            try:
                await factory()
                return  # a loop that returns has finished its work (the writer, closed)
            except Exception as exc:
                if time.monotonic() - started > self.healthy_s:
                    streak = bugs = 0
                streak += 1
                bugs += not isinstance(exc, TRANSIENT)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if bugs >= self.max_failures:
                    self._declare_dead(name, exc)
                    return
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** min(streak - 1, 16))
                logger.error("loop %s failed (%r); restarting in %.2fs", name, exc, delay)
            await asyncio.sleep(delay)

    def _declare_dead(self, name: str, exc: Exception) -> None:
        self.dead[name] = f"{type(exc).__name__}: {exc}"
        self.died.set()
        logger.critical("loop %s is dead after repeated failures", name, exc_info=exc)

    async def stop(self, *names: str) -> None:
        """Cancel the named loops (all when none is named) and wait for them."""
        tasks = [self._tasks.pop(n) for n in (names or list(self._tasks)) if n in self._tasks]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                logger.error("loop %s ended with %r", task.get_name(), result)

    def task(self, name: str) -> asyncio.Task[None] | None:
        return self._tasks.get(name)
