"""The NGSI-LD query language (ETSI GS CIM 009 V1.9.1, clause 4.9): the `q` request parameter.

`parse_q` turns the text into an immutable AST and `compile_q` turns that into a predicate over
CityOS's internal (expanded) entity form.

The scanner is context-sensitive because the grammar is: `:`, `-`, `.` and `/` mean different
things in attribute names, URIs, date-times and ranges, so the parser tells the lexer what it
expects next (an attribute path, an operator, a value or a regular expression). The spec's ABNF
has no whitespace between tokens, but clients written against Orion-LD send `temperature > 0` and
`a==1 ; b<2`, so whitespace between tokens is skipped; inside a quoted string it is part of the
string, and inside a bare regular expression it is kept except at its two ends (quote a pattern
that must start or end with a space).

Error positions are 0-based character offsets into the q text.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any, Literal, NamedTuple, NoReturn

from cityos.entities.model import VALUE_MEMBER
from cityos.errors import BadRequestData
from cityos.query.patterns import DEFAULT_MAX_LENGTH, Pattern, compile_pattern

MAX_LENGTH = 4096
MAX_DEPTH = 32

Entity = dict[str, Any]
Predicate = Callable[[Entity], bool]
Scalar = bool | int | float | str
ValueKind = Literal["number", "string", "boolean", "datetime", "date", "time", "uri"]
Operator = Literal["==", "!=", ">=", ">", "<=", "<"]


class QNotSupported(BadRequestData):
    """A well-formed q that CityOS cannot evaluate (linked-entity paths): still the client's 400."""


# --- AST -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """A literal. `kind` records how it was written: `"urn:a"` is a string, urn:a a URI."""

    value: Scalar
    kind: ValueKind


@dataclass(frozen=True)
class Range:
    """`low..high`: with == the value lies within the bounds (inclusive), with != outside them."""

    low: Value
    high: Value


@dataclass(frozen=True)
class ValueList:
    """`a,b,c`: with == the value is any of the items, with != none of them."""

    items: tuple[Value, ...]


@dataclass(frozen=True)
class AttrPath:
    """`name.seg1.seg2[key1][key2]`: segments are sub-attributes or metadata, keys index JSON values."""

    name: str
    segments: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class LinkedEntityPath:
    """`rel{target}`: `target` is read on the entity that relationship `rel` points to."""

    relationship: AttrPath
    target: AttrPath | LinkedEntityPath


Path = AttrPath | LinkedEntityPath


@dataclass(frozen=True)
class Exists:
    """A bare attribute path: true when the path resolves on some instance; `!path` (negated)
    when it resolves on none."""

    path: Path
    negated: bool = False


@dataclass(frozen=True)
class Comparison:
    path: Path
    op: Operator
    operand: Value | Range | ValueList


@dataclass(frozen=True)
class Match:
    """`~=` (or `!~=` when negated): the pattern is searched for anywhere in string values."""

    path: Path
    pattern: str
    negated: bool = False


@dataclass(frozen=True)
class And:
    terms: tuple[QExpr, ...]


@dataclass(frozen=True)
class Or:
    terms: tuple[QExpr, ...]


QExpr = Exists | Comparison | Match | And | Or

# --- Lexer -----------------------------------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9_:/#.\-]+")  # with its `.segment`s, split later: IRIs contain dots
KEY_RE = re.compile(r"[^\[\]\s]+")  # inside `[...]`
BARE_RE = re.compile(r'(?:[^;|()",\s.]|\.(?!\.))+')  # an unquoted value stops before `..`
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
OPERATOR_RE = re.compile(r"!~=|~=|==|!=|>=|<=|>|<")
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_TIME = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
TIME_RE = re.compile(_TIME)
DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T" + _TIME)
TERM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]*")
TEMPORAL: frozenset[str] = frozenset({"datetime", "date", "time"})
ORDERABLE: frozenset[str] = TEMPORAL | {"number", "string"}


class _Token(NamedTuple):
    text: str
    pos: int


