"""The results writer: the one task that settles chunk outcomes in the store.

Entries arrive in order on a bounded queue; the writer takes whatever has piled up
(up to `max_rows` outcome rows, lingering `linger_ms` for more) and settles it as one
`Store.complete` transaction, so counters always agree with items and a commit never
serves one item. It counts the chunks of each lease, so the store releases a lease
with the result of its last chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import attrs

from ..models import ItemOutcome, utcnow
from ..store import ChunkResult, Store
from ..store.base import Settled
from .dispatcher import LeaseRun
from .metrics import Metrics

logger = logging.getLogger(__name__)

_RETRY_DELAY_S = 0.5


@attrs.define
class ChunkDone:
    """Outcomes of one chunk of a lease (empty when the chunk was stopped)."""

    run: LeaseRun
    outcomes: list[ItemOutcome]


class ResultWriter:
    """Owns the write side of the store during processing; see module doc."""

    def __init__(
        self,
        store: Store,
        owner: str,
        on_commit: Callable[[Settled, list[LeaseRun]], None],
        *,
        max_rows: int = 2000,
        linger_ms: float = 2.0,
        queue_size: int = 64,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._owner = owner
        self._on_commit = on_commit
        self._max_rows = max_rows
        self._linger_s = linger_ms / 1000
        self._queue: asyncio.Queue[ChunkDone | None] = asyncio.Queue(queue_size)

    async def put(self, entry: ChunkDone) -> None:
        """Queue an entry; waits while the queue is full (backpressure on workers)."""
        await self._queue.put(entry)

    async def close(self) -> None:
        """Ask the loop to flush what is queued and return (await `run` afterwards)."""
        await self._queue.put(None)

    async def run(self) -> None:
        """Group-commit loop; returns after `close()` once everything is written."""
        while True:
            batch, closing = await self._collect()
            if batch:
                await self._flush(batch)
            if closing:
                return

    async def _collect(self) -> tuple[list[ChunkDone], bool]:
        first = await self._queue.get()
        if first is None:
            return [], True
        batch: list[ChunkDone] = [first]
        rows = len(first.outcomes) + 1
        deadline = time.monotonic() + self._linger_s
        while rows < self._max_rows:
            entry = await self._next(deadline)
            if entry is _TIMEOUT:
                break
            if entry is None:
                return batch, True
            assert isinstance(entry, ChunkDone)
            batch.append(entry)
            rows += len(entry.outcomes) + 1
        return batch, False

    async def _next(self, deadline: float) -> ChunkDone | object | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _TIMEOUT
        try:
            async with asyncio.timeout(remaining):
                return await self._queue.get()
        except TimeoutError:
            return _TIMEOUT

    async def _flush(self, batch: Sequence[ChunkDone]) -> None:
        results, released = _results(batch)
        rows = sum(len(r.outcomes) for r in results)
        while True:
            started = time.perf_counter()
            try:
                settled = await self._store.complete(self._owner, results, utcnow())
            except Exception:
                # Nothing was written (the transaction rolled back): try the same batch
                # again. Workers wait meanwhile on the bounded queue.
                logger.exception("group commit of %d rows failed; retrying", rows)
                await asyncio.sleep(_RETRY_DELAY_S)
                continue
            break
        elapsed = time.perf_counter() - started
        self._metrics.commit_rows.observe(rows)
        self._metrics.commit_seconds.observe(elapsed)
        try:
            self._on_commit(settled, released)
        except Exception:
            # The commit stands; a failing listener must not stop the only writer.
            logger.exception("a commit listener failed")


_TIMEOUT = object()


def _results(batch: Sequence[ChunkDone]) -> tuple[list[ChunkResult], list[LeaseRun]]:
    """One result per chunk; the last chunk of a lease releases it."""
    results: list[ChunkResult] = []
    released: list[LeaseRun] = []
    for entry in batch:
        run = entry.run
        run.settled += 1
        last = run.settled >= run.chunks
        results.append(ChunkResult(run.lease_pk, run.pk, entry.outcomes, release=last))
        if last:
            released.append(run)
    return results, released
