"""Item files for `bulkjobs submit`: NDJSON, a JSON array, or CSV (header row = item
fields, cells converted by the operation's item schema), read one item at a time."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import jsonutil

FORMATS = ("ndjson", "json", "csv")
_SUFFIXES = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "json", ".csv": "csv"}
#: CSV columns starting with this are notes (e.g. a failures file's `_error_code`).
NOTE_PREFIX = "_"


class InputError(ValueError):
    """The item file cannot be read as the format it claims to be."""


def detect_format(path: Path) -> str:
    """From the file name, else from its first non-blank character."""
    if path.suffix.lower() in _SUFFIXES:
        return _SUFFIXES[path.suffix.lower()]
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return {b"[": "json", b"{": "ndjson"}.get(head[:1], "csv")


def read_items(path: Path, fmt: str, schema: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """The items of the file, in order."""
    if fmt == "ndjson":
        return _ndjson(path)
    if fmt == "json":
        return _json_array(path)
    return _csv(path, (schema or {}).get("properties") or {})


def _ndjson(path: Path) -> Iterator[Any]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield jsonutil.loads(line)
            except jsonutil.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc})") from None


def _json_array(path: Path) -> Iterator[Any]:
    try:
        data = jsonutil.loads(path.read_bytes())
    except jsonutil.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of items")
    yield from data


def _csv(path: Path, props: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            yield {
                name: convert(cell, props.get(name) or {})
                for name, cell in row.items()
                if name and not name.startswith(NOTE_PREFIX) and cell not in ("", None)
            }


def _types(schema: Mapping[str, Any]) -> set[str]:
    found = {schema["type"]} if isinstance(schema.get("type"), str) else set()
    for sub in schema.get("anyOf") or []:
        found |= _types(sub)
    if "enum" in schema:
        found |= {"string" if isinstance(v, str) else "number" for v in schema["enum"]}
    return found


def convert(cell: str, schema: Mapping[str, Any]) -> Any:
    """A CSV cell as the type the schema wants; left a string when it does not fit."""
    types = _types(schema)
    if not types or "string" in types:
        return cell
    try:
        if "integer" in types and cell.lstrip("-").isdigit():
            return int(cell)
        if "number" in types:
            return float(cell)
        if "boolean" in types and cell.lower() in ("true", "false", "1", "0", "yes", "no"):
            return cell.lower() in ("true", "1", "yes")
        if types & {"array", "object"}:
            return jsonutil.loads(cell)
    except ValueError:
        pass
    return cell


def failure_rows(
    items: Iterator[Any], failures: Mapping[int, dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """The failed items as flat rows plus `_index`, `_error_code`, `_error_message`."""
    for index, item in enumerate(items):
        error = failures.get(index)
        if error is None:
            continue
        fields = item if isinstance(item, dict) else {"value": item}
        row = {k: _cell(v) for k, v in fields.items()}
        row.update(
            _index=index, _error_code=error.get("code", ""), _error_message=error.get("message")
        )
        yield row


def _cell(value: Any) -> Any:
    return jsonutil.dumps_str(value) if isinstance(value, dict | list) else value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows with the union of their keys as the header (first-seen order)."""
    header = list(dict.fromkeys(k for row in rows for k in row))
    notes = [k for k in header if k.startswith(NOTE_PREFIX)]
    header = [k for k in header if not k.startswith(NOTE_PREFIX)] + notes
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
