"""Which parts of a q expression the store can evaluate with its indexes.

Only sound prefilters are produced: every entity the full q predicate accepts must pass them,
so the store may narrow the candidates in SQL and the exact predicate runs on what remains.
They come from the top-level conjunction of q; anything under an OR, a sub-attribute path, a
compound key, `!=`, `!~=` or a date-like string is left to the predicate.

`pushdown` also says when the filters are the whole of q: every term is one the side table
attr_values answers exactly as the evaluator (query/q.py) would, over the values it indexes
(store/side_rows.py indexed_values): numeric comparisons and ranges, equality with numbers and
strings (value lists too), string ranges and `~=`. Then a back-end may page and count in SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cityos.query.q import And, AttrPath, Comparison, Exists, Match, QExpr, Range, Value, ValueList, _instant

Scalar = float | str


@dataclass(frozen=True, slots=True)
class ValueFilter:
    """An entity has attribute `attr` (expanded) with some value satisfying `op` over `values`.

    op: "exists", "==" (any of values), "<", "<=", ">", ">=" (numbers), "between" (inclusive, two
    numbers or two strings), "match" (an RE2 pattern found in a string value)."""

    attr: str
    op: str
    values: tuple[Scalar, ...] = ()

    def split(self) -> tuple[list[float], list[str]]:
        """(numbers, strings) of an equality's values: the num and txt columns they are looked up in."""
        return [v for v in self.values if isinstance(v, float)], [v for v in self.values if isinstance(v, str)]


ORDERING = frozenset({"<", "<=", ">", ">="})
SAFE_INTEGER = 2.0**53  # beyond it a REAL column no longer holds every integer exactly


def _scalar(value: Value) -> Scalar | None:
    """The indexable form of a literal, or None if equality in SQL would not be exact."""
    if value.kind == "number" and not isinstance(value.value, bool):
        return float(value.value)
    if value.kind in ("string", "uri") and isinstance(value.value, str) and _instant(value.value) is None:
        return value.value
    return None


def _exact_number(scalar: Scalar | None) -> bool:
    return isinstance(scalar, float) and -SAFE_INTEGER < scalar < SAFE_INTEGER


def _filter(
    term: QExpr, expand: Callable[[str], str], expand_values: frozenset[str]
) -> tuple[ValueFilter | None, bool]:
    """(the prefilter of one conjunct, whether it is exactly the conjunct)."""
    if not isinstance(term, Exists | Comparison | Match):
        return None, False
    path = term.path
    if not isinstance(path, AttrPath) or path.segments or path.keys:
        return None, False
    if path.name in ("createdAt", "modifiedAt", "deletedAt", "observedAt", "expiresAt"):
        return None, False
    iri = expand(path.name)
    if isinstance(term, Match):
        # every string value the evaluator searches is an attr_values.txt row, and no other
        return (None, False) if term.negated else (ValueFilter(iri, "match", (term.pattern,)), True)
    if isinstance(term, Exists):
        # existence is not exact: an instance without its value member (a null) does not count
        return (None, False) if term.negated else (ValueFilter(iri, "exists"), False)
    operand = term.operand
    if term.op == "==":
        if isinstance(operand, Range):
            low, high = _scalar(operand.low), _scalar(operand.high)
            if _exact_number(low) and _exact_number(high):
                return ValueFilter(iri, "between", (low, high)), True  # type: ignore[arg-type]
            if isinstance(low, float) and isinstance(high, float):
                return ValueFilter(iri, "between", (low, high)), False
            if isinstance(low, str) and isinstance(high, str):
                return ValueFilter(iri, "between", (low, high)), True
            return ValueFilter(iri, "exists"), False
        literals = operand.items if isinstance(operand, ValueList) else (operand,)
        scalars = [_scalar(v) for v in literals]
        if any(s is None for s in scalars):
            return ValueFilter(iri, "exists"), False
        values: list[Scalar] = [s for s in scalars if s is not None]
        exact = all(isinstance(s, str) or _exact_number(s) for s in values)
        # a VocabProperty matches the literal as written, or expanded when expandValues names it
        vocabulary: list[Scalar] = [expand(s) for s in values if isinstance(s, str) and expand(s) != s]
        if vocabulary and path.name in expand_values:
            return ValueFilter(iri, "==", tuple(values + vocabulary)), False
        return ValueFilter(iri, "==", tuple(values)), exact
    if term.op in ORDERING and isinstance(operand, Value):
        scalar = _scalar(operand)
        if isinstance(scalar, float):
            return ValueFilter(iri, term.op, (scalar,)), _exact_number(scalar)
    return ValueFilter(iri, "exists"), False


def pushdown(
    expr: QExpr, expand: Callable[[str], str], expand_values: frozenset[str] = frozenset()
) -> tuple[list[ValueFilter], bool]:
    """(the prefilters of q's top-level conjunction, whether together they are exactly q)."""
    terms = expr.terms if isinstance(expr, And) else (expr,)
    found = [_filter(term, expand, expand_values) for term in terms]
    filters = [f for f, _ in found if f is not None]
    return filters, all(exact for _, exact in found)


def value_filters(
    expr: QExpr, expand: Callable[[str], str], expand_values: frozenset[str] = frozenset()
) -> list[ValueFilter]:
    return pushdown(expr, expand, expand_values)[0]
