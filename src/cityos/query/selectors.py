"""Entity type expressions and scope queries: two small boolean grammars (spec 4.17 and 4.19).

    expr   := term (("|" | ",") term)*      ; OR
    term   := factor (";" factor)*          ; AND
    factor := NAME | "(" expr ")"

For types NAME is an entity type name; for scopeQ it is a scope pattern such as /Madrid/#
(the scope and all beneath it) or /Madrid/+ (exactly one level beneath).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from cityos.errors import BadRequestData

MAX_LENGTH = 2048
TOKEN_RE = re.compile(r"\s*([|,;()]|[^|,;()\s]+)")


@dataclass(frozen=True)
class Name:
    text: str


@dataclass(frozen=True)
class AllOf:
    items: tuple[Selector, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Selector, ...]


Selector = Name | AllOf | AnyOf


@lru_cache(maxsize=1024)
def parse_selector(text: str, what: str) -> Selector:
    """The selector of a type expression or scopeQ (immutable, so kept per text: every query
    request names its type)."""
    if not text or len(text) > MAX_LENGTH:
        raise BadRequestData(f"{what} must be between 1 and {MAX_LENGTH} characters")
    tokens: list[tuple[str, int]] = []
    position = 0
    while position < len(text):
        match = TOKEN_RE.match(text, position)
        if match is None:
            break
        tokens.append((match.group(1), match.start(1)))
        position = match.end()
    if text[position:].strip():
        raise BadRequestData(f"{what}: unexpected text at position {position}")
    index = 0

    def peek() -> str | None:
        return tokens[index][0] if index < len(tokens) else None

    def fail(expected: str) -> BadRequestData:
        where = tokens[index][1] if index < len(tokens) else len(text)
        return BadRequestData(f"{what}: expected {expected} at position {where}")

    def expr(depth: int) -> Selector:
        nonlocal index
        if depth > 32:
            raise BadRequestData(f"{what} nests too deeply")
        items = [term(depth)]
        while peek() in ("|", ","):
            index += 1
            items.append(term(depth))
        return items[0] if len(items) == 1 else AnyOf(tuple(items))

    def term(depth: int) -> Selector:
        nonlocal index
        items = [factor(depth)]
        while peek() == ";":
            index += 1
            items.append(factor(depth))
        return items[0] if len(items) == 1 else AllOf(tuple(items))

    def factor(depth: int) -> Selector:
        nonlocal index
        token = peek()
        if token == "(":
            index += 1
            inner = expr(depth + 1)
            if peek() != ")":
                raise fail("')'")
            index += 1
            return inner
        if token is None or token in "|,;)":
            raise fail("a name")
        index += 1
        return Name(token)

    result = expr(0)
    if index != len(tokens):
        raise fail("the end of the expression")
    return result


def names(selector: Selector) -> list[str]:
    if isinstance(selector, Name):
        return [selector.text]
    return [name for item in selector.items for name in names(item)]


def evaluate(selector: Selector, test: Callable[[str], bool]) -> bool:
    if isinstance(selector, Name):
        return test(selector.text)
    combine = all if isinstance(selector, AllOf) else any
    return combine(evaluate(item, test) for item in selector.items)


def is_simple_union(selector: Selector) -> bool:
    """True for `A`, `A,B` or `A|B`: an SQL IN list is then exact, not just a prefilter."""
    return isinstance(selector, Name) or (
        isinstance(selector, AnyOf) and all(isinstance(item, Name) for item in selector.items)
    )


def scope_matches(pattern: str, scope: str) -> bool:
    """/a/b matches /a/b; /a/+ one level beneath /a; /a/# /a and everything beneath it."""
    if pattern == "/#":
        return True
    wanted = pattern.strip("/").split("/")
    have = scope.strip("/").split("/")
    if wanted[-1] == "#":
        prefix = wanted[:-1]
        return have[: len(prefix)] == prefix
    if len(wanted) != len(have):
        return False
    return all(w == "+" or w == h for w, h in zip(wanted, have, strict=True))


SCOPE_PATTERN_RE = re.compile(r"^/(#|[\w\-]+|\+)(/([\w\-]+|\+|#))*$")


def check_scope_query(selector: Selector) -> None:
    for pattern in names(selector):
        if not SCOPE_PATTERN_RE.match(pattern) or "#" in pattern[:-1]:
            raise BadRequestData(f"scopeQ: {pattern!r} is not a scope pattern")
