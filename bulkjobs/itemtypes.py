"""Item types: strict structuring of JSON items into attrs classes, errors as JSON
pointers, and a JSON Schema of each type for GET /operations."""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

Pointer = tuple[str | int, ...]


def _strict(kind: type[Any], name: str) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got boolean")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {_json_kind(value)}")
        return value

    return hook


def _json_kind(value: Any) -> str:
    kinds = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array"}
    if value is None:
        return "null"
    return kinds.get(type(value), "object")


def _make_converter(detailed: bool) -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=detailed, forbid_extra_keys=True)
    for kind, name in ((str, "string"), (int, "integer"), (float, "number"), (bool, "boolean")):
        conv.register_structure_hook(kind, _strict(kind, name))
    return conv


_FAST = _make_converter(detailed=False)
_DETAILED = _make_converter(detailed=True)


class ItemType:
    """Validates raw JSON items against one attrs class."""

    def __init__(self, cls: type[Any]) -> None:
        if not attrs.has(cls):
            raise TypeError(f"item_type must be an attrs class, got {cls!r}")
        self.cls = cls

    def structure(self, payload: Any) -> Any:
        """Build the item; raises on any mismatch (fast path, no detail)."""
        if not isinstance(payload, dict):
            raise TypeError("item must be an object")
        return _FAST.structure(payload, self.cls)

    def is_valid(self, payload: Any) -> bool:
        try:
            self.structure(payload)
        except Exception:
            return False
        return True

    def errors(self, payload: Any) -> list[tuple[Pointer, str]]:
        """Every problem with one item, as (relative pointer, detail) pairs."""
        if not isinstance(payload, dict):
            return [((), f"item must be an object, got {_json_kind(payload)}")]
        try:
            _DETAILED.structure(payload, self.cls)
        except Exception as exc:
            return list(_walk(exc, ()))
        return []


def _walk(exc: BaseException, path: Pointer) -> Iterator[tuple[Pointer, str]]:
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield (*path, key), "unknown field"
    elif isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _walk(sub, (*path, _step(note)))
        for sub in without:
            yield from _walk(sub, path)
    elif isinstance(exc, KeyError):
        yield path, "required field missing"
    else:
        yield _attr_path(exc, path), _message(exc)


def _step(note: Any) -> str | int:
    name = getattr(note, "name", None)
    return str(name) if name is not None else int(getattr(note, "index", 0))


_ATTRS_MESSAGE = re.compile(r"^'(\w+)' ")


def _attr_path(exc: BaseException, path: Pointer) -> Pointer:
    # attrs validators raise ValueError(msg, attribute, validator, value), or for
    # number bounds a message starting with the quoted attribute name.
    if len(exc.args) >= 2 and isinstance(exc.args[1], attrs.Attribute):
        return (*path, exc.args[1].name)
    match = _ATTRS_MESSAGE.match(str(exc.args[0])) if exc.args else None
    return (*path, match.group(1)) if match else path


def _message(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else exc.__class__.__name__
    if text.startswith("typing.Literal") or " not in literal " in text:
        allowed = text.split(" not in literal ", 1)[-1]
        return f"must be one of {allowed.removeprefix('typing.Literal')}"
    return text


def pointer(*parts: str | int) -> str:
    """RFC 6901 JSON pointer from path parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def item_schema(cls: type[Any]) -> dict[str, Any]:
    """A JSON Schema (2020-12) for an attrs item class."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        props[field.name] = _type_schema(hints.get(field.name, Any))
        if field.default is attrs.NOTHING:
            required.append(field.name)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


def _type_schema(tp: Any) -> dict[str, Any]:
    if tp in _SIMPLE:
        return dict(_SIMPLE[tp])
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a) for a in args]}
    if origin in (list, tuple, typing.Sequence):
        return {"type": "array", "items": _type_schema(args[0]) if args else {}}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if isinstance(tp, type) and attrs.has(tp):
        return item_schema(tp)
    return {}
