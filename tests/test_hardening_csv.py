"""Issue 13 item 9: CSV cells that start a formula are neutralised (OWASP), in result
downloads and in the CLI's `--failures` file; raw output is an explicit option."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.csvcells import safe_cell
from tests.serverproc import ServerProcess
from tests.support import submit, wait_terminal
from tests.test_cli_client import bulkjobs, server  # noqa: F401  (the fixture)

HOSTILE = ["=1+1", "+1", "-1+1", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://x")']


@pytest.mark.parametrize("cell", HOSTILE)
def test_formula_starts_get_a_quote(cell: str) -> None:
    assert safe_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["plain", "1", "", "a=b", " =x", "'=x", 5, None])
def test_other_cells_are_unchanged(cell: object) -> None:
    assert safe_cell(cell) == cell


async def _csv(client: TestClient, job_id: str, **params: str) -> list[dict[str, str]]:
    resp = await client.get(f"/bulk-jobs/{job_id}/results", params={"format": "csv", **params})
    text = await resp.text()
    assert resp.status == 200, text
    return list(csv.DictReader(io.StringIO(text, newline="")))


async def test_results_csv_is_neutralised_unless_raw(client: TestClient) -> None:
    items = [{"n": i, "id": cell, "fail": cell} for i, cell in enumerate(HOSTILE)]
    job = await submit(client, "echo", [*items, {"n": 99, "id": "ok"}])
    await wait_terminal(client, job["id"])
    rows = await _csv(client, job["id"])
    for row, cell in zip(rows, HOSTILE, strict=False):
        assert row["id"] == "'" + cell
        assert row["error_code"] == "'" + cell
    assert rows[-1]["id"] == "ok"
    raw = await _csv(client, job["id"], csv_raw="true")
    assert [r["id"] for r in raw[:-1]] == HOSTILE
    assert [r["error_code"] for r in raw[:-1]] == HOSTILE
    resp = await client.get(f"/bulk-jobs/{job['id']}/results?format=csv&csv_raw=maybe")
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_request"


@pytest.mark.slow
async def test_cli_failures_file_is_neutralised_unless_raw(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    source = tmp_path / "items.csv"
    source.write_text('id,n,fail\n"=2+3",1,"@bad"\nok,2,\n')
    for flags, expect in (([], ("'=2+3", "'@bad")), (["--csv-raw"], ("=2+3", "@bad"))):
        out = tmp_path / f"failures{len(flags)}.csv"
        run = await bulkjobs(
            server, "submit", "echo", str(source), "--wait", "--failures", str(out), *flags
        )
        assert run.code == 2, run.err
        with out.open(newline="") as f:
            [row] = list(csv.DictReader(f))
        assert (row["id"], row["fail"]) == expect
