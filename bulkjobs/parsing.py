"""The one parser for numbers that arrive as text from outside (query parameters,
headers, tokens): ASCII digits only, of bounded length.

`str.isdigit()` is true for '²' and for Arabic-Indic digits, which `int()` then
refuses or reads, and `int()` refuses more than 4,300 digits: all used to be 500s.
"""

from __future__ import annotations

import re

_UINT = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_DIGITS = 18  # fits in a signed 64-bit integer


def ascii_uint(text: str | None, max_digits: int = MAX_DIGITS) -> int | None:
    """A non-negative integer written in at most `max_digits` ASCII digits, else None."""
    if text is None or not 0 < len(text) <= max_digits or not _UINT.fullmatch(text):
        return None
    return int(text)


def ascii_decimal(text: str | None, max_chars: int = 32) -> float | None:
    """A non-negative decimal such as `2` or `0.5` (ASCII, no exponent), else None."""
    if text is None or not 0 < len(text) <= max_chars or not _DECIMAL.fullmatch(text):
        return None
    return float(text)
