"""Which parts of a q expression the store can evaluate with its indexes.

Only sound prefilters are produced: every entity the full q predicate accepts must pass them,
so the store may narrow the candidates in SQL and the exact predicate runs on what remains.
They come from the top-level conjunction of q; anything under an OR, a sub-attribute path, a
compound key, a regular expression, `!=` or a date-like string is left to the predicate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cityos.query.q import And, AttrPath, Comparison, Exists, QExpr, Range, Value, ValueList, _instant

Scalar = float | str


@dataclass(frozen=True, slots=True)
class ValueFilter:
    """An entity has attribute `attr` (expanded) with some value satisfying `op` over `values`.

    op: "exists", "==" (any of values), "<", "<=", ">", ">=", "between" (inclusive)."""

    attr: str
    op: str
    values: tuple[Scalar, ...] = ()


ORDERING = frozenset({"<", "<=", ">", ">="})


def _scalar(value: Value) -> Scalar | None:
    """The indexable form of a literal, or None if equality in SQL would not be exact."""
    if value.kind == "number" and not isinstance(value.value, bool):
        return float(value.value)
    if value.kind in ("string", "uri") and isinstance(value.value, str) and _instant(value.value) is None:
        return value.value
    return None


def _filter(term: QExpr, expand: Callable[[str], str]) -> ValueFilter | None:
    if isinstance(term, Exists | Comparison):
        path = term.path
        if not isinstance(path, AttrPath) or path.segments or path.keys:
            return None
        if path.name in ("createdAt", "modifiedAt", "deletedAt", "observedAt", "expiresAt"):
            return None
        iri = expand(path.name)
        if isinstance(term, Exists):
            return None if term.negated else ValueFilter(iri, "exists")
        operand = term.operand
        if term.op == "==":
            if isinstance(operand, Range):
                low, high = _scalar(operand.low), _scalar(operand.high)
                if isinstance(low, float) and isinstance(high, float):
                    return ValueFilter(iri, "between", (low, high))
                return ValueFilter(iri, "exists")
            literals = operand.items if isinstance(operand, ValueList) else (operand,)
            scalars = [_scalar(v) for v in literals]
            if any(s is None for s in scalars):
                return ValueFilter(iri, "exists")
            values: list[Scalar] = [s for s in scalars if s is not None]
            # a VocabProperty matches the literal as written or expanded
            values += [expand(s) for s in values if isinstance(s, str) and expand(s) != s]
            return ValueFilter(iri, "==", tuple(values))
        if term.op in ORDERING and isinstance(operand, Value):
            scalar = _scalar(operand)
            if isinstance(scalar, float):
                return ValueFilter(iri, term.op, (scalar,))
        return ValueFilter(iri, "exists")
    return None


def value_filters(expr: QExpr, expand: Callable[[str], str]) -> list[ValueFilter]:
    terms = expr.terms if isinstance(expr, And) else (expr,)
    return [f for f in (_filter(term, expand) for term in terms) if f is not None]
