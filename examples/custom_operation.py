"""An app with its own operation: bulk-tag records kept in its own SQLite table.

`tag_records` is a batch handler: one read and one write per batch of 100 items.
Unknown records fail with `record_not_found`; tagging twice is harmless (idempotent).

    PYTHONPATH=. bulkjobs serve --app examples.custom_operation:registry
    bulkjobs submit tag_records tags.csv --wait     # tags.csv: record_id,tag
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite
import attrs

from bulkjobs import BatchContext, ItemFailed, LifespanInfo, Registry

SEEDED_RECORDS = 100


@attrs.frozen
class Tagging:
    record_id: int
    tag: str = attrs.field(validator=attrs.validators.max_len(40))


class RecordsDb:
    """The app's own tables, in the service's SQLite file."""

    def __init__(self) -> None:
        self.conn: aiosqlite.Connection | None = None

    @asynccontextmanager
    async def lifespan(self, info: LifespanInfo) -> AsyncIterator[None]:
        self.conn = await aiosqlite.connect(info.db_path)
        await self.conn.execute("PRAGMA busy_timeout=10000")
        await self.conn.executescript(
            "CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, title TEXT);"
            "CREATE TABLE IF NOT EXISTS record_tags"
            " (record_id INTEGER, tag TEXT, PRIMARY KEY (record_id, tag));"
        )
        await self.conn.executemany(
            "INSERT OR IGNORE INTO records (id, title) VALUES (?, ?)",
            [(i, f"record {i}") for i in range(1, SEEDED_RECORDS + 1)],
        )
        await self.conn.commit()
        try:
            yield
        finally:
            await self.conn.close()

    async def tag(self, items: list[Tagging], ctx: BatchContext) -> list[object]:
        """Tag a batch: unknown records fail, the rest are written in one transaction."""
        assert self.conn is not None
        ids = sorted({i.record_id for i in items})
        marks = ",".join("?" * len(ids))
        async with self.conn.execute(f"SELECT id FROM records WHERE id IN ({marks})", ids) as cur:
            known = {row[0] for row in await cur.fetchall()}
        rows = [(i.record_id, i.tag) for i in items if i.record_id in known]
        await self.conn.executemany("INSERT OR IGNORE INTO record_tags VALUES (?, ?)", rows)
        await self.conn.commit()
        return [
            {"record_id": i.record_id, "tag": i.tag}
            if i.record_id in known
            else ItemFailed("record_not_found", f"No record {i.record_id}.")
            for i in items
        ]


def registry() -> Registry:
    """The app's operations (load with `--app examples.custom_operation:registry`)."""
    reg = Registry()
    db = RecordsDb()
    reg.lifespan(db.lifespan)
    reg.batch_operation(
        "tag_records",
        item_type=Tagging,
        batch_size=100,
        description="Add a tag to records of this app.",
        item_error_codes={"record_not_found": "No record with this id."},
    )(db.tag)
    return reg
