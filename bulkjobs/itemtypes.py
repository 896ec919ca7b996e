"""Item types: strict structuring of JSON items into attrs classes, errors as JSON
pointers, and a JSON Schema of each type for GET /operations."""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
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

    def build(self, payload: dict[str, Any]) -> Any:
        """Build an item that `structure` already accepted with this same type (at
        intake): only what structuring would change about it is redone.

        For a class whose fields are all JSON scalars as they are (str, int, bool,
        None, Any, Literals and unions of them; no float, which turns ints into
        floats, no nested classes or containers) that is calling the class: its own
        validators run, the per-field type checks are not repeated. Any other class
        goes through `structure` again."""
        return self._build(payload)

    @functools.cached_property
    def _build(self) -> Callable[[dict[str, Any]], Any]:
        try:
            hints = typing.get_type_hints(self.cls)
        except Exception:  # an annotation that cannot be resolved: stay on the safe path
            return self.structure
        fields = attrs.fields(self.cls)
        if all(f.init and _passes_as_is(hints.get(f.name, object)) for f in fields):
            cls = self.cls
            return lambda payload: cls(**payload)
        return self.structure

    def errors(self, payload: Any) -> list[tuple[Pointer, str]]:
        """Every problem with one item, as (relative pointer, detail) pairs."""
        if not isinstance(payload, dict):
            return [((), f"item must be an object, got {_json_kind(payload)}")]
        try:
            _DETAILED.structure(payload, self.cls)
        except Exception as exc:
            return list(_walk(exc, ()))
        return []


_AS_IS = (str, int, bool, type(None))


def _passes_as_is(tp: Any) -> bool:
    """Whether strict structuring hands a valid JSON value of this type on unchanged."""
    if tp is Any or tp in _AS_IS:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return all(isinstance(v, _AS_IS) and not isinstance(v, enum.Enum) for v in get_args(tp))
    if origin is typing.Union or origin is types.UnionType:
        return all(_passes_as_is(arg) for arg in get_args(tp))
    return False


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


_ATTRS_MESSAGE = re.compile(r"^(?:Length of )?'(\w+)' ")


def _attr_path(exc: BaseException, path: Pointer) -> Pointer:
    # attrs validators raise ValueError(msg, attribute, validator, value), or for
    # number bounds and lengths a message naming the quoted attribute first.
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


Schema = dict[str, Any]


