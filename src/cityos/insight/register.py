"""The register of models (issue 17, part 5): every algorithm whose output a citizen may meet.

In the spirit of public algorithm registers (Amsterdam's and Helsinki's), each entry says what the
algorithm is for, what it reads, how it works, which version runs, who answers for it and how
accurate it was measured to be. Entries come from providers: the indicators and the forecasters
are registered here; alert rules and anomaly detectors add theirs with `ModelRegister.add`
(a callable giving RegisterEntry items, asked at each request so the register is never stale).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cityos.insight import forecast as fc
from cityos.insight.anomaly import describe as describe_detector
from cityos.insight.anomaly_watch import AnomalyWatch
from cityos.insight.model import Indicator
from cityos.insight.rules import Rule

KINDS = ("indicator", "forecaster", "rule", "detector")  # the order of the listing


@dataclass(frozen=True, slots=True)
class RegisterEntry:
    kind: str  # one of KINDS (others are listed after them)
    id: str
    name: str
    purpose: str
    inputs: list[dict[str, Any]]  # what it reads: entity type and attributes (and how)
    method: str
    version: str
    owner: str
    accuracy: dict[str, Any]  # what was measured, how, and the result ("not measured" says so)
    output: str  # where its results are: an entity type or id
    details: dict[str, Any] = field(default_factory=dict)


Provider = Callable[[], Iterable[RegisterEntry]]


class ModelRegister:
    """The extension point: `app.state.model_register.add(provider)`."""

    def __init__(self) -> None:
        self.providers: list[Provider] = []

    def add(self, provider: Provider) -> None:
        self.providers.append(provider)

    def entries(self) -> list[dict[str, Any]]:
        found = [entry for provider in self.providers for entry in provider()]
        rank = {kind: i for i, kind in enumerate(KINDS)}
        found.sort(key=lambda e: (rank.get(e.kind, len(KINDS)), e.kind, e.id))
        return [asdict(entry) for entry in found]


def indicator_entries(indicators: dict[str, Indicator], owner: str = fc.OWNER) -> list[RegisterEntry]:
    """Indicators are exact computations: their 'accuracy' is their coverage rule and verify."""
    return [
        RegisterEntry(
            kind="indicator",
            id=item.id,
            name=item.name,
            purpose=item.description or item.name,
            inputs=[
                {"name": name, "kind": i.kind, "type": i.type}
                | ({"attribute": i.attribute} if i.attribute else {})
                | ({"aggregation": i.aggregation} if i.aggregation else {})
                | ({"q": i.q} if i.q else {})
                for name, i in item.inputs.items()
            ],
            method=f"{item.formula.text} ({item.standard} {item.clause}; over the {item.period} window, in SQL)",
            version=f"{item.version} (sha256 {item.digest[:12]})",
            owner=owner,
            accuracy={
                "kind": "exact computation",
                "checks": "each value is recomputed from its provenance by `cityos indicators verify`;"
                " the shipped set is tested against plain Python over the source files",
                "completeness": f"marked incomplete below {item.coverage:.0%} of the expected readings",
            },
            output=item.entity_id,
            details={"unit": item.unit, "period": item.period, "standard": f"{item.standard} {item.clause}"},
        )
        for item in sorted(indicators.values(), key=lambda i: i.id)
    ]


def forecaster_entries(forecasters: dict[str, fc.Forecaster], owner: str = fc.OWNER) -> list[RegisterEntry]:
    measured = fc.accuracy()
    entries = []
    for item in sorted(forecasters.values(), key=lambda f: f.id):
        found = measured.get("forecasters", {}).get(item.id)
        accuracy: dict[str, Any] = {"verdict": fc.verdict(item.id, measured)}
        if found:
            accuracy |= {"backtest": found, "command": measured.get("command"), "settings": measured.get("settings")}
            if found.get("simulated"):
                accuracy["why"] = (
                    "no public series of this kind in the shared data: measured on a simulated series only"
                    " (cityos.insight.backtest.simulated_parking), which says nothing of a real car park"
                )
        else:
            accuracy["why"] = "no public series of this kind in the shared data to backtest on"
        entries.append(
            RegisterEntry(
                kind="forecaster",
                id=item.id,
                name=item.name,
                purpose=item.purpose,
                inputs=[
                    {
                        "type": item.type,
                        "attribute": item.attribute,
                        "aggregation": f"avg per {item.step} s step, in SQL",
                        "history": f"{item.history} steps before the latest instance",
                    }
                ],
                method=item.method + f"; baseline: seasonal naive, m = {item.baseline_season}",
                version=str(item.version),
                owner=owner,
                accuracy=accuracy,
                output=f"{fc.FORECAST_TYPE} entities {item.entity_id('{entity}')}",
                details={"horizon": item.horizon, "step": item.step, "levels": list(fc.LEVELS), "unit": item.unit},
            )
        )
    return entries


def rule_entries(rules: dict[str, Rule], owner: str = fc.OWNER) -> list[RegisterEntry]:
    """The alert rules (insight/rules.py): what each watches and when it fires."""
    entries = []
    for rule in sorted(rules.values(), key=lambda r: r.id):
        tests = [
            {k: v for k, v in asdict(c).items() if k != "iri" and v not in (None, 0.0, ())} for c in rule.conditions
        ]
        entries.append(
            RegisterEntry(
                kind="rule",
                id=rule.id,
                name=rule.name,
                purpose=rule.description or f"raise a {rule.severity} alert on {rule.type}",
                inputs=[{"type": rule.type, "attribute": c.attribute} for c in rule.conditions],
                method=f"{rule.mode} of {len(tests)} test(s), held {rule.hold:g} s; evaluated on each change",
                version=str(rule.version),
                owner=owner,
                accuracy={"verdict": "not measured", "why": "a declared rule: it fires exactly when its tests hold"},
                output=f"Alert entities urn:ngsi-ld:Alert:{rule.id}:{{entity}}",
                details={"tests": tests, "severity": rule.severity, "category": rule.category, "digest": rule.digest},
            )
        )
    return entries


def detector_entries(watch: AnomalyWatch, owner: str = fc.OWNER) -> list[RegisterEntry]:
    """The anomaly detector (insight/anomaly.py), when it watches anything."""
    if not watch.enabled:
        return []
    about = describe_detector(watch.detector.settings)
    return [
        RegisterEntry(
            kind="detector",
            id=str(about["id"]),
            name="Anomalous readings",
            purpose=str(about["purpose"]),
            inputs=[{"attributes": "every numeric Property" if watch.watched is None else sorted(watch.watched)}],
            method=str(about["method"]),
            version="1",
            owner=owner,
            accuracy={"evaluation": about["evaluation"]},
            output="the `anomaly` sub-property of the flagged attribute",
            details={"settings": about["settings"]},
        )
    ]
