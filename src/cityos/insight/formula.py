"""Indicator formulas: arithmetic over named inputs, checked for units at load, evaluated safely.

Evaluation is simpleeval's (a small, well-kept library: no attribute access, no calls but the
functions given, bounded powers), on the tree parsed once at load. The same tree is walked here
first, at load, to refuse what an indicator formula has no use for (names that are not inputs,
comparisons, strings) and to derive the formula's unit from its inputs' units, so a file whose
formula adds micrograms to percentages, or whose result is not in its declared unit, is refused.
Division by zero is an evaluation outcome (FormulaError), never an exception that escapes.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import simpleeval

# units are UN/CEFACT common codes, as Smart Data Models use them; these mean "a pure number"
DIMENSIONLESS = frozenset({"C62", "P1"})  # one, percent
FUNCTIONS = {"min": min, "max": max, "abs": abs, "round": round}
OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
Unit = tuple[tuple[str, int], ...]  # sorted (code, exponent) pairs; () is a pure number


class FormulaError(ValueError):
    """A formula refused at load (with the column) or a value it cannot give (division by zero)."""


def unit_of(code: str) -> Unit:
    return () if code in DIMENSIONLESS else ((code, 1),)


def _combine(left: Unit, right: Unit, sign: int) -> Unit:
    exponents = dict(left)
    for code, power in right:
        exponents[code] = exponents.get(code, 0) + sign * power
    return tuple(sorted((code, power) for code, power in exponents.items() if power))


def show(unit: Unit) -> str:
    return "·".join(code if power == 1 else f"{code}^{power}" for code, power in unit) or "a pure number"


@dataclass(frozen=True, slots=True)
class Formula:
    text: str
    tree: ast.AST
    unit: Unit

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The formula's value; FormulaError for a division by zero or a result that is no number."""
        evaluator = simpleeval.SimpleEval(operators=dict(OPERATORS), functions=dict(FUNCTIONS), names=dict(values))
        try:
            result = evaluator.eval(self.text, previously_parsed=self.tree)
        except ZeroDivisionError as exc:
            raise FormulaError("division by zero") from exc
        if not isinstance(result, int | float) or isinstance(result, bool) or not math.isfinite(result):
            raise FormulaError(f"the formula gave {result!r}, not a finite number")
        return float(result)


def compile_formula(text: str, units: Mapping[str, str]) -> Formula:
    """Parse `text` over inputs named in `units` (name -> unit code); FormulaError says why not."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise FormulaError(f"syntax error at column {exc.offset}: {exc.msg}") from exc
    return Formula(text.strip(), tree, _unit(tree, units))


def _unit(node: ast.AST, units: Mapping[str, str]) -> Unit:
    """The node's unit; a literal number adapts to what it is added to (a scale, not a quantity)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return ()
    if isinstance(node, ast.Name):
        if node.id not in units:
            raise FormulaError(f"column {node.col_offset + 1}: {node.id!r} is not an input of this indicator")
        return unit_of(units[node.id])
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
        return _unit(node.operand, units)
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _unit(node.left, units), _unit(node.right, units)
        if isinstance(node.op, ast.Mult):
            return _combine(left, right, 1)
        if isinstance(node.op, ast.Div):
            return _combine(left, right, -1)
        return _same(node, [(node.left, left), (node.right, right)])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        if node.keywords or not node.args:
            raise FormulaError(f"column {node.col_offset + 1}: {node.func.id}() takes positional arguments")
        return _same(node, [(arg, _unit(arg, units)) for arg in node.args])
    raise FormulaError(
        f"column {getattr(node, 'col_offset', 0) + 1}: {type(node).__name__} is not allowed in a formula"
    )


def _same(node: ast.AST, parts: list[tuple[ast.AST, Unit]]) -> Unit:
    """Terms that are added, subtracted or compared must share a unit (bare numbers fit any)."""
    quantities = {unit for part, unit in parts if not isinstance(part, ast.Constant)}
    if len(quantities) > 1:
        shown = " and ".join(sorted(show(unit) for unit in quantities))
        column = getattr(node, "col_offset", 0) + 1
        raise FormulaError(f"column {column}: unit mismatch: {shown} cannot be added or compared")
    return quantities.pop() if quantities else ()
