"""How the SQLite backend stores times: integer milliseconds since the epoch, UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def to_ms(value: datetime) -> int: ...
@overload
def to_ms(value: None) -> None: ...
def to_ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


@overload
def from_ms(value: int) -> datetime: ...
@overload
def from_ms(value: None) -> None: ...
def from_ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)
