"""Every client example runs against a live app: the aiohttp-only poller, the Python
client submitting a 100,000-line NDJSON file, the custom-operation app, and the
EventSource page in real headless Chromium."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import aiosqlite
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bulkjobs.client import BulkJobsClient
from tests.conftest import ClientFactory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHROMIUM = os.environ.get("BULKJOBS_CHROMIUM", "/usr/bin/chromium")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def url_of(tc: TestClient) -> str:
    return f"http://127.0.0.1:{tc.server.port}"


async def test_the_aiohttp_only_poller(client: TestClient) -> None:
    job = await load("poll_with_aiohttp").main(url_of(client))
    assert (job["status"], job["succeeded"], job["failed"]) == ("completed", 2, 0)


@pytest.mark.slow
async def test_the_client_submits_a_100k_line_ndjson_file(
    client: TestClient, tmp_path: Path
) -> None:
    example = load("submit_ndjson")
    path = tmp_path / "items.ndjson"
    job = await example.main(url_of(client), path)
    assert path.read_bytes().count(b"\n") == example.LINES == 100_000
    assert (job.status, job.succeeded) == ("completed", 100_000)


async def test_the_custom_operation_app(make_client: ClientFactory, db_path: str) -> None:
    live = await make_client(registry=load("custom_operation").registry())
    items = [{"record_id": i, "tag": "vip"} for i in (1, 2, 3, 999)] + [
        {"record_id": 1, "tag": "vip"}  # tagging twice is harmless
    ]
    async with BulkJobsClient(url_of(live)) as bj:
        job = await bj.wait((await bj.submit("tag_records", items)).id)
        failed = [i async for i in bj.items(job.id, status="failed")]
    assert (job.status, job.succeeded, job.failed) == ("completed", 4, 1)
    assert [(f["index"], f["error"]["code"]) for f in failed] == [(3, "record_not_found")]
    async with aiosqlite.connect(db_path) as db, db.execute("SELECT * FROM record_tags") as cur:
        assert sorted(await cur.fetchall()) == [(1, "vip"), (2, "vip"), (3, "vip")]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not os.environ.get("CI"), reason="no Chromium"
)
async def test_the_eventsource_page(client: TestClient) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    page_server = TestServer(load("browser_events").create_app(url_of(client)))
    await page_server.start_server()
    try:
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(str(page_server.make_url("/")))
                await page.fill("#count", "500")
                await page.click("#submit")
                final = page.locator("#status[data-final]")
                await playwright_api.expect(final).to_have_attribute(
                    "data-final", "completed", timeout=30_000
                )
                text = await page.locator("#status").text_content()
                log = await page.locator("#log").text_content()
            finally:
                await browser.close()
    finally:
        await page_server.close()
    assert errors == []
    assert text == "completed: 500/500 processed, 5 failed"
    assert log is not None and "snapshot" in log and log.strip().endswith("status completed")
