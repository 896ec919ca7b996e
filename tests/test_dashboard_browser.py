"""The dashboard driven by real headless Chromium (Debian's /usr/bin/chromium) through
Playwright: submit a demo job, watch its bar reach 100% over EventSource."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.security import hash_key
from tests.conftest import ClientFactory
from tests.support import Gate, submit, wait_terminal

playwright_api = pytest.importorskip("playwright.async_api")
Page = playwright_api.Page
STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$"  # every timestamp with its date

CHROMIUM = os.environ.get("BULKJOBS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = [
    pytest.mark.slow,
    # CI installs chromium (.ci/run), so there this test never skips.
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None and not os.environ.get("CI"),
        reason=f"no Chromium at {CHROMIUM}",
    ),
]


@contextlib.asynccontextmanager
async def chromium_page(
    client: TestClient, width: int = 1280, height: int = 800, **context: Any
) -> AsyncIterator[Page]:
    """A page of real Chromium; `page.problems` collects uncaught errors and console
    errors (CSP violations among them), `page.streams` every EventSource URL."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = await browser.new_context(viewport={"width": width, "height": height}, **context)
            page = await ctx.new_page()
            page.problems = problems = []  # type: ignore[attr-defined]
            page.streams = streams = []  # type: ignore[attr-defined]
            page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
            page.on(
                "console",
                lambda m: (
                    problems.append(f"{m.text} {m.location.get('url')}")
                    if m.type == "error"
                    else None
                ),
            )
            page.on(
                "request",
                lambda r: streams.append(r.url) if r.resource_type == "eventsource" else None,
            )
            yield page
        finally:
            await browser.close()


async def test_dashboard_submits_a_demo_job_and_follows_it_live(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client: TestClient = await make_client()
    expect = playwright_api.expect
    async with chromium_page(client) as page:
        answer = await page.goto(str(client.make_url("/")))
        assert answer is not None
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        await expect(page.locator("#jobs-empty")).to_be_visible()
        await expect(page.locator("#conn")).to_have_text("live")
        await page.select_option("#demo-operation", "sleep")
        await page.fill("#demo-items", "3000")
        await page.fill("#demo-ms", "1")
        await page.fill("#demo-fail", "100")
        await page.click("#demo-submit")

        await expect(page).to_have_url(re.compile(r"#/jobs/job_"))
        await expect(page.locator("#detail-progress")).to_have_text("100%", timeout=60_000)
        await expect(page.locator("#detail-status")).to_have_text("completed")
        await expect(page.locator("#detail-counts")).to_have_text("3,000 of 3,000 ran, 30 failed")
        await expect(page.locator("#detail-created")).to_have_text(re.compile(STAMP))
        await expect(page.locator("#act-cancel")).to_be_disabled()
        # keyset paging of all items, then the failed ones agree with the counter
        await expect(page.locator("#items-body tr")).to_have_count(50)
        await page.click("#items-more")
        await expect(page.locator("#items-body tr")).to_have_count(100)
        await page.select_option("#items-status", "failed")
        await expect(page.locator("#items-body tr")).to_have_count(30)
        await expect(page.locator("#items-body tr").first).to_contain_text("requested_failure")
        await page.click("#back")
        row = page.locator("#jobs-body tr").first
        await expect(row.locator("[data-role=status]")).to_have_text("completed")
        await expect(row.locator("[data-role=pct]")).to_have_text("100%")
        widths = await row.locator(".bar span").evaluate_all("es => es.map(e => e.style.width)")
        assert widths == ["99%", "1%", "0%"]  # succeeded, failed, cancelled
        await page.screenshot(path=str(tmp_path / "dashboard.png"))
        assert page.problems == []  # type: ignore[attr-defined]
        streams = list(page.streams)  # type: ignore[attr-defined]
    assert [s.split("?")[0] for s in streams] == [str(client.make_url("/events"))]
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


async def test_dashboard_assets_are_served_and_nothing_else(client: TestClient) -> None:
    page = await client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert "dashboard/dashboard.js" in html and "http" not in html.split("<body>")[1]
    assets = (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),  # no favicon 404 in the console
    )
    for name, kind in assets:
        resp = await client.get(f"/dashboard/{name}")
        assert resp.status == 200 and resp.content_type == kind
    missing = await client.get("/dashboard/..%2Fsse.py")
    assert missing.status == 404
    assert (await missing.json())["code"] == "not_found"


