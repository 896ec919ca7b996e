"""Job progress for a shell: one live, width-fitting, segmented bar on a terminal (rich),
plain periodic lines anywhere else.

Everything is drawn from the counters (succeeded, failed, cancelled), never from the
API's `progress` field: a job cancelled after 248 of 20,000 items must not look done.
"""

from __future__ import annotations

import collections
import os
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import TextIO

import attrs
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from .models import Event, RemoteJob

#: (counter, bar character, style): distinct characters too, for NO_COLOR terminals
SEGMENTS = (
    ("succeeded", "█", "green"),
    ("failed", "▓", "red"),
    ("cancelled", "░", "yellow"),
)
REST = ("·", "grey50")
MAX_BAR = 40
MIN_BAR = 8
RATE_WINDOW_S = 10.0
PLAIN_INTERVAL_ENV = "BULKJOBS_PROGRESS_INTERVAL_S"


@attrs.frozen
class Counts:
    """A job's counters at one moment."""

    status: str
    total: int
    succeeded: int
    failed: int
    cancelled: int

    @classmethod
    def from_job(cls, job: RemoteJob) -> Counts:
        return cls(job.status, job.total_items, job.succeeded, job.failed, job.cancelled)

    @classmethod
    def from_event(cls, event: Event, before: Counts) -> Counts:
        """The counters an event carries; what it leaves out stays as `before`."""
        source = (event.data.get("job") if event.type == "snapshot" else event.data) or {}

        def pick(name: str, default: int) -> int:
            value = source.get(name)
            return int(value) if isinstance(value, int) else default

        return cls(
            status=str(source.get("status") or before.status),
            total=pick("total_items", before.total),
            succeeded=pick("succeeded", before.succeeded),
            failed=pick("failed", before.failed),
            cancelled=pick("cancelled", before.cancelled),
        )

    @property
    def ran(self) -> int:
        """Items a handler worked to an outcome (succeeded or failed)."""
        return self.succeeded + self.failed

    @property
    def done(self) -> int:
        return self.ran + self.cancelled


