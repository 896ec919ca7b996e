"""The executor: runs one chunk of one job through its operation's handler.

A handler error fails one item, never a worker: `ItemFailed` keeps its code,
`RetryableItemError` is retried with backoff, a timeout fails as `timeout`, anything
else as `internal_error`, whose message is generic with a reference (`internal error
(ref 3f9c2a71b0de)`): the exception's text may name internal hosts or hold SQL, so it
goes to the log under that reference, never to the tenant. `ItemFailed` messages are
the handler's own words and pass through. `CancelledError` is never swallowed. A handler's
`SystemExit`, `KeyboardInterrupt` or other `BaseException` fails its item too (logged
as an error): a handler does not own the process; SIGTERM/SIGINT stop the server
through the runner's signal handlers, never as an exception inside a handler.

Sync (plain `def`) handlers run on the engine's own bounded thread pool
(`handler_threads`), never on the loop's default pool, so hung handlers cannot starve
intake parsing, key hashing or webhook DNS lookups. Without a per-item timeout a chunk
makes ONE hop to that pool: the whole loop (structure, call, retry with backoff, map
errors to outcomes) runs in the thread, about 1.4 µs per item against about 90 µs for a
hop per item; it reads the run's stop flag before each item, as the async loop does.
With a per-item timeout each item (each batch) keeps a hop of its own under
`asyncio.timeout`: a thread cannot be killed, so only a hop per item lets one item time
out alone. The thread of a call that timed out runs on until the handler returns; it
is counted in `bulkjobs_handler_threads_stuck` meanwhile. The timeout counts from the
hop's submission: at most `workers` hops are in flight and the pool is larger, so it is
the handler's own time unless stuck threads have taken the spare ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from .. import jsonutil
from ..models import ItemOutcome, WorkItem
from ..registry import BatchContext, ItemContext, ItemFailed, Operation, submit_in_thread
from .dispatcher import LeaseRun
from .metrics import Metrics

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 1000
#: Longest stretch the workers together run handlers that never suspend before yielding
#: the loop: the slice is shared (`Executor._slice_ends`), so the loop is held about
#: SLICE_S plus one item per other worker, not `workers x SLICE_S`, between
#: two looks at the sockets: a poll then answers in a few ms, not tens.
SLICE_S = 0.0005

#: What one attempt produced: ("ok", result) or ("err", ItemFailed)
Try = tuple[str, Any]
T = TypeVar("T")


class _Timeout(ItemFailed):
    def __init__(self, timeout_s: float) -> None:
        super().__init__("timeout", f"the handler did not finish within {timeout_s:g}s")


def _row(run: LeaseRun, item: WorkItem, attempt: Try, attempts: int) -> ItemOutcome:
    kind, value = attempt
    if kind == "ok":
        try:
            result = None if value is None else jsonutil.dumps_str(value)
        except TypeError as exc:
            return _failed_row(
                run, item, ItemFailed("internal_error", f"bad result: {exc}"), attempts
            )
        return ItemOutcome("succeeded", result, None, None, attempts, run.pk, item.index)
    return _failed_row(run, item, value, attempts)


def _failed_row(run: LeaseRun, item: WorkItem, err: ItemFailed, attempts: int) -> ItemOutcome:
    message = str(err.message)[:_MAX_MESSAGE]
    return ItemOutcome("failed", None, err.code, message, attempts, run.pk, item.index)


class Executor:
    """Runs one chunk of one job through its operation's handler."""

    def __init__(self, threads: concurrent.futures.Executor, metrics: Metrics) -> None:
        self._threads = threads
        self._metrics = metrics
        self._slice_ends = 0.0  # perf_counter() at which the workers' slice ends

    async def run_chunk(self, run: LeaseRun, chunk: Sequence[WorkItem]) -> list[ItemOutcome]:
        op = run.operation
        if op.is_batch:
            return await self._run_batch(run, op, chunk)
        if not op.is_async and op.options.timeout_s is None:
            return await self._run_chunk_in_thread(run, chunk)
        if op.options.timeout_s is None:
            return await self._run_async_chunk(run, op, chunk)
        rows: list[ItemOutcome] = []
        for item in chunk:
            if run.stopping:
                break  # the rest stay pending; the stop transition cancels them
            rows.append(await self._run_item(run, op, item))
            await self._take_turns()
        return rows

    async def _take_turns(self) -> None:
        """Yield the loop once the workers' shared slice is spent (see SLICE_S).

        A handler that never suspends would hold the loop for the whole chunk. The
        first worker to run after the slice ended opens the next one; the others run
        in it, so in one turn of the loop they all run about SLICE_S together. Before,
        each had a slice of its own and four ran back to back, about 2 ms before the
        loop looked at its sockets again (poll p99 under 200 pollers: 12.7 -> 6.7 ms)."""
        now = time.perf_counter()
        if now < self._slice_ends:
            return
        await asyncio.sleep(0)  # requests, streams and the writer get a turn
        now = time.perf_counter()
        if now >= self._slice_ends:
            self._slice_ends = now + SLICE_S

    async def _run_chunk_in_thread(
        self, run: LeaseRun, chunk: Sequence[WorkItem]
    ) -> list[ItemOutcome]:
        abandoned = threading.Event()
        try:
            return await self._in_thread(_run_items_sync, run, chunk, abandoned)
        except asyncio.CancelledError:
            abandoned.set()  # nobody waits for the rows: stop before the next item
            raise

    async def _run_async_chunk(
        self, run: LeaseRun, op: Operation, chunk: Sequence[WorkItem]
    ) -> list[ItemOutcome]:
        """The hot path: an async handler without a per-item timeout. Its first attempt
        is awaited inline, without the coroutines of `_run_item` and `_attempt` around
        it (py-spy: about a seventh of the loop's samples under `noop`); an item
        that fails goes on through `_run_item` (retries, error mapping)."""
        rows: list[ItemOutcome] = []
        handler, job_id, job_pk = op.handler, run.job_id, run.pk
        for item in chunk:
            if run.stopping:
                break  # the rest stay pending; the stop transition cancels them
            value = _structure(run, op, item)
            if isinstance(value, _Invalid):
                rows.append(value.row)
            else:
                try:
                    result = await handler(value, ItemContext(job_id, item.index, 1))
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # see module doc
                    rows.append(await self._run_item(run, op, item, (value, _failure(op, exc))))
                else:
                    rows.append(
                        ItemOutcome("succeeded", None, None, None, 1, job_pk, item.index)
                        if result is None
                        else _row(run, item, ("ok", result), 1)
                    )
            if time.perf_counter() >= self._slice_ends:
                await self._take_turns()
        return rows

    async def _run_item(
        self, run: LeaseRun, op: Operation, item: WorkItem, first: tuple[Any, Try] | None = None
    ) -> ItemOutcome:
        """One item to its outcome; `first` is its value and first attempt's result
        when the caller made that attempt already."""
        if first is None:
            value = _structure(run, op, item)
            if isinstance(value, _Invalid):
                return value.row
        else:
            value = first[0]
        attempt = 0
        while True:
            attempt += 1
            if first is not None and attempt == 1:
                result = first[1]
            else:
                ctx = ItemContext(run.job_id, item.index, attempt)
                result = await self._attempt(op, (value, ctx))
            if _should_retry(op, result, attempt) and not run.stopping:
                await asyncio.sleep(op.options.retry.backoff_s(attempt))
                continue
            return _row(run, item, _final(op, result, attempt), attempt)

    async def _run_batch(
        self, run: LeaseRun, op: Operation, chunk: Sequence[WorkItem]
    ) -> list[ItemOutcome]:
        rows: list[ItemOutcome] = []
        good: list[tuple[WorkItem, Any]] = []
        for item in chunk:
            value = _structure(run, op, item)
            if isinstance(value, _Invalid):
                rows.append(value.row)
            else:
                good.append((item, value))
        attempt = 0
        while good and not run.stopping:
            attempt += 1
            ctx = BatchContext(
                run.job_id, tuple(ItemContext(run.job_id, w.index, attempt) for w, _ in good)
            )
            result = await self._attempt(op, ([v for _, v in good], ctx))
            if _should_retry(op, result, attempt):
                await asyncio.sleep(op.options.retry.backoff_s(attempt))
                continue
            rows.extend(_batch_rows(run, good, _final(op, result, attempt), attempt))
            break
        return rows

    async def _attempt(self, op: Operation, args: tuple[Any, ...]) -> Try:
        timeout_s = op.options.timeout_s
        try:
            if timeout_s is None:  # the hot path: no timer per item
                return ("ok", await self._call(op, args))
            async with asyncio.timeout(timeout_s) as scope:
                return ("ok", await self._call(op, args))
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            if timeout_s is not None and scope.expired():
                return ("err", _Timeout(timeout_s))
            return _failure(op, exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt...: see module doc
            return _failure(op, exc)

    async def _call(self, op: Operation, args: tuple[Any, ...]) -> Any:
        if op.is_async:
            return await op.handler(*args)
        return await self._in_thread(op.handler, *args)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """One hop to the handler pool; a call nobody waits for any more is counted."""
        future = submit_in_thread(self._threads, fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():  # it had started: a thread cannot be stopped
                self._count_stuck(future)
            raise

    def _count_stuck(self, future: concurrent.futures.Future[Any]) -> None:
        gauge = self._metrics.handler_threads_stuck
        gauge.inc()
        # Runs in the handler thread when the call finally returns (at once if it has).
        future.add_done_callback(lambda _f: gauge.dec())


# -- the thread side of a one-hop chunk: no awaits, no loop objects ------------


def _run_items_sync(
    run: LeaseRun, chunk: Sequence[WorkItem], abandoned: threading.Event
) -> list[ItemOutcome]:
    """The chunk loop of a sync operation without timeout, run in one handler thread."""
    op = run.operation
    rows: list[ItemOutcome] = []
    for item in chunk:
        # `stopping` is a plain attribute read: safe from this thread, seen at once
        if run.stopping or abandoned.is_set():
            break  # the rest stay pending; the stop transition cancels them
        rows.append(_run_item_sync(run, op, item, abandoned))
    return rows


class _Invalid(NamedTuple):
    """A payload the operation's item type refuses (its type changed since intake)."""

    row: ItemOutcome


def _structure(run: LeaseRun, op: Operation, item: WorkItem) -> Any:
    """The item's value for the handler, or `_Invalid` with its `invalid_item` outcome.

    Items were validated at intake: validated again only when the job was accepted
    before this process loaded its operations (`LeaseRun.revalidate`), when the item
    type may have changed since; otherwise only built (`ItemType.build`)."""
    try:
        payload = jsonutil.loads(item.payload_json)
        if run.revalidate:
            return op.validator.structure(payload)
        return op.validator.build(payload)
    except Exception as exc:
        return _Invalid(_failed_row(run, item, ItemFailed("invalid_item", str(exc)), 1))


def _run_item_sync(
    run: LeaseRun, op: Operation, item: WorkItem, abandoned: threading.Event
) -> ItemOutcome:
    value = _structure(run, op, item)
    if isinstance(value, _Invalid):
        return value.row
    attempt = 0
    while True:
        attempt += 1
        result = _attempt_sync(op, (value, ItemContext(run.job_id, item.index, attempt)))
        if not _should_retry(op, result, attempt) or run.stopping:
            return _row(run, item, _final(op, result, attempt), attempt)
        # the backoff: a sleep that ends early when the worker is cancelled (shutdown)
        if abandoned.wait(op.options.retry.backoff_s(attempt)):
            return _row(run, item, _final(op, result, attempt), attempt)


def _attempt_sync(op: Operation, args: tuple[Any, ...]) -> Try:
    try:
        return ("ok", op.handler(*args))
    except BaseException as exc:  # incl. CancelledError: nothing cancels a thread
        return _failure(op, exc)


def _failure(op: Operation, exc: BaseException) -> Try:
    """What a handler's exception makes of its item (a timeout aside)."""
    if isinstance(exc, ItemFailed):
        return ("err", exc)
    if isinstance(exc, TimeoutError):
        return ("err", ItemFailed("internal_error", "TimeoutError raised by the handler"))
    # SystemExit, KeyboardInterrupt and other BaseExceptions are errors: see module doc
    level = logging.WARNING if isinstance(exc, Exception) else logging.ERROR
    ref = secrets.token_hex(6)
    logger.log(level, "operation %s handler raised %s (ref %s)", op.name, _describe(exc), ref)
    return ("err", ItemFailed("internal_error", f"internal error (ref {ref})"))


def _describe(exc: BaseException) -> str:
    """`Type: message`, even for an exception whose `__str__` raises."""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable exception>"
    return f"{type(exc).__name__}: {text}"


def _should_retry(op: Operation, result: Try, attempt: int) -> bool:
    kind, value = result
    return kind == "err" and value.retryable and attempt < op.options.retry.max_attempts


def _final(op: Operation, result: Try, attempt: int) -> Try:
    kind, value = result
    if kind == "err" and value.retryable and op.options.retry.max_attempts > 1:
        msg = f"{value.code} after {attempt} attempts: {value.message}"
        return ("err", ItemFailed("retries_exhausted", msg))
    return result


def _batch_rows(
    run: LeaseRun, good: Sequence[tuple[WorkItem, Any]], result: Try, attempts: int
) -> list[ItemOutcome]:
    kind, value = result
    items = [w for w, _ in good]
    if kind == "err":
        return [_failed_row(run, w, value, attempts) for w in items]
    if not isinstance(value, list | tuple) or len(value) != len(items):
        got = len(value) if isinstance(value, list | tuple) else type(value).__name__
        err = ItemFailed(
            "internal_error", f"batch handler returned {got} results for {len(items)} items"
        )
        return [_failed_row(run, w, err, attempts) for w in items]
    return [
        _failed_row(run, w, r, attempts)
        if isinstance(r, ItemFailed)
        else _row(run, w, ("ok", r), attempts)
        for w, r in zip(items, value, strict=True)
    ]