def _fail(text: str, pos: int, what: str | None = None) -> NoReturn:
    """Raise the client error for position `pos`; without `what`, name the character found there."""
    if what is None:
        what = "unexpected end of query" if pos >= len(text) else f"unexpected {text[pos]!r}"
    raise BadRequestData(f"q: {what} at position {pos}")


class _Lexer:
    """Reads one token at a time, of the kind the parser asks for."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip(self) -> None:
        """Step over whitespace between tokens."""
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def punct(self, token: str) -> bool:
        """Consume `token` if it comes next."""
        self.skip()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, char: str) -> None:
        if not self.punct(char):
            _fail(self.text, self.pos)

    def take(self, pattern: re.Pattern[str]) -> _Token | None:
        """Consume and return the token `pattern` matches here, if it does."""
        self.skip()
        found = pattern.match(self.text, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return _Token(found.group(), found.start())

    def need(self, pattern: re.Pattern[str]) -> _Token:
        return self.take(pattern) or _fail(self.text, self.pos)

    def quoted(self) -> _Token:
        """A double-quoted string with JSON escapes; the token text is the decoded string."""
        token = self.take(STRING_RE) or _fail(self.text, self.pos, "unterminated string")
        try:
            return _Token(str(json.loads(token.text)), token.pos)
        except ValueError:
            _fail(self.text, token.pos, "invalid string")

    def value(self) -> Value:
        if self.peek() == '"':
            return Value(self.quoted().text, "string")
        return _classify(self.need(BARE_RE))

    def regex(self) -> _Token:
        """A quoted pattern, or a bare one running to the first `;`, `|` or `)` outside its groups."""
        if self.peek() == '"':
            return self.quoted()
        text, start = self.text, self.pos
        i, depth, in_class = start, 0, False
        while i < len(text):
            char = text[i]
            if char == "\\":
                i += 2
                continue
            if in_class:
                in_class = char != "]"
            elif char == "[":
                in_class = True
            elif char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            elif char in ";|" and depth == 0:
                break
            i += 1
        i = min(i, len(text))
        while i > start and text[i - 1].isspace() and text[i - 2 : i - 1] != "\\":
            i -= 1  # the whitespace before `;`, `|`, `)` or the end separates tokens
        if i == start:
            _fail(text, start)
        self.pos = i
        return _Token(text[start:i], start)


def _classify(word: _Token) -> Value:
    """Type an unquoted value; anything else must be quoted (the spec has no bare strings)."""
    text = word.text
    if text in ("true", "false"):
        return Value(text == "true", "boolean")
    if NUMBER_RE.fullmatch(text):
        try:
            number: int | float = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            number = math.inf
        if not math.isfinite(number):
            raise BadRequestData(f"q: number {text!r} out of range at position {word.pos}")
        return Value(number, "number")
    for kind, pattern in (("datetime", DATETIME_RE), ("date", DATE_RE), ("time", TIME_RE)):
        if pattern.fullmatch(text):
            if _instant(text) is None:
                raise BadRequestData(f"q: invalid {kind} {text!r} at position {word.pos}")
            return Value(text, kind)  # type: ignore[arg-type]
    if URI_RE.fullmatch(text) or TERM_RE.fullmatch(text):
        # a bare term is a vocabulary reference (compared as written, or expanded with expandValues)
        return Value(text, "uri")
    raise BadRequestData(
        f"q: invalid value {text!r} at position {word.pos}: "
        "strings must be quoted, other values are numbers, true/false, date/times or URIs"
    )


def _compile_regex(pattern: str, pos: int, max_length: int | None) -> Pattern:
    """RE2, linear-time whatever the pattern (query/patterns.py); length bounded by max_pattern_length."""
    return compile_pattern(pattern, f"q: invalid regular expression at position {pos}", max_length)


# --- Parser ----------------------------------------------------------------------------------------


def _split_name(token: _Token) -> tuple[str, tuple[str, ...]]:
    """`name.seg.seg` → (name, segments). In an absolute IRI (`scheme://…`) dots before the last
    `/` or `#` belong to the name, so `https://ex.org/temp.observedAt` works; a sub-attribute
    written as an absolute IRI cannot be told apart and must be written as a term."""
    text = token.text
    first = text.find(".", max(text.rfind("/"), text.rfind("#")) + 1 if "://" in text else 0)
    parts = [text] if first < 0 else [text[:first], *text[first + 1 :].split(".")]
    offset = token.pos
    for part in parts:
        if not part:
            raise BadRequestData(f"q: empty attribute name at position {offset}")
        offset += len(part) + 1
    return parts[0], tuple(parts[1:])


class _Parser:
    """Recursive descent: Query = Conj *('|' Conj); Conj = Factor *(';' Factor);
    Factor = '(' Query ')' | Term. AND binding tighter than OR follows from the layering."""

    def __init__(self, text: str, max_pattern_length: int | None) -> None:
        self.text = text
        self.lex = _Lexer(text)
        self.depth = 0
        self.max_pattern_length = max_pattern_length

    def parse(self) -> QExpr:
        expr = self.query()
        if self.lex.peek():
            _fail(self.text, self.lex.pos)
        return expr

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            _fail(self.text, pos, f"nesting deeper than {MAX_DEPTH} levels")

    def query(self) -> QExpr:
        terms = [self.conjunction()]
        while self.lex.punct("|"):
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def conjunction(self) -> QExpr:
        terms = [self.factor()]
        while self.lex.punct(";"):
            terms.append(self.factor())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def factor(self) -> QExpr:
        pos = self.lex.pos
        if not self.lex.punct("("):
            return self.term()
        self.enter(pos)
        expr = self.query()
        self.lex.expect(")")
        self.depth -= 1
        return expr

    def term(self) -> QExpr:
        if self.lex.punct("!"):
            return Exists(self.path(), negated=True)
        path = self.path()
        pos = self.lex.pos
        token = self.lex.take(OPERATOR_RE)
        if token is None:
            return Exists(path)
        op = token.text
        if op in ("~=", "!~="):
            pattern = self.lex.regex()
            _compile_regex(pattern.text, pattern.pos, self.max_pattern_length)
            return Match(path, pattern.text, op == "!~=")
        return Comparison(path, op, self.operand(op, pos))  # type: ignore[arg-type]

    def path(self) -> Path:
        name, segments = _split_name(self.lex.need(NAME_RE))
        pos = self.lex.pos
        if self.lex.punct("{"):
            self.enter(pos)
            target = self.path()
            self.lex.expect("}")
            self.depth -= 1
            return LinkedEntityPath(AttrPath(name, segments), target)
        keys: list[str] = []
        while self.lex.punct("["):
            token = self.lex.need(KEY_RE)
            self.lex.expect("]")
            if "" in token.text.split("."):
                _fail(self.text, token.pos, "empty key in [...]")
            keys.extend(token.text.split("."))
        return AttrPath(name, segments, tuple(keys))

    def operand(self, op: str, op_pos: int) -> Value | Range | ValueList:
        equality = op in ("==", "!=")
        pos = self.lex.pos
        first = self.lex.value()
        if self.lex.punct(".."):
            second = self.lex.value()
            if not equality:
                _fail(self.text, op_pos, f"a range needs == or != (found {op})")
            numbers = [v.kind == "number" for v in (first, second)]
            if not all(v.kind in ORDERABLE for v in (first, second)) or numbers[0] != numbers[1]:
                _fail(self.text, pos, "range bounds must both be numbers or both strings/date-times")
            return Range(first, second)
        if self.lex.peek() == ",":
            items = [first]
            while self.lex.punct(","):
                items.append(self.lex.value())
            if not equality:
                _fail(self.text, op_pos, f"a value list needs == or != (found {op})")
            return ValueList(tuple(items))
        if not equality and first.kind not in ORDERABLE:
            _fail(self.text, pos, f"{op} needs a number, string or date/time")
        return first


@lru_cache(maxsize=1024)
def parse_q(text: str, max_pattern_length: int | None = DEFAULT_MAX_LENGTH) -> QExpr:
    """Parse a q expression; BadRequestData (with the fault's position) when it is malformed.
    `max_pattern_length`: the setting, for the `~=` patterns (None: checked when q came in).
    The tree is immutable, so the parse of a text is kept: a dashboard repeats the same q, and a
    query request parses it twice (the width check, then the query)."""
    if len(text) > MAX_LENGTH:
        raise BadRequestData(f"q: longer than {MAX_LENGTH} characters")
    if not text:
        raise BadRequestData("q: empty query")
    return _Parser(text, max_pattern_length).parse()


# --- Inspection ------------------------------------------------------------------------------------


def linked_depth(expr: QExpr) -> int:
    """How many relationships the deepest linked-entity path of `expr` follows."""
    if isinstance(expr, And | Or):
        return max((linked_depth(term) for term in expr.terms), default=0)
    hops, path = 0, expr.path
    while isinstance(path, LinkedEntityPath):
        hops, path = hops + 1, path.target
    return hops


def match_patterns(expr: QExpr) -> list[str]:
    """The regular expressions of the `~=` and `!~=` terms of `expr`."""
    if isinstance(expr, And | Or):
        return [pattern for term in expr.terms for pattern in match_patterns(term)]
    return [expr.pattern] if isinstance(expr, Match) else []


def q_attribute_names(expr: QExpr) -> set[str]:
    """The (unexpanded) top-level attribute names a q expression reads."""
    if isinstance(expr, And | Or):
        return set().union(*(q_attribute_names(term) for term in expr.terms))
    path = expr.path
    return {path.relationship.name if isinstance(path, LinkedEntityPath) else path.name}


# --- Evaluation ------------------------------------------------------------------------------------

# Entity-level system attributes: read from the entity itself, never expanded.
ENTITY_SYSTEM = frozenset({"createdAt", "modifiedAt", "deletedAt", "expiresAt"})
# Members of an attribute instance reachable as `attr.<name>`; never expanded.
METADATA = frozenset({"observedAt", "unitCode", "datasetId", "createdAt", "modifiedAt"})
ORDERINGS: dict[str, Callable[[int, int], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


# What a path found on one attribute instance: its items (lists among them are flattened when
# compared) and whether they are VocabProperty IRIs.
_Group = tuple[list[Any], str]  # (values, attribute type or "" for metadata)
Resolver = Callable[[Entity], list[_Group]]


@lru_cache(maxsize=4096)
def _instant(text: str) -> tuple[str, datetime] | None:
    """("datetime"|"time", aware moment) for ISO 8601 text; dates are midnight, naive means UTC."""
    try:
        if DATETIME_RE.fullmatch(text) or DATE_RE.fullmatch(text):
            kind, moment = "datetime", datetime.fromisoformat(text)
        elif TIME_RE.fullmatch(text):
            kind, moment = "time", datetime.combine(date(2000, 1, 1), time.fromisoformat(text))
        else:
            return None
    except ValueError:
        return None
    return kind, moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _sign(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def _compare(stored: Any, literal: Value) -> int | None:
    """-1/0/1 ordering of a stored value against a literal; None when their types differ."""
    want = literal.value
    if literal.kind == "boolean":
        return (0 if stored is want else 1) if isinstance(stored, bool) else None
    if literal.kind == "number":
        if isinstance(stored, bool) or not isinstance(stored, int | float):
            return None
        return _sign(stored, want)
    if not isinstance(stored, str):
        return None
    have, wanted = _instant(stored), _instant(str(want))
    if have and wanted and have[0] == wanted[0]:
        return _sign(have[1], wanted[1])
    return None if literal.kind in TEMPORAL else _sign(stored, want)


def _flatten(items: Iterable[Any]) -> Iterator[Any]:
    """Arrays compare element by element (Relationship objects, ListProperty, array values)."""
    return (value for item in items for value in (item if isinstance(item, list) else (item,)))


def _index(items: list[Any], key: str) -> list[Any]:
    """Step into JSON objects (and objects inside arrays) by key."""
    found: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            if key == "*":  # any member, e.g. any language of a LanguageProperty
                found.extend(item.values())
            elif key in item:
                found.append(item[key])
        elif isinstance(item, list):
            found.extend(el[key] for el in item if isinstance(el, dict) and key in el)
    return found


def _resolve_instance(instance: Any, steps: tuple[tuple[bool, str], ...], keys: tuple[str, ...]) -> _Group | None:
    """Walk `attr.sub.meta` steps from one instance, then `[key]`s into the value found."""
    node, meta = instance, False
    for is_meta, name in steps:
        if meta or not isinstance(node, dict) or name not in node:
            return None
        node, meta = node[name], is_meta
    if meta:
        items, kind_name = [node], ""
    else:
        kind = node.get("type") if isinstance(node, dict) else None
        member = VALUE_MEMBER.get(kind) if isinstance(kind, str) else None
        if member is None or not isinstance(node, dict) or member not in node:
            return None
        raw = node[member]
        kind_name = str(kind)
        # A language map compares by its strings, unless `[tag]` picks one language.
        language_strings = kind == "LanguageProperty" and isinstance(raw, dict) and not keys
        if isinstance(raw, dict) and "@value" in raw and not keys:
            raw = raw["@value"]  # a typed literal ({"@type": "DateTime", "@value": ...}) compares by its value
        items = list(raw.values()) if language_strings else [raw]
    for key in keys:
        items = _index(items, key)
    return (items, kind_name) if items else None


class _Compiler:
    """Turns an AST into closures; names are expanded once here, not per entity."""

    def __init__(
        self,
        expand: Callable[[str], str],
        expand_values: frozenset[str] = frozenset(),
        lookup: Callable[[str], Entity | None] | None = None,
    ) -> None:
        self.expand = expand
        self.expand_values = expand_values
        self.lookup = lookup

    def compile(self, expr: QExpr) -> Predicate:
        if isinstance(expr, And | Or):
            predicates = [self.compile(term) for term in expr.terms]
            combine = all if isinstance(expr, And) else any
            return lambda entity: combine(p(entity) for p in predicates)
        resolve = self.resolver(expr.path)
        if isinstance(expr, Exists):
            negated = expr.negated
            return lambda entity: bool(resolve(entity)) != negated
        if isinstance(expr, Match):
            return self.match(expr, resolve)
        return self.comparison(expr, resolve)

    def linked_resolver(self, path: LinkedEntityPath) -> Resolver:
        """`rel{attr}`: read `attr` on the entities `rel` points to (`rel{Type:attr}` also checks
        the target's type)."""
        lookup = self.lookup
        if lookup is None:
            raise QNotSupported("q: linked-entity paths (attr{...}) need join")
        relationship = self.resolver(path.relationship)
        target, wanted_type = path.target, None
        if isinstance(target, AttrPath) and ":" in target.name:
            hint, _, name = target.name.partition(":")
            # a compact IRI's prefix ends in a gen-delim; anything else before ":" is a type hint
            if "/" not in name and not self.expand(hint).endswith(("/", "#", ":")):
                wanted_type, target = self.expand(hint), AttrPath(name, target.segments, target.keys)
        inner = self.resolver(target)

        def resolve(entity: Entity) -> list[_Group]:
            groups: list[_Group] = []
            for items, kind in relationship(entity):
                if kind not in ("Relationship", "ListRelationship"):
                    continue
                for target_id in _flatten(items):
                    linked = lookup(target_id) if isinstance(target_id, str) else None
                    if linked is not None and (wanted_type is None or wanted_type in linked.get("type", [])):
                        groups.extend(inner(linked))
            return groups

        return resolve

    def resolver(self, path: Path) -> Resolver:
        if isinstance(path, LinkedEntityPath):
            return self.linked_resolver(path)
        if path.name in ENTITY_SYSTEM and not path.segments and not path.keys:
            name = path.name
            return lambda entity: [] if entity.get(name) is None else [([entity[name]], "")]
        iri = self.expand(path.name)
        steps = tuple((s in METADATA, s if s in METADATA else self.expand(s)) for s in path.segments)
        keys = path.keys

        def resolve(entity: Entity) -> list[_Group]:
            attrs = entity.get("attrs")
            instances = attrs.get(iri) if isinstance(attrs, dict) else None
            if not isinstance(instances, list):
                return []
            groups = (_resolve_instance(instance, steps, keys) for instance in instances)
            return [group for group in groups if group is not None]

        return resolve

    def comparison(self, expr: Comparison, resolve: Resolver) -> Predicate:
        test = self.value_test(expr.op, expr.operand)
        negated = expr.op == "!="
        ordering = expr.op in ORDERINGS
        name = expr.path.name if isinstance(expr.path, AttrPath) else ""
        expand_vocab = name in self.expand_values

        def predicate(entity: Entity) -> bool:
            for items, kind in resolve(entity):
                if ordering and kind in ("Relationship", "ListRelationship"):
                    continue  # entity references have no order (019_29_11)
                vocab = expand_vocab and kind == "VocabProperty"
                results = [test(value, vocab) for value in _flatten(items)]
                # == holds if some value equals; != if there are values and none equals (a value
                # of another datatype is unequal, 4.9 p.92: 5744_06_04).
                if (results and not any(r is True for r in results)) if negated else any(results):
                    return True
            return False

        return predicate

    def value_test(self, op: str, operand: Value | Range | ValueList) -> Callable[[Any, bool], bool | None]:
        """The positive test for one stored value (== for !=); None when types are incomparable."""
        if isinstance(operand, Range):
            low, high = operand.low, operand.high

            def within(stored: Any, vocab: bool) -> bool | None:
                above, below = _compare(stored, low), _compare(stored, high)
                return None if above is None or below is None else above >= 0 and below <= 0

            return within
        literals = operand.items if isinstance(operand, ValueList) else (operand,)
        if op in ("==", "!="):
            # A VocabProperty stores expanded IRIs: the literal may match as written or expanded.
            expanded = frozenset(self.expand(str(v.value)) for v in literals if v.kind in ("string", "uri"))

            def equal(stored: Any, vocab: bool) -> bool | None:
                if vocab and isinstance(stored, str) and stored in expanded:
                    return True
                known = [o for o in (_compare(stored, literal) for literal in literals) if o is not None]
                return None if not known else 0 in known

            return equal
        literal = literals[0]
        accept = ORDERINGS[op]

        def ordered(stored: Any, vocab: bool) -> bool | None:
            outcome = _compare(stored, literal)
            return None if outcome is None else accept(outcome, 0)

        return ordered

    def match(self, expr: Match, resolve: Resolver) -> Predicate:
        pattern = _compile_regex(expr.pattern, 0, None)  # parse_q already rejected bad patterns
        negated = expr.negated

        def predicate(entity: Entity) -> bool:
            for items, _ in resolve(entity):
                strings = [v for v in _flatten(items) if isinstance(v, str)]
                hit = any(pattern.search(s) for s in strings)
                if (bool(strings) and not hit) if negated else hit:
                    return True
            return False

        return predicate


def compile_q(
    text: str,
    expand: Callable[[str], str],
    expand_values: frozenset[str] = frozenset(),
    lookup: Callable[[str], Entity | None] | None = None,
    max_pattern_length: int | None = DEFAULT_MAX_LENGTH,
) -> Predicate:
    """A predicate over internal entities. `expand` maps q terms to IRIs with the request's
    @context; metadata names and compound keys are used as written. An attribute matches when
    any of its instances (datasetIds) does. Raises BadRequestData, or QNotSupported for
    linked-entity paths. Literals compared with the VocabProperty attributes named in
    `expand_values` (the expandValues parameter) are expanded as vocabulary terms first."""
    return _Compiler(expand, expand_values, lookup).compile(parse_q(text, max_pattern_length))