class RateMeter:
    """Items/s over the last few seconds of samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, ran: int) -> None:
        self._samples.append((now, ran))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    @property
    def per_s(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 - t0 >= 0.5 else None


def rate_since(job: RemoteJob, now: datetime | None = None) -> float | None:
    """Average items/s since the job started (for one-off views such as `status`)."""
    if job.started_at is None:
        return None
    end = job.completed_at or now or datetime.now(UTC)
    elapsed_s = (end - job.started_at).total_seconds()
    return (job.succeeded + job.failed) / elapsed_s if elapsed_s >= 0.5 else None


def clock(seconds: float) -> str:
    """`0:07`, `12:30`, `1:02:03`."""
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def eta_s(counts: Counts, per_s: float | None) -> float | None:
    if not per_s or per_s <= 0 or counts.status not in ("pending", "running"):
        return None
    return (counts.total - counts.done) / per_s


def describe_counts(counts: Counts) -> str:
    """`12,400 of 20,000 done (62%)`, or `248 of 20,000 ran, 19,752 cancelled`."""
    if counts.cancelled:
        return f"{counts.ran:,} of {counts.total:,} ran, {counts.cancelled:,} cancelled"
    share = counts.done / counts.total if counts.total else 1.0
    return f"{counts.done:,} of {counts.total:,} done ({share:.0%})"


def info_text(counts: Counts, per_s: float | None) -> str:
    """The words beside the bar: counts, failures, rate and ETA."""
    return " · ".join(info_parts(counts, per_s))


def info_parts(counts: Counts, per_s: float | None) -> list[str]:
    """Counts, failures, rate, ETA: most important first."""
    parts = [describe_counts(counts)]
    if counts.failed:
        parts.append(f"{counts.failed:,} failed")
    if per_s is not None and counts.status in ("pending", "running"):
        parts.append(f"{per_s:,.0f} items/s")
    eta = eta_s(counts, per_s)
    if eta is not None:
        parts.append(f"ETA {clock(eta)}")
    return parts


def bar_cells(counts: Counts, width: int) -> list[tuple[str, int]]:
    """Cells per segment (succeeded, failed, cancelled, rest); a non-zero count shows."""
    total = max(counts.total, 1)
    values = [counts.succeeded, counts.failed, counts.cancelled]
    cells = [round(width * v / total) for v in values]
    cells = [max(c, 1) if v else 0 for c, v in zip(cells, values, strict=True)]
    while sum(cells) > width:  # rounding up small segments may overshoot: take from the largest
        cells[cells.index(max(cells))] -= 1
    if counts.done >= counts.total and sum(cells) < width:  # finished: no gap at the end
        cells[max(range(3), key=lambda i: values[i])] += width - sum(cells)
    return [*zip((s[0] for s in SEGMENTS), cells, strict=True), ("rest", width - sum(cells))]


def bar_text(counts: Counts, width: int) -> Text:
    """The segmented bar as styled text of exactly `width` cells."""
    text = Text()
    styles = {name: (char, style) for name, char, style in SEGMENTS} | {"rest": REST}
    for name, cells in bar_cells(counts, width):
        char, style = styles[name]
        text.append(char * cells, style=style)
    return text


@attrs.define
class BarLine:
    """One line that fits whatever width the console has (a rich renderable)."""

    counts: Counts
    per_s: float | None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield fit_line(self.counts, self.per_s, options.max_width)


def fit_line(counts: Counts, per_s: float | None, width: int) -> Text:
    """Bar and words in `width` cells: the bar shrinks first, then the least important
    words go (ETA, rate, failures); the line never wraps."""
    parts = info_parts(counts, per_s)
    for n in range(len(parts), 0, -1):
        info = " · ".join(parts[:n])
        bar_w = min(MAX_BAR, width - len(info) - 1)
        if bar_w >= MIN_BAR:
            return bar_text(counts, bar_w) + Text(" " + info)
    line = Text(parts[0], no_wrap=True, overflow="ellipsis")
    line.truncate(width, overflow="ellipsis")
    return line


class ProgressView:
    """Shows a job's progress on `stream`: a live bar on a terminal, else plain lines."""

    def __init__(self, stream: TextIO, job_id: str, *, interval_s: float | None = None) -> None:
        self.job_id = job_id
        self.stream = stream
        self.console = Console(file=stream, highlight=False)
        self.meter = RateMeter()
        self.live: Live | None = None
        self.interval_s = interval_s if interval_s is not None else _plain_interval_s()
        self._printed_at = time.monotonic()
        self._drawn_at = 0.0
        self._counts: Counts | None = None

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def __enter__(self) -> ProgressView:
        if self.is_terminal:
            self.live = Live(
                console=self.console,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            if self._counts is not None:
                self.live.update(BarLine(self._counts, self.meter.per_s), refresh=True)
            self.live.stop()

    def update(self, counts: Counts, *, force: bool = False) -> None:
        """New counters; redrawn at most ten times a second (plain: every interval)."""
        now = time.monotonic()
        self.meter.add(now, counts.ran)
        self._counts = counts
        if self.live is not None:
            if force or now - self._drawn_at >= 0.1:
                self._drawn_at = now
                self.live.update(BarLine(counts, self.meter.per_s), refresh=True)
        elif now - self._printed_at >= self.interval_s:  # plain lines: time only
            self._printed_at = now
            print(self.plain_line(counts), file=self.stream, flush=True)

    def plain_line(self, counts: Counts) -> str:
        return f"{self.job_id} {counts.status}: {info_text(counts, self.meter.per_s)}"


def _plain_interval_s() -> float:
    raw = os.environ.get(PLAIN_INTERVAL_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else 10.0
    except ValueError:
        return 10.0
