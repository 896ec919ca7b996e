"""Streamed result records: NDJSON lines or CSV rows, decoded one at a time."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .. import jsonutil


async def ndjson_records(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    async for line in resp.content:
        if line.strip():
            yield jsonutil.loads(line)


async def csv_records(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Rows as dicts keyed by the header; a quoted field may span lines."""
    header: list[str] | None = None
    pending = ""
    async for raw in resp.content:
        pending += raw.decode("utf-8")
        if pending.count('"') % 2:  # inside a quoted field: read on
            continue
        row = next(csv.reader([pending]), [])
        pending = ""
        if header is None:
            header = row
        elif row:
            yield dict(zip(header, row, strict=False))
