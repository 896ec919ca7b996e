"""The embedded demo domain served by `bulkjobs serve` with no `--app`.

An `orders` table lives in the service's own database (the SQLite file, or the
PostgreSQL database with `--db postgresql://…`), seeded with `ord_1` …
`ord_1000` (all `pending`). Operations:

- `update_orders_status` (batch): move orders along pending → paid → shipped →
  delivered, or to cancelled; unknown order → `order_not_found`, an illegal move →
  `invalid_transition`. Setting the status an order already has succeeds (idempotent).
- `noop`: does nothing, successfully; for trying things out and for benchmarks.
- `sleep`: waits `ms` milliseconds per item; for watching progress live.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiosqlite
import attrs

from ..registry import BatchContext, ItemContext, ItemFailed, LifespanInfo, Registry

OrderStatus = Literal["pending", "paid", "shipped", "delivered", "cancelled"]
SEEDED_ORDERS = 1000

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"paid", "shipped", "cancelled"}),
    "paid": frozenset({"shipped", "cancelled"}),
    "shipped": frozenset({"delivered"}),
    "delivered": frozenset(),
    "cancelled": frozenset(),
}


@attrs.frozen
class OrderStatusUpdate:
    id: str = attrs.field(validator=attrs.validators.max_len(64))
    status: OrderStatus


@attrs.frozen
class NoopItem:
    id: str | None = None
    value: Any = None


@attrs.frozen
class SleepItem:
    ms: int = attrs.field(validator=[attrs.validators.ge(0), attrs.validators.le(60_000)])
    id: str | None = None
    fail: bool = False


class OrdersDb:
    """The demo's own connection to the `orders` table: SQLite, or a small PostgreSQL
    pool when the service runs on PostgreSQL (the table lives in the same database)."""

    def __init__(self) -> None:
        self.conn: aiosqlite.Connection | None = None
        self.pool: Any = None  # an asyncpg pool on PostgreSQL

    @asynccontextmanager
    async def lifespan(self, info: LifespanInfo) -> AsyncIterator[None]:
        if info.db_url:
            async with self._postgres(info.db_url):
                yield
            return
        self.conn = await aiosqlite.connect(info.db_path)
        await self.conn.execute("PRAGMA busy_timeout=10000")
        # as the store's own connections: in WAL mode a commit need not wait for fsync
        await self.conn.execute("PRAGMA synchronous=NORMAL")
        await self._seed()
        try:
            yield
        finally:
            await self.conn.close()
            self.conn = None

    @asynccontextmanager
    async def _postgres(self, url: str) -> AsyncIterator[None]:
        import asyncpg  # type: ignore[import-untyped]  # only with PostgreSQL

        password = os.environ.get("BULKJOBS_DB_PASSWORD") or None
        self.pool = await asyncpg.create_pool(url, min_size=1, max_size=2, password=password)
        try:
            async with self.pool.acquire() as db, db.transaction():
                # Processes starting at once: one creates and seeds, the others wait.
                await db.execute("SELECT pg_advisory_xact_lock(hashtext('bulkjobs.demo.orders'))")
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS orders"
                    " (id TEXT PRIMARY KEY, status TEXT NOT NULL, updated_at TIMESTAMPTZ)"
                )
                await db.execute(
                    "INSERT INTO orders (id, status) SELECT 'ord_' || g, 'pending'"
                    " FROM generate_series(1, $1::int) AS g ON CONFLICT (id) DO NOTHING",
                    SEEDED_ORDERS,
                )
            yield
        finally:
            await self.pool.close()
            self.pool = None

    async def _seed(self) -> None:
        assert self.conn is not None
        await self.conn.execute(
            "CREATE TABLE IF NOT EXISTS orders"
            " (id TEXT PRIMARY KEY, status TEXT NOT NULL, updated_at TEXT)"
        )
        await self.conn.executemany(
            "INSERT OR IGNORE INTO orders (id, status) VALUES (?, 'pending')",
            [(f"ord_{i}",) for i in range(1, SEEDED_ORDERS + 1)],
        )
        await self.conn.commit()

    async def update_statuses(
        self, items: list[OrderStatusUpdate], ctx: BatchContext
    ) -> list[dict[str, str] | ItemFailed]:
        """One read and one write per batch, however many items it holds."""
        current = await self._current([i.id for i in items])
        outcomes: list[dict[str, str] | ItemFailed] = []
        writes: list[tuple[str, str]] = []
        for item in items:
            outcome = _decide(item, current)
            if isinstance(outcome, dict):
                current[item.id] = item.status  # later items of the batch see it
                writes.append((item.status, item.id))
            outcomes.append(outcome)
        await self._write(writes)
        return outcomes

    async def _current(self, ids: list[str]) -> dict[str, str]:
        if self.pool is not None:
            rows = await self.pool.fetch(
                "SELECT id, status FROM orders WHERE id = ANY($1::text[])", list(set(ids))
            )
            return {row[0]: row[1] for row in rows}
        assert self.conn is not None
        marks = ",".join("?" * len(set(ids)))
        sql = f"SELECT id, status FROM orders WHERE id IN ({marks})"
        async with self.conn.execute(sql, list(set(ids))) as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def _write(self, writes: list[tuple[str, str]]) -> None:
        if self.pool is not None:
            final = {order_id: status for status, order_id in writes}  # the last one wins
            await self.pool.execute(
                "UPDATE orders SET status = u.status, updated_at = now()"
                " FROM unnest($1::text[], $2::text[]) AS u(id, status) WHERE orders.id = u.id",
                list(final),
                list(final.values()),
            )
            return
        assert self.conn is not None
        await self.conn.executemany(
            "UPDATE orders SET status = ?, updated_at = datetime('now') WHERE id = ?", writes
        )
        await self.conn.commit()


def _decide(item: OrderStatusUpdate, current: dict[str, str]) -> dict[str, str] | ItemFailed:
    before = current.get(item.id)
    if before is None:
        return ItemFailed("order_not_found", f"No order {item.id!r}.")
    if before != item.status and item.status not in TRANSITIONS[before]:
        return ItemFailed(
            "invalid_transition", f"An order that is {before} cannot become {item.status}."
        )
    return {"id": item.id, "previous_status": before, "status": item.status}


async def noop(item: NoopItem, ctx: ItemContext) -> None:
    return None


async def sleep(item: SleepItem, ctx: ItemContext) -> dict[str, int]:
    await asyncio.sleep(item.ms / 1000)
    if item.fail:
        raise ItemFailed("requested_failure", "The item asked to fail.")
    return {"slept_ms": item.ms}


def registry() -> Registry:
    """A fresh demo registry with its own orders connection."""
    reg = Registry()
    orders = OrdersDb()
    reg.lifespan(orders.lifespan)
    reg.batch_operation(
        "update_orders_status",
        item_type=OrderStatusUpdate,
        batch_size=1000,
        concurrency=1,  # read-modify-write of orders: one batch at a time
        description="Set the status of demo orders ord_1 … ord_1000.",
        item_error_codes={
            "order_not_found": "No order with this id.",
            "invalid_transition": "The order's current status cannot change to the requested one.",
        },
    )(orders.update_statuses)
    reg.operation("noop", item_type=NoopItem, batch_size=500, description="Does nothing.")(noop)
    reg.operation(
        "sleep",
        item_type=SleepItem,
        batch_size=10,
        description="Sleeps `ms` per item; `fail: true` fails the item.",
        item_error_codes={"requested_failure": "The item asked to fail."},
    )(sleep)
    return reg
