"""Projections: the pick, omit and attrs parameters (spec 4.21), with linked-entity nesting.

list := item (("," | "|") item)*
item := NAME ("{" list "}")?
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cityos.entities.values import check_name
from cityos.errors import BadRequestData

TOKEN_RE = re.compile(r"[{},|]|[^{},|]+")


@dataclass(frozen=True)
class Projected:
    name: str
    nested: tuple[Projected, ...] = ()


def parse_projection(text: str, what: str) -> tuple[Projected, ...]:
    tokens = TOKEN_RE.findall(text)
    index = 0

    def fail(detail: str) -> BadRequestData:
        return BadRequestData(f"{what}: {detail} in {text!r}")

    def items(depth: int) -> tuple[Projected, ...]:
        nonlocal index
        if depth > 8:
            raise fail("nesting is too deep")
        out = [item(depth)]
        while index < len(tokens) and tokens[index] in (",", "|"):
            index += 1
            out.append(item(depth))
        return tuple(out)

    def item(depth: int) -> Projected:
        nonlocal index
        if index >= len(tokens) or tokens[index] in "{},|":
            raise fail("an attribute name is missing")
        name = tokens[index].strip()
        if not name or name != tokens[index]:
            raise fail("an attribute name is empty or padded")
        check_name(name, f"{what} attribute")
        index += 1
        if index < len(tokens) and tokens[index] == "{":
            index += 1
            nested = items(depth + 1)
            if index >= len(tokens) or tokens[index] != "}":
                raise fail("a '{' is not closed")
            index += 1
            return Projected(name, nested)
        return Projected(name)

    if not text:
        raise fail("it is empty")
    result = items(0)
    if index != len(tokens):
        raise fail(f"unexpected {tokens[index]!r}")
    return result


def depth(items: tuple[Projected, ...]) -> int:
    return max((1 + depth(p.nested) if p.nested else 0) for p in items) if items else 0
