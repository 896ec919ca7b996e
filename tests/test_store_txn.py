"""Cancellation safety at the driver boundary (issue 10, bug 1).

aiosqlite still runs a queued call after the coroutine awaiting it is cancelled. A
`BEGIN` cancelled while it waited for the file's write lock used to leave the only
writer connection inside a transaction: every later `BEGIN` failed with "cannot start
a transaction within a transaction", no job progressed and submits answered 500.

Each test cancels a transaction at one of its awaits, with a second connection
holding the write lock so that `BEGIN` really blocks, then shows the next
transaction commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bulkjobs.store.sqlite import SQLiteStore


@contextmanager
def write_lock_held(path: Path) -> Iterator[threading.Event]:
    """Hold the file's write lock from another connection until the event is set."""
    release = threading.Event()
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(5)
    try:
        yield release
    finally:
        release.set()
        thread.join()


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "t.sqlite3"))
    await s.open()
    yield s  # type: ignore[misc]
    await s.close()


async def _empty_txn(store: SQLiteStore) -> None:
    """Take and release the write lock: what `/readyz` used to do under a timeout."""
    async with store._txn():
        pass


async def _works(store: SQLiteStore) -> None:
    """A write transaction commits and is visible afterwards."""
    async with asyncio.timeout(5):
        async with store._txn() as db:
            await db.execute("INSERT INTO purge_queue (job_pk) VALUES (424242)")
        async with store._txn() as db:
            async with db.execute("SELECT count(*) FROM purge_queue WHERE job_pk = 424242") as cur:
                assert (await cur.fetchone())[0] == 1
            await db.execute("DELETE FROM purge_queue WHERE job_pk = 424242")


async def _begin_then_wait(store: SQLiteStore, entered: asyncio.Event) -> None:
    async with store._txn() as db:
        entered.set()
        await db.execute("INSERT INTO purge_queue (job_pk) VALUES (1)")
        await asyncio.sleep(10)


async def test_cancel_during_begin_blocked_by_another_connection(store: SQLiteStore) -> None:
    with write_lock_held(Path(store.path)) as release:
        task = asyncio.create_task(_empty_txn(store))
        await asyncio.sleep(0.2)  # BEGIN IMMEDIATE is now waiting in aiosqlite's thread
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()  # the cancelled BEGIN goes through on the writer's thread now
    await _works(store)


async def test_cancel_while_waiting_for_the_write_lock(store: SQLiteStore) -> None:
    entered = asyncio.Event()
    holder = asyncio.create_task(_begin_then_wait(store, entered))
    await entered.wait()
    waiter = asyncio.create_task(_empty_txn(store))
    await asyncio.sleep(0.05)
    waiter.cancel()
    holder.cancel()
    for t in (waiter, holder):
        with pytest.raises(asyncio.CancelledError):
            await t
    await _works(store)


async def test_cancel_inside_the_body_rolls_back(store: SQLiteStore) -> None:
    entered = asyncio.Event()
    task = asyncio.create_task(_begin_then_wait(store, entered))
    await entered.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _works(store)
    sql = "SELECT count(*) FROM purge_queue WHERE job_pk = 1"
    async with store._txn() as db, db.execute(sql) as cur:
        assert (await cur.fetchone())[0] == 0, "the cancelled transaction was committed"


@pytest.mark.parametrize("delay_s", [0.0, 0.001, 0.005, 0.02])
async def test_cancel_at_any_moment_under_a_held_lock(store: SQLiteStore, delay_s: float) -> None:
    """Cancel after a sweep of delays: before, during and right after BEGIN."""
    with write_lock_held(Path(store.path)) as release:
        task = asyncio.create_task(_empty_txn(store))
        await asyncio.sleep(delay_s)
        release.set()
        await asyncio.sleep(delay_s)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await _works(store)


async def test_cancel_during_commit(store: SQLiteStore) -> None:
    async def write() -> None:
        async with store._txn() as db:
            await db.execute("INSERT INTO purge_queue (job_pk) VALUES (7)")

    for _ in range(20):  # lands at a different await each time, commit included
        task = asyncio.create_task(write())
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await _works(store)
        async with store._txn() as db:
            await db.execute("DELETE FROM purge_queue WHERE job_pk = 7")


def test_the_old_txn_shape_wedges_the_writer(tmp_path: Path) -> None:
    """The bug itself, shown on plain sqlite3: a BEGIN that ran after its caller gave
    up leaves the connection inside a transaction, and the next BEGIN fails."""
    conn = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # the 'cancelled' BEGIN, run anyway
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        conn.execute("BEGIN IMMEDIATE")
    conn.rollback()  # what _txn now queues first after an unsettled end
    conn.execute("BEGIN IMMEDIATE")
    conn.rollback()
    conn.close()
