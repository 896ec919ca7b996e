"""JSON Schemas of the wire representations, derived from the attrs models they show.

A `Wire` says how one representation function (e.g. `job_json`) shows an attrs class:
which fields and properties, under which names, which it leaves out when None and what
it adds. `wire_schema` turns that into a JSON Schema with the type machinery of
`itemtypes`, so the OpenAPI document follows the models instead of restating them."""

from __future__ import annotations

import functools
import operator
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ..itemtypes import Schema, constrain, merge, type_schema

__all__ = [
    "STRING",
    "Schema",
    "Wire",
    "closed",
    "nullable",
    "open_object",
    "page",
    "ref",
    "wire_schema",
]
from ..models import ItemError, JobError

STRING: Schema = {"type": "string"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}


def ref(name: str) -> Schema:
    """A reference to a component schema of the document."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def closed(properties: Schema, *required: str) -> Schema:
    """An object with exactly these properties."""
    out = {"type": "object", "required": list(required), "properties": properties}
    return {**out, "additionalProperties": False}


def page(item: Schema, **extra: Schema) -> Schema:
    """A collection page, `{"data": [...], "links": {"next": url or null}}`, plus `extra`."""
    links = {"type": "object", "required": ["next"], "properties": {"next": nullable(STRING)}}
    data = {"type": "array", "items": item}
    return closed({**extra, "data": data, "links": links}, *extra, "data", "links")


def open_object(properties: Schema) -> Schema:
    """An object that has all these properties, and maybe more."""
    return {"type": "object", "required": list(properties), "properties": properties}


#: How the representation functions write values that are not plain JSON.
WIRE_TYPES: dict[Any, Schema] = {
    datetime: TIMESTAMP,  # models.format_ts
    JobError: ref("OutcomeError"),
    ItemError: ref("OutcomeError"),
}


@attrs.frozen
class Wire:
    """How one representation function shows an attrs class on the wire."""

    cls: type[Any]
    #: attributes or properties of `cls` the function writes, in its order
    fields: tuple[str, ...]
    #: model name -> wire name
    rename: Mapping[str, str] = attrs.field(factory=dict)
    #: model names the function leaves out when their value is None
    omit_none: frozenset[str] = frozenset()
    #: wire name -> type hint or schema of what the function adds
    added: Mapping[str, Any] = attrs.field(factory=dict)
    #: wire names of `added` that are sometimes absent
    optional: frozenset[str] = frozenset()
    #: wire name -> keywords that narrow the derived schema
    refine: Mapping[str, Schema] = attrs.field(factory=dict)
    description: str = ""

    def without(self, *names: str) -> Wire:
        """The same representation less some model fields."""
        return attrs.evolve(self, fields=tuple(f for f in self.fields if f not in names))


def wire_schema(wire: Wire, known: Mapping[Any, Schema] = WIRE_TYPES) -> Schema:
    """The JSON Schema of what a `Wire`'s function returns."""
    props: dict[str, Schema] = {}
    required: list[str] = []
    for name in wire.fields:
        key = wire.rename.get(name, name)
        omitted = name in wire.omit_none
        field = attrs.fields_dict(wire.cls).get(name)
        base = type_schema(_hint(wire.cls, name, omitted), known)
        props[key] = constrain(base, field.validator) if field else base
        if not omitted:
            required.append(key)
    for key, hint in wire.added.items():
        props[key] = hint if isinstance(hint, dict) else type_schema(hint, known)
        if key not in wire.optional:
            required.append(key)
    schema: Schema = {
        "type": "object",
        "required": required,
        "properties": {k: merge(s, wire.refine.get(k, {})) for k, s in props.items()},
        "additionalProperties": False,
    }
    return {"description": wire.description, **schema} if wire.description else schema


def _hint(cls: type[Any], name: str, drop_none: bool) -> Any:
    hint = _field_hint(cls, name)
    if drop_none and typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = functools.reduce(operator.or_, rest)
    return hint


def _field_hint(cls: type[Any], name: str) -> Any:
    """The type of an attrs field, or the return type of a property; a name that is
    neither is a representation drifting from its model, so it fails loudly."""
    if name in attrs.fields_dict(cls):
        return typing.get_type_hints(cls)[name]
    prop = getattr(cls, name, None)
    if isinstance(prop, property) and prop.fget is not None:
        return typing.get_type_hints(prop.fget)["return"]
    raise AttributeError(f"{cls.__name__} has no field or property {name!r}")
