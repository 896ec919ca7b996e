"""What the CLI prints for people: job descriptions, tables and times.

Tables are rich tables: coloured on a terminal, plain when piped or when `NO_COLOR` is
set (rich honours both). Scripts use `--json`, whose shape never depends on this module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import jsonutil
from .models import RemoteJob
from .progress import Counts, bar_text, clock, eta_s, info_text, rate_since

STATUS_STYLES = {
    "pending": "grey50",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "succeeded": "green",
}


def console_for(stream: TextIO | None = None) -> Console:
    """A console on `stream` (stdout); not a terminal: no colour and no width limit."""
    stream = stream or sys.stdout
    tty = stream.isatty()
    return Console(file=stream, highlight=False, soft_wrap=not tty, width=None if tty else 10_000)


def print_human(renderable: Any, stream: TextIO | None = None) -> None:
    """Print for people; piped output has no trailing blanks (table cells are padded)."""
    console = console_for(stream)
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    for line in captured.get().splitlines():
        console.file.write(line.rstrip() + "\n")


def when(moment: datetime | None) -> str:
    """`2026-12-02 15:28:14Z`; `-` when unset."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """`just now`, `42s ago`, `5m ago`, `3h ago`, `2d ago`; `in 7d` for the future."""
    if moment is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if abs(seconds) < 5:
        return "just now"
    span = _span(abs(seconds))
    return f"{span} ago" if seconds > 0 else f"in {span}"


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def describe(job: RemoteJob, now: datetime | None = None) -> Text:
    """A job for people: status, the segmented bar with rate and ETA, counters, times."""
    counts = Counts.from_job(job)
    per_s = rate_since(job, now)
    out = Text()
    out.append(f"{job.id}  {job.operation}  ")
    out.append_text(status_text(job.status))
    out.append("\n  progress   ")
    out.append_text(bar_text(counts, 30))
    out.append(" " + info_text(counts, per_s if job.status == "running" else None))
    pending = job.total_items - counts.done
    out.append(
        f"\n  items      {job.total_items:,} total: {job.succeeded:,} succeeded,"
        f" {job.failed:,} failed, {job.cancelled:,} cancelled, {pending:,} pending"
    )
    if per_s is not None:
        out.append(f"\n  rate       {per_s:,.0f} items/s")
    elif job.status == "running":
        out.append("\n  rate       (measuring)")
    eta = eta_s(counts, per_s)
    if eta is not None:
        out.append(f"\n  eta        {clock(eta)}")
    for label, moment in _times(job):
        out.append(f"\n  {label:<10} {when(moment)} ({ago(moment, now)})")
    if job.error is not None:
        out.append(f"\n  error      {job.error.code}: {job.error.message}")
    return out


def _times(job: RemoteJob) -> list[tuple[str, datetime]]:
    moments = [
        ("created", job.created_at),
        ("started", job.started_at),
        ("completed", job.completed_at),
        ("expires", job.expires_at),
    ]
    return [(label, m) for label, m in moments if m is not None]


def progress_cell(job: RemoteJob) -> Text:
    """`62%` of the items done, or `72% ran` when some were cancelled (never `100%`)."""
    counts = Counts.from_job(job)
    if counts.cancelled:
        share = counts.ran / counts.total if counts.total else 0.0
        return Text(f"{share:.0%} ran", style=STATUS_STYLES["cancelled"])
    share = counts.done / counts.total if counts.total else 1.0
    return Text(f"{share:.0%}")


def jobs_table(jobs: Iterable[RemoteJob], now: datetime | None = None) -> Table:
    table = _table("ID", "OPERATION", "STATUS", "PROGRESS", "FAILED", "CREATED")
    for job in jobs:
        table.add_row(
            job.id,
            job.operation,
            status_text(job.status),
            progress_cell(job),
            Text(f"{job.failed:,}", style="red" if job.failed else ""),
            ago(job.created_at, now),
        )
    return table


def items_table(rows: Iterable[dict[str, Any]]) -> Table:
    table = _table("INDEX", "ID", "STATUS", "ATTEMPTS", "ERROR / RESULT")
    for row in rows:
        error = row.get("error") or {}
        detail = (
            f"{error.get('code')}: {error.get('message')}" if error else _short(row.get("result"))
        )
        table.add_row(
            str(row.get("index")),
            str(row.get("id") or "-"),
            status_text(str(row.get("status"))),
            str(row.get("attempts", "")),
            Text(detail, style="red" if error else ""),
        )
    return table


def operations_table(ops: Iterable[dict[str, Any]]) -> Table:
    table = _table("OPERATION", "BATCH", "CONCURRENCY", "TIMEOUT", "DESCRIPTION")
    for op in ops:
        limits = op.get("limits") or {}
        timeout = limits.get("timeout_s")
        table.add_row(
            str(op.get("name")),
            _or_dash(limits.get("batch_size")),
            _or_dash(limits.get("concurrency")),
            f"{timeout:g} s" if isinstance(timeout, int | float) else "-",
            str(op.get("description") or ""),
        )
    return table


def _table(*headers: str) -> Table:
    """Headers in bold, two spaces between columns; only free text folds."""
    table = Table(box=None, header_style="bold", padding=(0, 2, 0, 0), pad_edge=False)
    for header in headers:
        folds = header in ("ERROR / RESULT", "DESCRIPTION")
        table.add_column(
            header,
            no_wrap=not folds,
            overflow="fold" if folds else "ellipsis",
            min_width=len(header),
        )
    return table


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _short(value: Any, limit: int = 60) -> str:
    if value is None:
        return ""
    text = jsonutil.dumps_str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
