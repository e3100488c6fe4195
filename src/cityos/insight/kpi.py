"""A computed indicator as a Smart Data Models KeyPerformanceIndicator entity, and back.

The value is `kpiValue` (its observedAt the end of the window, so each period is one instance of
its history); the provenance is kept as sub-properties of kpiValue, where the value's history keeps
them with it. A value that could not be made has kpiValue "incomplete" or "error" (a string: an
NGSI-LD value cannot be null) and says why in `reason`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cityos.insight.engine import Result, iso, micros_of
from cityos.insight.model import Indicator
from cityos.jsonld.termmap import TermMap

KPI_TYPE = "KeyPerformanceIndicator"
PROVENANCE = (
    "status",
    "reason",
    "coverage",
    "windowStart",
    "windowEnd",
    "entitiesCounted",
    "entityCount",
    "instanceCount",
    "inputValues",
    "standard",
    "formulaVersion",
    "formulaDigest",
    "computedAt",
)


def _prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def kpi_body(result: Result) -> dict[str, Any]:
    """The normalized entity body (terms of the core @context) for the store's upsert."""
    indicator = result.indicator
    start, end = result.window
    inputs = result.inputs
    value: Any = result.value if result.value is not None else result.status
    kpi_value: dict[str, Any] = {"type": "Property", "value": value, "observedAt": iso(end)}
    if result.value is not None:
        kpi_value["unitCode"] = indicator.unit
    provenance = {
        "status": result.status,
        "reason": result.reason or "none",
        "coverage": round(result.coverage, 6),
        "windowStart": iso(start),
        "windowEnd": iso(end),
        "entitiesCounted": sorted({entity for item in inputs for entity in item.entities}) or ["none"],
        "entityCount": {item.name: item.entity_count for item in inputs},
        "instanceCount": {item.name: item.instances for item in inputs},
        "inputValues": {item.name: item.value if item.value is not None else "none" for item in inputs},
        "standard": f"{indicator.standard} {indicator.clause}",
        "formulaVersion": indicator.version,
        "formulaDigest": indicator.digest,
        "computedAt": result.computed_at,
    }
    kpi_value.update({key: _prop(provenance[key]) for key in PROVENANCE})
    district = result.district
    where = {} if district is None else {"areaServed": _prop(district.name), "district": _prop(district.id)}
    return where | {
        "id": indicator.entity_of(district),
        "type": KPI_TYPE,
        "name": _prop(indicator.name),
        "description": _prop(indicator.description or indicator.name),
        "category": _prop(["quantitative"]),
        "calculationMethod": _prop("automatic"),
        "calculationFrequency": _prop(indicator.period),
        "calculationFormula": _prop(indicator.formula.text),
        "calculationPeriod": _prop({"from": iso(start)[:10], "to": iso(end - 1)[:10]}),
        "aggregatedData": _prop(
            [
                {"entityType": item.type, **({"attrs": [item.attribute]} if item.attribute else {})}
                if item.kind != "profile"
                else {"cityProfile": item.key}
                for item in indicator.inputs.values()
            ]
        ),
        "kpiValue": kpi_value,
    }


@dataclass(frozen=True, slots=True)
class Stored:
    """What verify needs of a stored KPI value."""

    value: Any
    window: tuple[int, int]
    digest: str
    provenance: dict[str, Any]


def stored_value(entity: dict[str, Any], terms: TermMap) -> Stored | None:
    """The kpiValue and its provenance of a stored (expanded) KeyPerformanceIndicator entity."""
    instances = entity.get("attrs", {}).get(terms.expand("kpiValue"), [])
    if not instances:
        return None
    instance = instances[0]
    provenance = {key: instance[terms.expand(key)].get("value") for key in PROVENANCE if terms.expand(key) in instance}
    try:
        window = (micros_of(provenance["windowStart"]), micros_of(provenance["windowEnd"]))
    except (KeyError, TypeError, ValueError):
        return None
    return Stored(instance.get("value"), window, str(provenance.get("formulaDigest", "")), provenance)


@dataclass(frozen=True, slots=True)
class Verdict:
    matches: bool
    stored: Any
    recomputed: Any
    reason: str


def compare(indicator: Indicator, stored: Stored, again: Result) -> Verdict:
    """Whether a recomputation from the stored provenance gives the stored value."""
    recomputed: Any = again.value if again.value is not None else again.status
    if stored.digest != indicator.digest:
        return Verdict(False, stored.value, recomputed, "the indicator's file changed since (formulaDigest differs)")
    if isinstance(stored.value, int | float) and isinstance(recomputed, float):
        same = math.isclose(stored.value, recomputed, rel_tol=1e-9, abs_tol=1e-12)
    else:
        same = stored.value == recomputed
    counts = {item.name: item.instances for item in again.inputs}
    if same and stored.provenance.get("instanceCount") not in (None, counts):
        return Verdict(False, stored.value, recomputed, "same value, but the inputs' instance counts differ")
    return Verdict(same, stored.value, recomputed, "" if same else "the data of the window changed since")
