"""A one-line live progress bar for a terminal: percent, counts, items/s, ETA, failures."""

from __future__ import annotations

import time
from typing import TextIO

WIDTH = 24


class ProgressBar:
    """Redraws one line on `stream` (a terminal) at most every `interval_s`."""

    def __init__(self, stream: TextIO, interval_s: float = 0.1) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self._started: tuple[float, int] | None = None
        self._drawn_at = 0.0

    def update(self, processed: int, total: int, failed: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started = (now, processed)
        if not force and now - self._drawn_at < self.interval_s:
            return
        self._drawn_at = now
        self.stream.write("\r" + self.render(processed, total, failed, now) + "\x1b[K")
        self.stream.flush()

    def render(self, processed: int, total: int, failed: int, now: float) -> str:
        share = processed / total if total else 1.0
        filled = int(share * WIDTH)
        bar = "#" * filled + "-" * (WIDTH - filled)
        rate = self._rate(processed, now)
        eta = f"ETA {_clock((total - processed) / rate)}" if rate > 0 else "ETA --:--"
        return (
            f"[{bar}] {share:6.1%} {processed:,}/{total:,}  {rate:,.0f} items/s  {eta}"
            f"  failed {failed:,}"
        )

    def _rate(self, processed: int, now: float) -> float:
        assert self._started is not None
        start, base = self._started
        elapsed = now - start
        return (processed - base) / elapsed if elapsed > 0.2 else 0.0

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )
