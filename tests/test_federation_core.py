"""The framework-free core of distributed operations: which registrations take part and how
(planning), how answers combine (merge), and the Via rule (loops)."""

from __future__ import annotations

from typing import Any

import pytest

from cityos.federation import loops, merge, planning
from cityos.query.q import parse_q

VEHICLE = "https://example.org/Vehicle"
SPEED = "https://example.org/speed"


def reg(reg_id: str, **extra: Any) -> dict[str, Any]:
    selector = {"type": VEHICLE, **({"id": extra.pop("entity")} if "entity" in extra else {})}
    info: dict[str, Any] = {"entities": [selector]}
    if "attrs" in extra:
        info["propertyNames"] = extra.pop("attrs")
    return {"id": reg_id, "type": "ContextSourceRegistration", "information": [info], "endpoint": "http://s", **extra}


def test_operation_groups_and_the_default() -> None:
    assert "queryEntity" in planning.operations(reg("a"))  # no operations: federationOps
    assert "createEntity" not in planning.operations(reg("a"))
    assert {"createEntity", "purgeEntity"} <= planning.operations(reg("a", operations=["redirectionOps"]))
    assert planning.operations(reg("a", operations=["updateOps", "queryBatch"])) >= {"updateAttrs", "queryBatch"}


def test_targets_follow_operations_expiry_and_mode() -> None:
    documents = [
        reg("read"),
        reg("write", operations=["redirectionOps"]),
        reg("aux", operations=["redirectionOps"], mode="auxiliary"),
        reg("gone", operations=["redirectionOps"], expiresAt="2000-01-01T00:00:00Z"),
    ]
    assert [t.id for t in planning.targets(documents, "queryEntity", types=[VEHICLE])] == ["read", "write", "aux"]
    # auxiliary sources never take writes; an expired registration takes nothing
    assert [t.id for t in planning.targets(documents, "createEntity", ids=["urn:x"], types=[VEHICLE])] == ["write"]
    assert planning.targets(documents, "queryEntity", types=["https://example.org/Bus"]) == []


def test_exclusive_attributes_and_redirect_shape_the_plan() -> None:
    exclusive = reg("exc", entity="urn:v:1", attrs=[SPEED], mode="exclusive", operations=["redirectionOps"])
    found = planning.targets([exclusive], "updateAttrs", ids=["urn:v:1"])
    shared = planning.plan(found)
    assert shared.local and shared.remote_only == {SPEED} and found[0].ids == ("urn:v:1",)
    redirect = reg("red", mode="redirect", operations=["redirectionOps"])
    assert not planning.plan(planning.targets([redirect], "deleteEntity", ids=["urn:v:1"])).local


def test_conflicts_name_exclusive_and_redirect_registrations_without_the_operation() -> None:
    documents = [
        reg("exc", entity="urn:v:1", attrs=[SPEED], mode="exclusive", operations=["queryEntity"]),
        reg("inc", operations=["queryEntity"]),
        reg("red", mode="redirect", operations=["redirectionOps"]),
    ]
    assert [t.id for t in planning.conflicts(documents, "deleteEntity", ids=["urn:v:1"])] == ["exc"]
    assert planning.conflicts(documents, "queryEntity", ids=["urn:v:1"]) == []  # reads never conflict
    other = ["https://example.org/brand"]
    assert planning.conflicts(documents, "updateAttrs", ids=["urn:v:1"], attrs=other) == []


@pytest.mark.parametrize(
    ("csf", "expected"),
    [
        ('sourceType=="sensor"', True),
        ('sourceType=="archive"', False),
        ('sourceType!="archive"', True),
        ("sourceType", True),
        ("missing", False),
        ('sourceType=="archive"|mode=="inclusive"', True),
        ('sourceType=="sensor";mode=="redirect"', False),
    ],
)
def test_csf_reads_the_registrations_members(csf: str, expected: bool) -> None:
    doc = reg("a", sourceType={"type": "Property", "value": "sensor"}, mode="inclusive")
    assert planning.csf_matches(doc, parse_q(csf), lambda name: name) is expected


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ({"localOnly": True}, True),
        ({"https://uri.etsi.org/ngsi-ld/localOnly": True}, True),  # kept under its expanded name
        ({"management": {"localOnly": True}}, True),  # RegistrationManagementInfo (5.2.34)
        ({"management": {"localOnly": False}}, False),
        ({"localOnly": "true"}, False),
        ({}, False),
    ],
)
def test_local_only_members(members: dict[str, object], expected: bool) -> None:
    (target,) = planning.targets([reg("a", **members)], "retrieveEntity", ids=["urn:v:1"])
    assert target.local_only is expected


def test_most_recent_instance_wins_per_dataset() -> None:
    old = {"type": "Property", "value": 1, "observedAt": "2026-01-01T00:00:00Z"}
    new = {"type": "Property", "value": 2, "observedAt": "2026-02-01T00:00:00Z"}
    other = {"type": "Property", "value": 9, "datasetId": "urn:d:2"}
    assert merge.merge_attribute(old, new) == new
    assert merge.merge_attribute(new, old) == new
    assert merge.merge_attribute([old, other], new) == [new, other]
    untimed = {"type": "Property", "value": 5}
    assert merge.merge_attribute(untimed, {"type": "Property", "value": 6}) == untimed  # the first ranked keeps it


def test_entities_merge_by_id_with_types_united() -> None:
    local = [{"id": "urn:a", "type": "Car", "brand": {"type": "Property", "value": "Kia"}, "@context": "x"}]
    remote = [
        {"id": "urn:a", "type": ["Car", "Taxi"], "speed": {"type": "Property", "value": 3}},
        {"id": "urn:b", "type": "Car"},
        "garbage",
    ]
    merged = merge.merge_lists([local, remote])
    assert [e["id"] for e in merged] == ["urn:a", "urn:b"]
    assert merged[0]["type"] == ["Car", "Taxi"] and set(merged[0]) == {"id", "type", "brand", "speed"}


def test_catalogues_unite() -> None:
    one = {"id": "l1", "type": "EntityTypeList", "typeList": ["Car"]}
    two = {"id": "l2", "type": "EntityTypeList", "typeList": ["Bus", "Car"]}
    assert merge.merge_catalogue([one, None, two])["typeList"] == ["Car", "Bus"]
    details = merge.merge_catalogue(
        [[{"id": "C", "attributeNames": ["a"]}], [{"id": "C", "attributeNames": ["b"]}, {"id": "B"}]]
    )
    assert details == [{"id": "C", "attributeNames": ["a", "b"]}, {"id": "B"}]
    assert merge.merge_catalogue([None, None]) is None


def test_via_names_each_hop_and_refuses_a_return() -> None:
    via = loops.extend(loops.extend(None, "a:1"), "b:2")
    assert via == "1.1 a:1, 1.1 b:2" and loops.hops(via) == ["a:1", "b:2"]
    loops.check(via, "c:3")
    with pytest.raises(loops.LoopDetected) as caught:
        loops.check("HTTP/1.1 A:1", "a:1")
    assert caught.value.status == 508
