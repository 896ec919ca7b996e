"""The Python client: submit a 100,000-line NDJSON file as one job and wait for it.

The file is streamed (read line by line, sent as NDJSON), never held in memory;
`wait()` follows the job's event stream and falls back to polling.

    make serve   # in another shell
    python examples/submit_ndjson.py [http://127.0.0.1:8080]
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bulkjobs.client import BulkJobsClient, Job

LINES = 100_000


def write_file(path: Path, lines: int = LINES) -> Path:
    """A demo file of `noop` items, one JSON object per line (kept if it exists)."""
    if path.exists():
        return path
    with path.open("w") as f:
        for i in range(lines):
            f.write(json.dumps({"id": f"rec-{i}", "value": i}) + "\n")
    return path


def read_items(path: Path) -> Iterator[Any]:
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


async def main(base_url: str = "http://127.0.0.1:8080", path: Path = Path("items.ndjson")) -> Job:
    await asyncio.to_thread(write_file, path)
    async with BulkJobsClient(base_url) as client:
        job = await client.submit("noop", read_items(path))
        print(f"submitted {job.id} with {job.total_items:,} items")
        job = await client.wait(job.id, timeout=600)
    print(f"{job.id} {job.status}: {job.succeeded:,} succeeded, {job.failed:,} failed")
    return job


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:2]))