async def test_dashboard_with_api_keys_asks_for_a_key_and_streams_with_a_token(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    key = "bjk_dashboard-test-key"
    client: TestClient = await make_client(api_keys=f"acme:sha256:{hash_key(key)}")
    expect = playwright_api.expect
    streams: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on(
                "request",
                lambda r: streams.append(r.url) if r.resource_type == "eventsource" else None,
            )
            await page.goto(str(client.make_url("/")))
            await expect(page.locator("#key-card")).to_be_visible()
            await page.fill("#key-input", key)
            await page.click("#key-form button")
            await expect(page.locator("#key-card")).to_be_hidden()
            await page.select_option("#demo-operation", "noop")
            await page.fill("#demo-items", "500")
            await page.click("#demo-submit")
            await expect(page.locator("#detail-status")).to_have_text("completed", timeout=60_000)
            await page.reload()  # the job page survives a reload (the key is in the tab)
            await expect(page.locator("#detail-counts")).to_have_text("500 of 500 ran")
            stored = await page.evaluate("sessionStorage.getItem('bulkjobs.apiKey')")
        finally:
            await browser.close()
    assert stored == key
    assert streams and all("/events?token=" in url for url in streams)
    resp = await client.get("/bulk-jobs", headers={"Authorization": f"Bearer {key}"})
    jobs = (await resp.json())["data"]
    assert [j["status"] for j in jobs] == ["completed"]


async def test_a_cancelled_job_is_drawn_from_its_counters_not_as_a_success(
    make_client: ClientFactory, gate: Gate
) -> None:
    client: TestClient = await make_client(cancel_wait_s=0.05)
    job = await submit(client, "gated", [{"n": i} for i in range(2000)])
    await gate.wait_started(2)  # two items in flight (concurrency 2), the rest pending
    resp = await client.post(f"/bulk-jobs/{job['id']}/cancel")
    assert resp.status == 202
    gate.opened.set()
    done = await wait_terminal(client, job["id"])
    assert (done.status.value, done.succeeded, done.cancelled) == ("cancelled", 2, 1998)
    assert done.progress == 1.0  # the API field keeps its meaning: every item is terminal
    expect = playwright_api.expect
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(str(client.make_url("/")))
            row = page.locator(f"#jobs-body tr[data-job='{job['id']}']")
            await expect(row.locator("[data-role=pct]")).to_have_text("0%")
            bar = row.locator(".bar")
            await expect(bar).to_have_attribute("aria-label", "2 of 2,000 ran, 1,998 cancelled")
            widths = await bar.locator("span").evaluate_all(
                "es => es.map(e => [e.dataset.seg, e.style.width,"
                " getComputedStyle(e).backgroundColor])"
            )
            assert [(w[0], w[1]) for w in widths] == [
                ("succeeded", "0.1%"),
                ("failed", "0%"),
                ("cancelled", "99.9%"),
            ]
            assert len({w[2] for w in widths}) == 3, "segments need distinct colours"
            await row.locator("a").click()
            await expect(page.locator("#detail-counts")).to_have_text(
                "2 of 2,000 ran, 1,998 cancelled"
            )
            await expect(page.locator("#detail-progress")).to_have_text("0%")
        finally:
            await browser.close()


async def test_the_list_follows_seven_running_jobs_over_one_stream(
    make_client: ClientFactory,
) -> None:
    # one chunk per lease: the jobs take turns, so all seven run at once
    client: TestClient = await make_client(load_page_items=10)
    expect = playwright_api.expect
    async with chromium_page(client) as page:
        await page.goto(str(client.make_url("/")))
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.locator("#jobs-empty")).to_be_visible()
        # submitted by another client (curl, the CLI): they appear without a reload
        items = [{"ms": 20, "fail": i % 25 == 0} for i in range(100)]
        jobs = [await submit(client, "sleep", items) for _ in range(7)]
        rows = page.locator("#jobs-body tr")
        await expect(rows).to_have_count(7)
        ids = [await r.get_attribute("data-job") for r in await rows.all()]
        assert ids == [j["id"] for j in reversed(jobs)]  # newest first
        running = page.locator("[data-role=status]", has_text="running")
        await expect(running).to_have_count(7)
        for job in jobs:
            row = page.locator(f"#jobs-body tr[data-job='{job['id']}']")
            await expect(row.locator("[data-role=status]")).to_have_text(
                "completed", timeout=30_000
            )
            await expect(row.locator("[data-role=pct]")).to_have_text("100%")
            await expect(row.locator("[data-role=failed]")).to_have_text("4")
        await expect(page.locator("#ov-backlog")).to_have_text("0", timeout=10_000)
        assert page.problems == []  # type: ignore[attr-defined]
        assert len(page.streams) == 1  # type: ignore[attr-defined]
        assert page.streams[0].split("?")[0].endswith("/events")  # type: ignore[attr-defined]


async def test_the_job_page_has_its_own_url_and_its_actions_show_refusals(
    make_client: ClientFactory, gate: Gate, tmp_path: Path
) -> None:
    client: TestClient = await make_client(cancel_wait_s=0.05)
    expect = playwright_api.expect
    held = await submit(client, "gated", [{"n": i} for i in range(10)])
    await gate.wait_started(2)
    items = [{"n": i, "id": f"it_{i}", "fail": "bad_n" if i % 4 == 0 else None} for i in range(12)]
    done = await submit(client, "echo", items)
    await wait_terminal(client, done["id"])
    async with chromium_page(client) as page:
        await page.goto(str(client.make_url("/")) + f"#/jobs/{held['id']}")
        await expect(page.locator("#detail-id")).to_have_text(held["id"])
        await expect(page.locator("#detail-status")).to_have_text("running")
        await expect(page.locator("#webhook-state")).to_have_text("This job has no webhook.")
        await expect(page.locator("#items-body tr").last).to_contain_text("pending")
        # refused: the API's problem detail is shown
        await page.click("#dl-ndjson")
        await expect(page.locator("#action-msg")).to_contain_text("complete once it finishes")
        # cancel asks first; "Keep it" keeps it
        await page.click("#act-cancel")
        await expect(page.locator("#confirm")).to_be_visible()
        await page.click("#confirm-no")
        await expect(page.locator("#confirm")).to_be_hidden()
        assert (await (await client.get(f"/bulk-jobs/{held['id']}")).json())["status"] == "running"
        await page.click("#act-cancel")
        await page.click("#confirm-yes")
        await expect(page.locator("#action-msg")).to_have_text("Cancel requested.")
        gate.opened.set()
        await expect(page.locator("#detail-status")).to_have_text("cancelled")
        await expect(page.locator("#detail-counts")).to_have_text("2 of 10 ran, 8 cancelled")
        # the items table, loaded while they were pending, followed the job live
        await expect(page.locator("#items-body tr").first).to_contain_text("succeeded")
        await expect(page.locator("#items-body tr").last).to_contain_text("cancelled")

        # a finished job with failures, opened by its URL and reloaded
        await page.goto(str(client.make_url("/")) + f"#/jobs/{done['id']}")
        await page.reload()
        await expect(page.locator("#detail-counts")).to_have_text("12 of 12 ran, 3 failed")
        await expect(page.locator("#detail-completed")).to_have_text(re.compile(STAMP))
        await expect(page.locator("#detail-eta")).to_have_text("done")
        await page.select_option("#items-status", "failed")
        await expect(page.locator("#items-body tr")).to_have_count(3)
        await expect(page.locator("#items-body tr").first).to_contain_text("bad_n")
        await page.select_option("#items-status", "")
        await page.fill("#items-search", "it_1")  # it_1, it_10, it_11
        await expect(page.locator("#items-body tr:visible")).to_have_count(3)
        async with page.expect_download() as info:
            await page.click("#dl-ndjson")
        ndjson = tmp_path / "all.ndjson"
        await (await info.value).save_as(ndjson)
        assert len(ndjson.read_text().splitlines()) == 12
        async with page.expect_download() as info:
            await page.click("#dl-failures")
        failures = tmp_path / "failures.csv"
        await (await info.value).save_as(failures)
        assert len(failures.read_text().splitlines()) == 1 + 3  # header + failed rows
        # retry the failed items: the new job's page, linked both ways
        await page.click("#act-retry")
        await expect(page).to_have_url(re.compile(r"#/jobs/job_"))
        await expect(page.locator("#detail-lineage")).to_contain_text("retry of")
        assert done["id"] not in page.url
        await expect(page.locator("#detail-status")).to_have_text("completed")
        await page.locator("#detail-lineage a").click()
        await expect(page.locator("#detail-id")).to_have_text(done["id"])
        await expect(page.locator("#detail-lineage")).to_contain_text("retried by")
        # delete, after confirming
        await page.click("#act-delete")
        await page.click("#confirm-yes")
        await expect(page.locator("#list-view")).to_be_visible()
        await expect(page.locator(f"#jobs-body tr[data-job='{done['id']}']")).to_have_count(0)
    gone = await client.get(f"/bulk-jobs/{done['id']}")
    assert gone.status == 410


