"""Indicator files (insight/model.py) and formulas (insight/formula.py): what loads, and what is
refused with its file, line and reason. No database: the engine's tests are test_insight_engine.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityos.insight.formula import FormulaError, compile_formula
from cityos.insight.model import IndicatorFileError, load_indicators, parse_indicator

GOOD = """id = "stops-share"
name = "A share"
standard = "ISO 37122:2019"
clause = "19"
unit = "P1"
period = "daily"
formula = "100 * part / whole"

[inputs.part]
kind = "count"
type = "GtfsStop"
q = "wheelchairBoarding==1"
unit = "C62"

[inputs.whole]
kind = "count"
type = "GtfsStop"
unit = "C62"
"""


def refused(text: str) -> IndicatorFileError:
    with pytest.raises(IndicatorFileError) as caught:
        parse_indicator(text, "x.toml")
    return caught.value


def test_the_shipped_set_loads_each_with_its_standard() -> None:
    indicators = load_indicators()
    assert len(indicators) >= 8
    for indicator in indicators.values():
        assert indicator.standard and indicator.clause and len(indicator.digest) == 64
        assert indicator.entity_id == f"urn:ngsi-ld:KeyPerformanceIndicator:{indicator.id}:city"
    assert indicators["pm25-annual-mean"].clause == "8.1"


def test_a_good_file_parses() -> None:
    indicator = parse_indicator(GOOD, "x.toml")
    assert set(indicator.inputs) == {"part", "whole"} and indicator.coverage == 0.75
    assert indicator.formula.evaluate({"part": 1, "whole": 4}) == 25.0


def test_a_syntax_error_names_its_line() -> None:
    error = refused(GOOD.replace('period = "daily"', "period = daily"))
    assert error.path == "x.toml" and error.line == 6 and "syntax error" in error.reason
    assert str(error).startswith("x.toml:6: ")


def test_an_unknown_field_names_its_line() -> None:
    error = refused(GOOD.replace('clause = "19"', 'clause = "19"\nschedule = "daily"'))
    assert (error.line, error.reason) == (5, "unknown field 'schedule'")
    error = refused(GOOD.replace('type = "GtfsStop"\nunit', 'type = "GtfsStop"\nattr = "x"\nunit'))
    assert error.line == 18 and "unknown field 'attr'" in error.reason  # inside [inputs.whole]


@pytest.mark.parametrize(
    ("formula", "reason"),
    [
        ("part.__class__", "Attribute is not allowed"),
        ("__import__('os')", "Call is not allowed"),
        ("part if whole else 1", "IfExp is not allowed"),
        ("part < whole", "Compare is not allowed"),
        ("parts / whole", "'parts' is not an input"),
        ("100 * (part / whole", "syntax error"),
    ],
)
def test_formulas_outside_the_whitelist_are_refused(formula: str, reason: str) -> None:
    error = refused(GOOD.replace('"100 * part / whole"', f"'''{formula}'''"))
    assert error.line == 7 and reason in error.reason, error.reason


TEMPORAL_PART = GOOD.replace(
    'kind = "count"\ntype = "GtfsStop"\nq = "wheelchairBoarding==1"\nunit = "C62"',
    'kind = "temporal"\ntype = "AirQualityObserved"\nattribute = "pm25"\naggregation = "avg"\nunit = "GQ"',
)


def test_a_unit_mismatch_is_refused() -> None:
    error = refused(TEMPORAL_PART.replace("100 * part / whole", "part + whole"))
    assert error.line == 7 and "unit mismatch: GQ and a pure number cannot be added" in error.reason, error.reason
    error = refused(TEMPORAL_PART)  # micrograms per cubic metre per count is not a percentage
    assert error.line == 7 and error.reason == "unit mismatch: the formula gives GQ, the indicator says P1"
    assert parse_indicator(TEMPORAL_PART.replace('unit = "P1"', 'unit = "GQ"').replace("100 * ", ""), "x").unit == "GQ"


def test_units_multiply_and_divide() -> None:
    formula = compile_formula("a * b / b", {"a": "GQ", "b": "MTR"})
    assert formula.unit == (("GQ", 1),)
    assert compile_formula("max(a, 3) - a", {"a": "GQ"}).unit == (("GQ", 1),)
    with pytest.raises(FormulaError, match="unit mismatch"):
        compile_formula("min(a, b)", {"a": "GQ", "b": "MTR"})


def test_division_by_zero_is_an_outcome_not_a_crash() -> None:
    formula = compile_formula("100 * a / b", {"a": "C62", "b": "C62"})
    with pytest.raises(FormulaError, match="division by zero"):
        formula.evaluate({"a": 1.0, "b": 0.0})
    with pytest.raises(FormulaError, match="not a finite number"):
        compile_formula("a * a", {"a": "C62"}).evaluate({"a": 1e200})


def test_bad_input_declarations() -> None:
    assert (
        "aggregation must be one of"
        in refused(
            GOOD.replace(
                'kind = "count"\ntype = "GtfsStop"\nq', 'kind = "temporal"\nattribute = "x"\ntype = "GtfsStop"\nq'
            )
        ).reason
    )
    assert (
        "a count is in C62" in refused(GOOD.replace('q = "wheelchairBoarding==1"\nunit = "C62"', 'unit = "P1"')).reason
    )
    assert "missing field 'inputs'" in refused(GOOD.split("[inputs.part]")[0]).reason
    assert "period must be one of" in refused(GOOD.replace('"daily"', '"fortnightly"')).reason


def test_a_directory_adds_and_a_bad_file_in_it_is_named(tmp_path: Path) -> None:
    (tmp_path / "stops-share.toml").write_text(GOOD, encoding="utf-8")
    assert "stops-share" in load_indicators(str(tmp_path))
    (tmp_path / "z-bad.toml").write_text(GOOD.replace('name = "A share"', 'name = "A share'), encoding="utf-8")
    with pytest.raises(IndicatorFileError) as caught:
        load_indicators(str(tmp_path))
    assert caught.value.path.endswith("z-bad.toml") and caught.value.line == 2