def item_schema(cls: type[Any], known: Mapping[Any, Schema] | None = None) -> Schema:
    """A JSON Schema (2020-12) for an attrs class, its fields' validators included;
    `known` maps types to ready-made schemas (checked first)."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        schema = type_schema(hints.get(field.name, Any), known)
        props[field.name] = constrain(schema, field.validator)
        if field.default is attrs.NOTHING:
            required.append(field.name)
    out: Schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


_SIMPLE: dict[Any, Schema] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


def type_schema(tp: Any, known: Mapping[Any, Schema] | None = None) -> Schema:
    """The JSON Schema of a type hint; `known` maps types to ready-made schemas."""
    known = known or {}
    if tp in known:
        return dict(known[tp])
    if tp in _SIMPLE:
        return dict(_SIMPLE[tp])
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return enum_schema(list(args))
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [type_schema(a, known) for a in args]}
    if origin in (list, tuple, typing.Sequence):
        return {"type": "array", "items": type_schema(args[0], known) if args else {}}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return enum_schema([m.value for m in tp])
    if isinstance(tp, type) and attrs.has(tp):
        return item_schema(tp, known)
    return {}


def enum_schema(values: list[Any]) -> Schema:
    """`enum`, with `type: string` when every value is a string."""
    if values and all(isinstance(v, str) for v in values):
        return {"type": "string", "enum": values}
    return {"enum": values}


# -- attrs validators as JSON Schema keywords -------------------------------------

_LENGTH = {"string": "Length", "array": "Items", "object": "Properties"}
_BOUNDS = {">=": "minimum", ">": "exclusiveMinimum", "<=": "maximum", "<": "exclusiveMaximum"}
_TIGHTEST: dict[str, Callable[[Any, Any], Any]] = {
    "minimum": max,
    "exclusiveMinimum": max,
    "maximum": min,
    "exclusiveMaximum": min,
    **{f"min{suffix}": max for suffix in _LENGTH.values()},
    **{f"max{suffix}": min for suffix in _LENGTH.values()},
}


def constrain(schema: Schema, validator: Any) -> Schema:
    """`schema` narrowed by what an attrs validator checks (None: unchanged)."""
    return merge(schema, validator_schema(validator, _kinds(schema)))


def merge(schema: Schema, extra: Schema) -> Schema:
    """`schema` narrowed by `extra`: the tighter bound wins, enums intersect, anything
    else that clashes goes under `allOf`."""
    out = dict(schema)
    for key, value in extra.items():
        if key not in out:
            out[key] = value
        elif out[key] == value:
            continue
        elif key in _TIGHTEST:
            out[key] = _TIGHTEST[key](out[key], value)
        elif key == "enum":
            out[key] = [v for v in out[key] if v in value]
        else:
            out["allOf"] = [*out.get("allOf", []), {key: value}]
    return out


def _kinds(schema: Schema) -> set[str]:
    """The JSON types a schema admits (empty when it does not say)."""
    kinds = {schema["type"]} if isinstance(schema.get("type"), str) else set()
    for sub in schema.get("anyOf", ()):
        kinds |= _kinds(sub)
    return kinds


def validator_schema(validator: Any, kinds: set[str]) -> Schema:
    """Keywords for an attrs validator (`and_`, lists and `optional` included) on a
    field of the given JSON types; validators JSON Schema cannot express add nothing."""
    rule = _RULES.get(type(validator).__name__)
    return rule(validator, kinds) if rule is not None else {}


def _and(v: Any, kinds: set[str]) -> Schema:
    out: Schema = {}
    for sub in v._validators:
        out = merge(out, validator_schema(sub, kinds))
    return out


def _optional(v: Any, kinds: set[str]) -> Schema:
    out = validator_schema(v.validator, kinds - {"null"})
    if "enum" in out:  # the only keyword here that would also refuse null
        out["enum"] = [*out["enum"], None]
    return out


def _length(bound: str, limit: int, kinds: set[str]) -> Schema:
    # len() works on strings, lists and dicts alike: say it for each the field admits
    suffixes = [s for k, s in _LENGTH.items() if k in kinds] or list(_LENGTH.values())
    return {f"{bound}{s}": limit for s in suffixes}


def _number(v: Any, _kinds: set[str]) -> Schema:
    bound = v.bound
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        return {}
    return {_BOUNDS[v.compare_op]: bound}


def _in(v: Any, _kinds: set[str]) -> Schema:
    options = v.options
    if isinstance(options, range) and options.step == 1 and len(options):
        return {"minimum": options.start, "maximum": options.stop - 1}
    if isinstance(options, str | bytes | range):  # substring tests, stepped ranges
        return {}
    values = [o.value if isinstance(o, enum.Enum) else o for o in options]
    if isinstance(options, set | frozenset):
        values.sort(key=repr)
    if not all(v is None or isinstance(v, str | int | float | bool) for v in values):
        return {}
    return {"enum": values}


_ANCHORS = {"fullmatch": "^(?:{})$", "match": "^(?:{})", "search": "{}"}


def _matches(v: Any, _kinds: set[str]) -> Schema:
    compiled, func = v.pattern, getattr(v.match_func, "__name__", "")
    if not isinstance(compiled.pattern, str) or compiled.flags & ~re.UNICODE:
        return {}  # flags have no portable spelling in a JSON Schema pattern
    return {"pattern": _ANCHORS[func].format(compiled.pattern)} if func in _ANCHORS else {}


# keyed by class name: attrs keeps its validator classes private
_RULES: dict[str, Callable[[Any, set[str]], Schema]] = {
    "_AndValidator": _and,
    "_OptionalValidator": _optional,
    "_MaxLengthValidator": lambda v, kinds: _length("max", v.max_length, kinds),
    "_MinLengthValidator": lambda v, kinds: _length("min", v.min_length, kinds),
    "_NumberValidator": _number,
    "_InValidator": _in,
    "_MatchesReValidator": _matches,
}
