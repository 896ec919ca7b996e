"""CSV cells that a spreadsheet will not run as formulas (OWASP "CSV injection").

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with
`'`, which spreadsheets show as text. Used by the results download and by the CLI's
`--failures` file; both offer raw output as an explicit opt-out.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """The value with a `'` in front when, as text, it could start a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
