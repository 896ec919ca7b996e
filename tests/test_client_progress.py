"""The progress line's arithmetic: it fits any width, its segments follow the counters,
and a cancelled job never reads as done."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bulkjobs.client.progress import BarLine, Counts, bar_cells, describe_counts, fit_line

RUNNING = Counts("running", 20_000, 12_000, 400, 0)
CANCELLED = Counts("cancelled", 20_000, 240, 8, 19_752)


def test_a_cancelled_job_says_how_many_ran() -> None:
    assert describe_counts(CANCELLED) == "248 of 20,000 ran, 19,752 cancelled"
    assert describe_counts(RUNNING) == "12,400 of 20,000 done (62%)"
    cells = dict(bar_cells(CANCELLED, 40))
    assert cells["cancelled"] >= 38 and cells["succeeded"] >= 1 and cells["failed"] == 1
    assert cells["rest"] == 0 and sum(cells.values()) == 40


@pytest.mark.parametrize("width", [10, 24, 40, 57, 80, 132, 200])
@pytest.mark.parametrize("per_s", [None, 1234.5])
def test_the_line_fits_every_width(width: int, per_s: float | None) -> None:
    for counts in (RUNNING, CANCELLED, Counts("pending", 7, 0, 0, 0)):
        line = fit_line(counts, per_s, width)
        assert line.cell_len <= width, (width, line.plain)
        assert "\n" not in line.plain


def test_the_least_important_words_go_first() -> None:
    full = fit_line(RUNNING, 1234.5, 120).plain
    assert "12,400 of 20,000 done (62%)" in full and "400 failed" in full
    assert "1,234 items/s" in full and "ETA 0:06" in full
    narrow = fit_line(RUNNING, 1234.5, 60).plain
    assert "ETA" not in narrow and "400 failed" in narrow


def test_small_counts_stay_visible_and_segments_add_up() -> None:
    counts = Counts("running", 1_000_000, 10, 1, 0)
    cells = dict(bar_cells(counts, 30))
    assert (cells["succeeded"], cells["failed"], cells["cancelled"]) == (1, 1, 0)
    assert sum(cells.values()) == 30


def test_rich_renders_one_line_at_the_console_width() -> None:
    out = io.StringIO()
    Console(width=80, file=out, color_system=None).print(BarLine(RUNNING, 1000.0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 80
