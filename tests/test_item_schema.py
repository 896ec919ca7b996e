"""Item schemas show what the attrs validators check, and agree with the intake: a
payload the schema refuses is refused by the service too, and the other way round."""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs
import pytest
from aiohttp.test_utils import TestClient
from attrs import validators as v
from jsonschema import Draft202012Validator

from bulkjobs import ItemContext, Registry
from bulkjobs.itemtypes import ItemType, item_schema


@attrs.frozen
class Line:
    sku: str = attrs.field(validator=[v.min_len(3), v.max_len(8), v.matches_re(r"[A-Z]+-[0-9]+")])
    qty: int = attrs.field(validator=v.and_(v.ge(1), v.lt(100)))
    price: float = attrs.field(validator=[v.gt(0), v.le(1_000_000)])
    tags: list[str] = attrs.field(factory=list, validator=v.max_len(3))
    color: str | None = attrs.field(default=None, validator=v.optional(v.in_(["red", "blue"])))
    note: str | None = attrs.field(
        default=None, validator=v.optional([v.min_len(1), v.max_len(20)])
    )
    size: Literal["s", "m", "l"] = attrs.field(default="m", validator=v.in_(["m", "l", "xl"]))
    level: int = attrs.field(default=1, validator=v.in_(range(1, 6)))
    code: str = attrs.field(default="x", validator=v.matches_re("x", func=re.search))


@attrs.frozen
class Loose:
    """Validators a JSON Schema cannot state add nothing (the schema never over-claims)."""

    word: str = attrs.field(validator=v.matches_re("abc", re.IGNORECASE))
    letters: str = attrs.field(default="a", validator=v.in_("abc"))  # substring test

    @word.validator
    def _not_reserved(self, _attr: Any, value: str) -> None:
        if value.lower() == "abcabc":
            raise ValueError("reserved")


NULL = {"type": "null"}


def test_validators_become_keywords() -> None:
    props = item_schema(Line)["properties"]
    assert props["sku"] == {
        "type": "string",
        "minLength": 3,
        "maxLength": 8,
        "pattern": "^(?:[A-Z]+-[0-9]+)$",
    }
    assert props["qty"] == {"type": "integer", "minimum": 1, "exclusiveMaximum": 100}
    assert props["price"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "maxItems": 3}
    assert props["color"] == {"anyOf": [{"type": "string"}, NULL], "enum": ["red", "blue", None]}
    assert props["note"] == {"anyOf": [{"type": "string"}, NULL], "minLength": 1, "maxLength": 20}
    assert props["size"] == {"type": "string", "enum": ["m", "l"]}  # Literal ∩ in_
    assert props["level"] == {"type": "integer", "minimum": 1, "maximum": 5}
    assert props["code"] == {"type": "string", "pattern": "x"}  # search: unanchored
    assert item_schema(Line)["required"] == ["sku", "qty", "price"]


def test_inexpressible_validators_add_nothing() -> None:
    props = item_schema(Loose)["properties"]
    assert props == {"word": {"type": "string"}, "letters": {"type": "string"}}


def test_nested_item_classes_carry_their_validators() -> None:
    @attrs.frozen
    class Order:
        lines: list[Line] = attrs.field(validator=v.min_len(1))

    schema = item_schema(Order)["properties"]["lines"]
    assert schema["minItems"] == 1
    assert schema["items"]["properties"]["qty"]["minimum"] == 1


VALID = {"sku": "AB-12", "qty": 5, "price": 9.5}
GOOD: list[dict[str, Any]] = [
    {},
    {"color": "red", "note": "x", "size": "l", "level": 5, "tags": ["a", "b", "c"]},
    {"color": None, "note": None, "qty": 99, "price": 1_000_000, "code": "axb"},
]
BAD: list[dict[str, Any]] = [
    {"sku": "AB"},
    {"sku": "ABCDEF-12"},
    {"sku": "ab-12"},
    {"sku": "AB-12x"},
    {"qty": 0},
    {"qty": 100},
    {"price": 0},
    {"price": 1_000_001},
    {"tags": ["a", "b", "c", "d"]},
    {"color": "green"},
    {"note": ""},
    {"note": "n" * 21},
    {"size": "s"},
    {"size": "xl"},
    {"level": 0},
    {"level": 6},
    {"code": "y"},
]


@pytest.mark.parametrize(("change", "ok"), [(c, True) for c in GOOD] + [(c, False) for c in BAD])
def test_schema_and_intake_agree(change: dict[str, Any], ok: bool) -> None:
    payload = {**VALID, **change}
    assert Draft202012Validator(item_schema(Line)).is_valid(payload) is ok
    assert _accepts(ItemType(Line), payload) is ok


@pytest.mark.parametrize("change", BAD)
async def test_service_refuses_what_the_schema_refuses(
    make_client: Any, change: dict[str, Any]
) -> None:
    client: TestClient = await make_client(registry=_registry())
    ops = await (await client.get("/operations")).json()
    schema = ops["data"][0]["item_schema"]
    item = {**VALID, **change}
    assert not Draft202012Validator(schema).is_valid(item)
    resp = await client.post("/bulk-jobs", json={"operation": "lines", "items": [VALID, item]})
    assert resp.status == 422
    problem = await resp.json()
    assert problem["code"] == "validation_error"
    assert problem["errors"][0]["pointer"] == f"/items/1/{next(iter(change))}"


async def test_service_accepts_what_the_schema_accepts(make_client: Any) -> None:
    client: TestClient = await make_client(registry=_registry())
    items = [{**VALID, **change} for change in GOOD]
    resp = await client.post("/bulk-jobs", json={"operation": "lines", "items": items})
    assert resp.status == 202, await resp.text()


def _registry() -> Registry:
    reg = Registry()

    @reg.operation("lines", item_type=Line)
    async def lines(item: Line, ctx: ItemContext) -> None:
        return None

    return reg


def _accepts(kind: ItemType, payload: object) -> bool:
    try:
        kind.structure(payload)
    except Exception:
        return False
    return True
