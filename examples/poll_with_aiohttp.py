"""Submit a job and poll it to the end with nothing but aiohttp, pacing by Retry-After.

make serve   # in another shell
python examples/poll_with_aiohttp.py [http://127.0.0.1:8080]
"""

import asyncio
import sys
from typing import Any

import aiohttp

ITEMS = [{"id": "ord_123", "status": "paid"}, {"id": "ord_124", "status": "cancelled"}]


async def main(base_url: str = "http://127.0.0.1:8080") -> dict[str, Any]:
    async with aiohttp.ClientSession(base_url) as http:
        body = {"operation": "update_orders_status", "items": ITEMS}
        async with http.post("/bulk-jobs", json=body) as resp:
            job, delay = await resp.json(), float(resp.headers.get("Retry-After", "1"))
        while job["status"] in ("pending", "running"):
            await asyncio.sleep(delay)
            async with http.get(job["links"]["self"]) as resp:
                job, delay = await resp.json(), float(resp.headers.get("Retry-After", "1"))
    print(f"{job['id']} {job['status']}: {job['succeeded']} succeeded, {job['failed']} failed")
    return job


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