async def _no_horizontal_scroll(page: Page) -> None:
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px"


async def _tab_to(page: Page, selector: str, presses: int = 40) -> None:
    """Press Tab until `selector` has the focus (keyboard only, no clicks)."""
    for _ in range(presses):
        await page.keyboard.press("Tab")
        if await page.evaluate(f"document.activeElement.matches({selector!r})"):
            return
    raise AssertionError(f"Tab never reached {selector}")


async def test_a_phone_sized_dark_page_works_from_the_keyboard_without_console_errors(
    make_client: ClientFactory,
) -> None:
    client: TestClient = await make_client()
    expect = playwright_api.expect
    job = await submit(client, "echo", [{"n": 1}, {"n": 2, "fail": "bad_n"}])
    await wait_terminal(client, job["id"])
    async with chromium_page(client, 390, 844, color_scheme="dark") as page:
        await page.goto(str(client.make_url("/")))
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.locator("#ov-backlog")).to_have_text("0")
        await expect(page.locator("#ov-streams")).to_have_text("1")  # this page's stream
        await expect(page.locator("#jobs-body tr")).to_have_count(1)
        await _no_horizontal_scroll(page)
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert sum(map(int, re.findall(r"\d+", background)[:3])) < 150, background  # dark

        await _tab_to(page, f"a[href='#/jobs/{job['id']}']")
        await page.keyboard.press("Enter")
        await expect(page.locator("#detail-counts")).to_have_text("2 of 2 ran, 1 failed")
        await expect(page.locator("#items-body tr")).to_have_count(2)
        await _no_horizontal_scroll(page)
        await _tab_to(page, "#act-delete")
        await page.keyboard.press("Enter")
        await expect(page.locator("#confirm")).to_be_visible()
        assert await page.evaluate("document.activeElement.id") == "confirm-no"
        await page.keyboard.press("Escape")
        await expect(page.locator("#confirm")).to_be_hidden()
        assert (await client.get(f"/bulk-jobs/{job['id']}")).status == 200  # not deleted
        assert page.problems == []  # type: ignore[attr-defined]


async def test_the_page_says_when_the_server_is_down_or_rate_limits(
    make_client: ClientFactory,
) -> None:
    client: TestClient = await make_client()
    expect = playwright_api.expect
    async with chromium_page(client) as page:
        await page.route("**/overview", lambda route: route.abort("connectionrefused"))
        await page.goto(str(client.make_url("/")))
        await expect(page.locator("#banner")).to_contain_text("not reachable")
        await expect(page.locator("#conn")).to_have_text("offline")
        await page.unroute("**/overview")
        problem = {
            "type": "about:blank",
            "title": "Too many requests",
            "status": 429,
            "detail": "Slow down.",
            "code": "rate_limited",
        }
        await page.route(
            "**/overview",
            lambda route: route.fulfill(
                status=429,
                headers={"Retry-After": "7", "Content-Type": "application/problem+json"},
                body=json.dumps(problem),
            ),
        )
        await page.reload()
        await expect(page.locator("#banner")).to_have_text(
            "Too many requests: Slow down. Retrying in 7 s."
        )
        await page.unroute("**/overview")
        await expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
        await expect(page.locator("#banner")).to_be_hidden()
        assert [e for e in page.problems if "uncaught" in e] == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_axe_finds_no_serious_accessibility_violations(
    make_client: ClientFactory, scheme: str
) -> None:
    axe_module = pytest.importorskip("axe_playwright_python.async_playwright")
    client: TestClient = await make_client()
    expect = playwright_api.expect
    job = await submit(client, "echo", [{"n": 1}, {"n": 2, "fail": "bad_n"}])
    await wait_terminal(client, job["id"])
    axe = axe_module.Axe()
    async with chromium_page(client, color_scheme=scheme) as page:
        await page.goto(str(client.make_url("/")))
        await expect(page.locator("#jobs-body tr")).to_have_count(1)
        found = []
        for view in ("list", "job"):
            if view == "job":
                await page.goto(str(client.make_url("/")) + f"#/jobs/{job['id']}")
                await expect(page.locator("#items-body tr")).to_have_count(2)
            results = await axe.run(page)
            found += [
                f"{view}: {v['id']} ({v['impact']}): {v['help']} "
                f"{[n['target'] for n in v['nodes']][:3]}"
                for v in results.response["violations"]
                if v["impact"] in ("serious", "critical")
            ]
        assert found == [], "\n".join(found)
