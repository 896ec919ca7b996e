"""`bulkjobs backup`: an online copy of the SQLite database, safe while `serve` writes to it.

SQLite's backup API copies the file in steps of `pages_per_step` pages with a pause in
between, so the serving process keeps its writer (WAL: a reader never blocks the
writer). A write between two steps restarts the copy; after `max_restarts` of them the
rest is copied in one step, i.e. one read transaction, a consistent snapshot that in WAL
mode still does not block the writer. The server's ownership lock (`<db>-lock`) is not
taken: the backup is a reader. The copy is written next to DEST, checked with
`PRAGMA integrity_check`, and only then renamed over DEST.

This runs in its own process (`bulkjobs backup`), so its blocking calls never touch a
server's event loop; code inside a loop would call `run_backup` through
`asyncio.to_thread`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import attrs

from . import is_postgres_url

PAGES_PER_STEP = 1024  # 4 MiB with SQLite's default 4 KiB pages
PAUSE_S = 0.01
MAX_RESTARTS = 3


class BackupError(Exception):
    """The backup could not be made (the message says why, for the command line)."""


class _Restarted(Exception):
    """Raised from the progress callback: too many restarts, copy the rest in one step."""


@attrs.frozen
class BackupReport:
    """What was written."""

    source: str
    dest: str
    size_bytes: int
    pages: int
    jobs: int
    items: int
    integrity: str
    elapsed_s: float

    def describe(self) -> str:
        """One line for the command line."""
        return (
            f"backup of {self.source} written to {self.dest}: {self.size_bytes} bytes"
            f" ({self.pages} pages), {self.jobs} jobs, {self.items} items,"
            f" integrity_check {self.integrity}, {self.elapsed_s:.2f} s"
        )


def run_backup(
    source: str,
    dest: str,
    *,
    pages_per_step: int = PAGES_PER_STEP,
    pause_s: float = PAUSE_S,
    max_restarts: int = MAX_RESTARTS,
) -> BackupReport:
    """Copy the SQLite database `source` to `dest` (a file, or a folder to put a
    timestamped file in) and verify the copy; raises BackupError."""
    started = time.monotonic()
    src = _source_path(source)
    target = _target_path(dest, src)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        pages = _copy(src, partial, pages_per_step, pause_s, max_restarts)
        integrity, jobs, items = _verify(partial)
        _fsync(partial)
        partial.replace(target)
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {src} failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return BackupReport(
        source=str(src),
        dest=str(target),
        size_bytes=target.stat().st_size,
        pages=pages,
        jobs=jobs,
        items=items,
        integrity=integrity,
        elapsed_s=time.monotonic() - started,
    )


def _source_path(source: str) -> Path:
    if is_postgres_url(source):
        raise BackupError(
            "backup copies a SQLite database; for PostgreSQL use pg_dump"
            " (e.g. pg_dump --format=custom --file=bulkjobs.dump DBNAME)"
        )
    src = Path(source)
    if not src.is_file():
        raise BackupError(f"no SQLite database at {source}")
    return src.resolve()


def _target_path(dest: str, src: Path) -> Path:
    target = Path(dest)
    if target.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = target / f"{src.stem}-{stamp}{src.suffix or '.sqlite3'}"
    target = target.resolve()
    if target == src:
        raise BackupError("DEST is the database itself")
    if not target.parent.is_dir():
        raise BackupError(f"no folder {target.parent} to write {target.name} in")
    return target


def _copy(src: Path, partial: Path, pages_per_step: int, pause_s: float, restarts: int) -> int:
    """The backup proper; returns the number of pages copied."""
    seen = {"restarts": 0, "remaining": -1}

    def progress(_status: int, remaining: int, _total: int) -> None:
        if seen["remaining"] != -1 and remaining >= seen["remaining"]:
            seen["restarts"] += 1  # the source changed: SQLite began again
            if seen["restarts"] > restarts:
                raise _Restarted
        seen["remaining"] = remaining
        if remaining:
            time.sleep(pause_s)  # between steps the source is free: the server writes on

    # mode=rw: never create an empty database where the source should be
    with (
        closing(sqlite3.connect(src.as_uri() + "?mode=rw", uri=True, timeout=30)) as source,
        closing(sqlite3.connect(partial)) as copy,
    ):
        try:
            source.backup(copy, pages=pages_per_step, progress=progress)
        except _Restarted:
            source.backup(copy, pages=-1)  # one read transaction: a consistent snapshot
        (pages,) = copy.execute("PRAGMA page_count").fetchone()
    return int(pages)


def _verify(path: Path) -> tuple[str, int, int]:
    with closing(sqlite3.connect(path)) as copy:
        (integrity,) = copy.execute("PRAGMA integrity_check").fetchone()
        if integrity != "ok":
            raise BackupError(f"the copy failed PRAGMA integrity_check: {integrity}")
        try:
            (jobs,) = copy.execute("SELECT count(*) FROM jobs").fetchone()
            (items,) = copy.execute("SELECT count(*) FROM items").fetchone()
        except sqlite3.OperationalError as exc:
            raise BackupError(f"the copy has no bulkjobs tables ({exc})") from exc
    return str(integrity), int(jobs), int(items)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
