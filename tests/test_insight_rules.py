"""Alert rule files: refused at load with the file, the line and the reason; conditions judged as
a plain reading of the rule says (the polygon test checked against shapely)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from shapely.geometry import Point, Polygon

from cityos.insight.rules import RuleFileError, evaluate, inside, load_rules, parse_rule, seconds_of

GOOD = """id = "pm25-high"
name = "PM2.5 above 75 for 2 hours"
type = "AirQualityObserved"
severity = "high"
category = "environment"
subCategory = "airPollution"
for = "2h"
[when]
attribute = "pm25"
above = 75
clear = 60
"""


def entity(**values: object) -> dict[str, object]:
    attrs = {
        name: [{"type": "Property", "value": value, "observedAt": "2026-01-01T00:00:00Z"}]
        for name, value in values.items()
    }
    return {"id": "urn:x", "type": ["T"], "attrs": attrs}


def test_a_good_rule_reads_as_written() -> None:
    rule = parse_rule(GOOD, "pm25.toml")
    assert (rule.id, rule.severity, rule.hold, rule.mode) == ("pm25-high", "high", 7200.0, "all")
    [condition] = rule.conditions
    assert (condition.kind, condition.above, condition.clear) == ("threshold", 75, 60)
    assert (
        rule.alert_id("urn:ngsi-ld:AirQualityObserved:1")
        == "urn:ngsi-ld:Alert:pm25-high:urn:ngsi-ld:AirQualityObserved:1"
    )
    assert [seconds_of(t) for t in ("30s", "15m", "2h", "1d", "2 weeks")] == [30, 900, 7200, 86400, None]


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        (('severity = "high"', 'severity = "dire"'), 4, "severity must be one of"),
        (("above = 75", "abov = 75"), 10, "unknown field 'abov'"),
        (("above = 75", "above = 75 75"), 10, "syntax error"),
        (('for = "2h"', 'for = "two hours"'), 7, "for is a duration"),
        (("clear = 60", "clear = 80"), 11, "the clear level of an above threshold"),
        (("above = 75", 'above = "high"'), 10, "above must be a float"),
        (('attribute = "pm25"\n', 'attribute = "pm25"\nabsent = "30m"\n'), 9, "a condition is one of"),
    ],
)
def test_a_bad_rule_is_refused_with_its_line(change: tuple[str, str], line: int, reason: str) -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rule(GOOD.replace(*change), "bad.toml")
    assert caught.value.line == line and reason in caught.value.reason, str(caught.value)
    assert str(caught.value).startswith(f"bad.toml:{line}: ")


def test_combinations_and_absence_are_checked() -> None:
    base = GOOD.split("[when]")[0].replace('for = "2h"\n', "")
    absent_mixed = base + '[when]\nall = [{attribute = "pm25", absent = "30m"}, {attribute = "pm25", above = 1}]\n'
    with pytest.raises(RuleFileError, match="an absent condition stands alone"):
        parse_rule(absent_mixed, "x.toml")
    ring = base + "[when]\ninside = [[0, 0], [1, 1]]\n"
    with pytest.raises(RuleFileError, match="inside is a ring"):
        parse_rule(ring, "x.toml")
    with pytest.raises(RuleFileError, match="missing field 'when'"):
        parse_rule(base, "x.toml")


def test_the_directory_refuses_its_first_bad_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD)
    assert list(load_rules(str(tmp_path))) == ["pm25-high"]
    (tmp_path / "b.toml").write_text(GOOD.replace("category", "categ"))
    with pytest.raises(RuleFileError) as caught:
        load_rules(str(tmp_path))
    assert caught.value.path.endswith("b.toml") and caught.value.line == 5


def test_thresholds_hold_with_hysteresis() -> None:
    rule = parse_rule(GOOD.replace('for = "2h"\n', ""), "x.toml")
    # closed: fires only above 75; open: holds until the value falls to 60 or below
    expected = {
        (80, False): True,
        (75, False): False,
        (70, False): False,
        (70, True): True,
        (61, True): True,
        (60, True): False,
        (59, True): False,
    }
    for (value, is_open), holds in expected.items():
        assert (evaluate(rule, entity(pm25=value), None, is_open) is not None) is holds, (value, is_open)
    assert evaluate(rule, entity(pm25="n/a"), None, False) is None  # not a number: never meets it


def test_a_rate_is_per_period() -> None:
    text = (
        GOOD.split("[when]")[0].replace('for = "2h"\n', "") + '[when]\nattribute = "t"\nrate_above = 10\nper = "1h"\n'
    )
    rule = parse_rule(text, "x.toml")
    before = {"attrs": {"t": [{"value": 20, "observedAt": "2026-01-01T00:00:00Z"}]}}
    slow = {"attrs": {"t": [{"value": 24, "observedAt": "2026-01-01T00:30:00Z"}]}}  # 8 an hour
    fast = {"attrs": {"t": [{"value": 26, "observedAt": "2026-01-01T00:30:00Z"}]}}  # 12 an hour
    assert evaluate(rule, slow, before, False) is None
    assert evaluate(rule, fast, before, False) == {"tRate": 12.0}
    assert evaluate(rule, fast, None, False) is None  # no previous reading: no rate


def test_inside_agrees_with_shapely() -> None:
    ring = ((116.30, 39.85), (116.45, 39.83), (116.50, 39.95), (116.40, 40.02), (116.33, 39.97))
    shape = Polygon(ring)
    draw = random.Random(17)
    for _ in range(2000):
        x, y = draw.uniform(116.25, 116.55), draw.uniform(39.80, 40.05)
        if shape.exterior.distance(Point(x, y)) < 1e-9:
            continue  # on the edge: either answer is fair
        assert inside((x, y), ring) is shape.contains(Point(x, y)), (x, y)


def test_the_command_line_lists_or_refuses(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD)
    command = [sys.executable, "-m", "cityos", "rules", "list", "--rules-dir", str(tmp_path)]
    listed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert (
        listed.returncode == 0 and listed.stdout == "pm25-high\tAirQualityObserved\thigh\tpm25 threshold\tfor 7200s\n"
    )
    (tmp_path / "b.toml").write_text(GOOD.replace('category = "environment"', 'category = "noise"'))
    refused = subprocess.run(command, capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and f"{tmp_path / 'b.toml'}:5: category must be one of" in refused.stderr
