"""The access policy engine in-process: parsing, the compiled views (visible, project, prefilter),
write checks and conditions. Principals are built directly; HTTP comes in test_policy_api.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cityos.auth.principal import ANONYMOUS, Principal
from cityos.entities import update
from cityos.entities.model import NGSI, Entity
from cityos.errors import BadRequestData
from cityos.jsonld.registry import ContextRegistry
from cityos.net import OutboundPolicy
from cityos.policy.compiled import AccessDenied, HiddenEntity, PolicyAuthorizer, current_purpose
from cityos.policy.decision import AccessPrefilter, Target
from cityos.policy.enforce import WriteCheck, guarded, restrict, write_check
from cityos.policy.model import parse_policy
from cityos.query.pushdown import ValueFilter
from cityos.store.base import EntityQuery

EXPAND = ContextRegistry(OutboundPolicy()).core_terms().expand
D = "https://uri.etsi.org/ngsi-ld/default-context/"
STAMP = "2026-01-01T00:00:00.000000Z"
DISTRICT = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}


def prop(value: Any) -> list[dict[str, Any]]:
    return [{"type": "Property", "value": value, "createdAt": STAMP, "modifiedAt": STAMP}]


def vehicle(number: int, x: float = 5, y: float = 5) -> Entity:
    return {
        "id": f"urn:ngsi-ld:Vehicle:{number}",
        "type": [D + "Vehicle"],
        "modifiedAt": STAMP,
        "attrs": {
            D + "licensePlate": prop(f"P-{number}"),
            D + "speed": prop(30),
            NGSI + "location": [{"type": "GeoProperty", "value": {"type": "Point", "coordinates": [x, y]}}],
        },
    }


def parking(number: int) -> Entity:
    return {
        "id": f"urn:ngsi-ld:OffStreetParking:{number}",
        "type": [D + "OffStreetParking"],
        "modifiedAt": STAMP,
        "attrs": {D + "availableSpotNumber": prop(10), D + "contract": prop("secret terms")},
    }


def authorizer(*documents: dict[str, Any], clock: Any = None) -> PolicyAuthorizer:
    return PolicyAuthorizer([parse_policy(d, EXPAND) for d in documents], clock=clock)


def user(*roles: str, tenants: frozenset[str] | None = None, **extra: Any) -> Principal:
    return Principal(id=f"key:{'-'.join(roles) or 'x'}", kind="key", tenants=tenants, roles=frozenset(roles), **extra)


PUBLIC_PARKING = {
    "id": "public-reads-parking",
    "effect": "allow",
    "principals": {"anonymous": True, "authenticated": True},
    "actions": ["read"],
    "resources": {"types": ["OffStreetParking"], "exceptAttrs": ["contract"]},
}
OPERATOR = {
    "id": "operator-writes-parking",
    "effect": "allow",
    "principals": {"roles": ["parking-operator"]},
    "actions": ["read", "create", "update", "delete"],
    "resources": {"types": ["OffStreetParking"]},
}
POLICE = {
    "id": "police-plates-district",
    "effect": "allow",
    "principals": {"roles": ["police"]},
    "actions": ["read"],
    "resources": {"types": ["Vehicle"], "area": DISTRICT},
}


def test_parsing_refuses_what_it_cannot_mean() -> None:
    bad = [
        {"id": "x", "effect": "maybe", "principals": {"anonymous": True}, "actions": ["read"]},
        {"id": "x", "effect": "allow", "principals": {}, "actions": ["read"]},
        {"id": "x", "effect": "allow", "principals": {"roles": ["a"]}, "actions": ["fly"]},
        {"id": "x", "effect": "allow", "principals": {"roles": ["a"]}, "actions": ["read"], "resources": {"x": 1}},
        {"id": "x y", "effect": "allow", "principals": {"roles": ["a"]}, "actions": ["read"]},
        {**OPERATOR, "resources": {"idPattern": "(a)\\1"}},
        {**OPERATOR, "resources": {"attrs": ["a"], "exceptAttrs": ["b"]}},
        {**OPERATOR, "resources": {"area": {"type": "Point", "coordinates": [1, 2]}}},
        {**OPERATOR, "conditions": {"hours": "25:00-26:00"}},
        {**OPERATOR, "conditions": {"expires": "2026-01-01T00:00:00"}},  # no zone
        {"id": "x", "personal": {"attrs": ["a"]}, "effect": "allow"},
    ]
    for document in bad:
        with pytest.raises(BadRequestData):
            parse_policy(document, EXPAND)
    policy = parse_policy(POLICE, EXPAND)
    assert policy.resources.types == frozenset({D + "Vehicle"}) and policy.actions == frozenset({"read"})


def test_no_policy_denies_everything_and_admin_sees_all() -> None:
    engine = authorizer()
    view = engine.read_view(user("reader"), "")
    assert not view.unrestricted and not view.visible(parking(1))
    assert view.prefilter() == AccessPrefilter(types=())
    admin = engine.read_view(user("admin"), "")
    assert admin.visible(parking(1)) and admin.project(parking(1)) == parking(1) and admin.prefilter() is None


def test_public_reads_availability_not_contracts() -> None:
    engine = authorizer(PUBLIC_PARKING)
    view = engine.read_view(ANONYMOUS, "")
    assert view.visible(parking(1)) and not view.visible(vehicle(1))
    assert list(view.project(parking(1))["attrs"]) == [D + "availableSpotNumber"]
    assert view.prefilter() == AccessPrefilter(types=[D + "OffStreetParking"], id_patterns=None)
    assert view.prefilter_exact and view.projects
    target = Target("", "urn:ngsi-ld:OffStreetParking:1", (D + "OffStreetParking",))
    assert engine.allows(ANONYMOUS, "read", target) and not engine.allows(ANONYMOUS, "update", target)


def test_police_read_plates_in_their_district_only() -> None:
    engine = authorizer(POLICE)
    view = engine.read_view(user("police"), "")
    assert view.visible(vehicle(1, 5, 5))
    assert not view.visible(vehicle(2, 50, 5))  # outside the district
    assert view.project(vehicle(1))["attrs"][D + "licensePlate"] == prop("P-1")
    assert not view.prefilter_exact  # the area is judged per entity, after the SQL prefilter
    assert engine.read_view(user("traffic"), "").visible(vehicle(1)) is False


def test_deny_wins_over_allow_at_entity_and_attribute_level() -> None:
    everyone = {**PUBLIC_PARKING, "resources": {"types": ["OffStreetParking", "Vehicle"]}}
    no_plates = {
        "id": "no-plates",
        "effect": "deny",
        "principals": {"anonymous": True},
        "actions": ["read"],
        "resources": {"attrs": ["licensePlate"]},
    }
    no_7 = {
        "id": "no-7",
        "effect": "deny",
        "principals": {"anonymous": True},
        "actions": ["read"],
        "resources": {"idPattern": ":7$"},
    }
    view = authorizer(everyone, no_plates, no_7).read_view(ANONYMOUS, "")
    assert D + "licensePlate" not in view.project(vehicle(1))["attrs"]
    assert D + "speed" in view.project(vehicle(1))["attrs"]
    assert view.visible(vehicle(1)) and not view.visible(vehicle(7))
    assert not view.prefilter_exact


def test_tenants_bound_both_the_principal_and_the_policy() -> None:
    in_city = {**OPERATOR, "resources": {"tenants": ["city"], "types": ["OffStreetParking"]}}
    engine = authorizer(in_city)
    operator = user("parking-operator", tenants=frozenset({"city"}))
    assert engine.read_view(operator, "city").visible(parking(1))
    assert not engine.read_view(operator, "other").visible(parking(1))
    elsewhere = user("parking-operator", tenants=frozenset({"other"}))
    assert not engine.read_view(elsewhere, "city").visible(parking(1))  # the key is not for this tenant


def test_conditions_purpose_hours_and_expiry() -> None:
    now = [datetime(2026, 6, 1, 12, 0, tzinfo=UTC)]
    with_purpose = {**POLICE, "conditions": {"purpose": ["enforcement"], "hours": "07:00-19:00"}}
    expired = {**OPERATOR, "conditions": {"expires": "2026-05-01T00:00:00Z"}}
    engine = authorizer(with_purpose, expired, clock=lambda: now[0])
    police = user("police")
    assert not engine.read_view(police, "").visible(vehicle(1))  # no purpose given
    token = current_purpose.set("enforcement")
    try:
        assert engine.read_view(police, "").visible(vehicle(1))
        now[0] = datetime(2026, 6, 1, 20, 0, tzinfo=UTC)
        assert not engine.read_view(police, "").visible(vehicle(1))  # outside the hours
    finally:
        current_purpose.reset(token)
    assert not engine.read_view(user("parking-operator"), "").visible(parking(1))


def test_writes_the_operator_writes_parking_only() -> None:
    engine = authorizer(OPERATOR, PUBLIC_PARKING)
    operator = user("parking-operator")
    check = write_check(engine, operator, "")
    assert check is not None
    changed = parking(1)
    changed["attrs"][D + "availableSpotNumber"] = prop(3)
    check.check("urn:ngsi-ld:OffStreetParking:1", parking(1), changed)  # allowed
    with pytest.raises(AccessDenied):
        check.check("urn:ngsi-ld:Vehicle:1", None, vehicle(1))  # may not create vehicles
    # a vehicle it cannot even see: not found, whatever the change
    with pytest.raises(HiddenEntity):
        guarded("urn:ngsi-ld:Vehicle:1", update.delete("urn:ngsi-ld:Vehicle:1"), check)(vehicle(1))
    # the public sees parking but may not change it: 403, and the mutator's result is never used
    public = write_check(engine, ANONYMOUS, "")
    assert public is not None
    with pytest.raises(AccessDenied):
        guarded("urn:ngsi-ld:OffStreetParking:1", update.delete("urn:ngsi-ld:OffStreetParking:1"), public)(parking(1))


def test_attribute_write_rules() -> None:
    only_spots = {
        "id": "spots",
        "effect": "allow",
        "principals": {"roles": ["sensor"]},
        "actions": ["read", "update"],
        "resources": {"types": ["OffStreetParking"], "attrs": ["availableSpotNumber"]},
    }
    refuses_only_the_contract(write_check(authorizer(only_spots), user("sensor"), ""))


def refuses_only_the_contract(check: WriteCheck | None) -> None:
    """A parking update of the spots passes; one that also rewrites the contract is refused."""
    assert check is not None
    after = parking(1)
    after["attrs"][D + "availableSpotNumber"] = prop(2)
    check.check("p", parking(1), after)
    after["attrs"][D + "contract"] = prop("rewritten")
    with pytest.raises(AccessDenied, match="contract"):
        check.check("p", parking(1), after)


def test_restrict_puts_the_policy_into_the_query() -> None:
    view = authorizer(PUBLIC_PARKING).read_view(ANONYMOUS, "")
    plain = restrict(EntityQuery(attrs=None), view)
    assert plain.access == AccessPrefilter(types=[D + "OffStreetParking"]) and plain.predicate is None
    # a type query the policy allows as a whole needs no second type filter
    typed = restrict(EntityQuery(types=[D + "OffStreetParking"]), view)
    assert typed.access is None and typed.predicate is None
    wider = restrict(EntityQuery(types=[D + "OffStreetParking", D + "Vehicle"]), view)
    assert wider.access == AccessPrefilter(types=[D + "OffStreetParking"])
    # a q on the hidden contract sees the entity without it: never matches
    hidden = restrict(EntityQuery(predicate=lambda e: D + "contract" in e["attrs"]), view)
    assert hidden.predicate is not None and not hidden.predicate(parking(1))
    police = authorizer(POLICE).read_view(user("police"), "")
    area = restrict(EntityQuery(), police)
    assert area.predicate is not None and area.predicate(vehicle(1)) and not area.predicate(vehicle(2, 50, 50))


def test_a_q_on_attributes_the_view_always_shows_stays_in_sql() -> None:
    """With auth on, q on an attribute the policy never hides keeps the query exact in SQL (paged
    and counted there, as with auth off); a q, attrs or geo box on an attribute it may hide is
    judged on the projected entity instead."""
    view = authorizer(PUBLIC_PARKING).read_view(ANONYMOUS, "")
    spots = ValueFilter(D + "availableSpotNumber", ">", (5.0,))
    contract = ValueFilter(D + "contract", "exists")

    def exact(*filters: ValueFilter, **fields: Any) -> EntityQuery:
        def predicate(entity: Entity) -> bool:
            return all(f.attr in entity["attrs"] for f in filters)

        return EntityQuery(
            types=[D + "OffStreetParking"],
            value_filters=filters,
            predicate=predicate,
            predicate_in_sql=predicate,
            **fields,
        )

    kept = restrict(exact(spots), view)
    assert kept.predicate is kept.predicate_in_sql and kept.access is None
    on_hidden = restrict(exact(contract), view)
    assert on_hidden.predicate is not on_hidden.predicate_in_sql
    assert on_hidden.predicate is not None and not on_hidden.predicate(parking(1))  # the contract is not seen
    asks_hidden = restrict(exact(spots, attrs=[D + "contract"]), view)
    assert asks_hidden.predicate is not asks_hidden.predicate_in_sql
    geo_hidden = restrict(exact(spots, geo_box=(D + "contract", (0.0, 1.0, 0.0, 1.0))), view)
    assert geo_hidden.predicate is not geo_hidden.predicate_in_sql
    # an allow-list policy: only the listed attributes are always shown
    listed = {**PUBLIC_PARKING, "resources": {"types": ["OffStreetParking"], "attrs": ["availableSpotNumber"]}}
    listing = authorizer(listed).read_view(ANONYMOUS, "")
    listed_query = restrict(exact(spots), listing)
    assert listed_query.predicate is listed_query.predicate_in_sql
    assert listing.shows_always([D + "availableSpotNumber"]) and not listing.shows_always([D + "contract"])
    # an attribute deny hides what the allow shows
    deny = {
        "id": "no-spots",
        "effect": "deny",
        "principals": {"anonymous": True},
        "actions": ["read"],
        "resources": {"types": ["OffStreetParking"], "attrs": ["availableSpotNumber"]},
    }
    denied = authorizer(PUBLIC_PARKING, deny).read_view(ANONYMOUS, "")
    assert not denied.shows_always([D + "availableSpotNumber"])
    denied_query = restrict(exact(spots), denied)
    assert denied_query.predicate is not denied_query.predicate_in_sql


def test_compiled_views_are_cached_until_the_policies_change() -> None:
    engine = authorizer(PUBLIC_PARKING)
    first = engine.read_view(ANONYMOUS, "")
    assert engine.read_view(ANONYMOUS, "") is first
    engine.replace([parse_policy(OPERATOR, EXPAND)])
    assert engine.read_view(ANONYMOUS, "") is not first
    assert not engine.read_view(ANONYMOUS, "").visible(parking(1))


def test_personal_markers() -> None:
    marker = {"id": "plates-personal", "personal": {"attrs": ["licensePlate"]}}
    engine = authorizer(POLICE, marker)
    view = engine.read_view(user("police"), "")
    assert view.personal_attrs(vehicle(1)) == [D + "licensePlate"]
    assert view.personal_attrs(parking(1)) == []


def test_allows_for_resources_and_types() -> None:
    subscribe_parking = {**PUBLIC_PARKING, "id": "sub", "actions": ["subscribe"]}
    anyone_subscribes = {**subscribe_parking, "id": "all", "principals": {"roles": ["city"]}, "resources": {}}
    engine = authorizer(subscribe_parking, anyone_subscribes)
    parking_type = (D + "OffStreetParking",)
    assert engine.allows(ANONYMOUS, "subscribe", Target("", types=parking_type, resource="subscription"))
    assert not engine.allows(ANONYMOUS, "subscribe", Target("", resource="subscription"))  # every type
    assert engine.allows(user("city"), "subscribe", Target("", resource="subscription"))
    assert not engine.allows(user("city"), "read", Target("", resource="subscription"))


def test_attribute_masks_combine_the_matching_rules() -> None:
    """What an entity shows is decided by the rules matching it: deny-lists, allow-lists and
    attribute denies together; an entity with nothing hidden is answered as it is (no copy)."""
    everything_but_contract = {
        **PUBLIC_PARKING,
        "resources": {"types": ["OffStreetParking", "Vehicle"], "exceptAttrs": ["contract", "speed"]},
    }
    but_speed = {
        **PUBLIC_PARKING,
        "id": "speed-too",
        "resources": {"types": ["Vehicle"], "exceptAttrs": ["licensePlate"]},
    }
    only_spots = {
        **PUBLIC_PARKING,
        "id": "spots",
        "resources": {"types": ["OffStreetParking"], "attrs": ["availableSpotNumber"]},
    }
    no_plates = {**PUBLIC_PARKING, "id": "no-plates", "effect": "deny", "resources": {"attrs": ["licensePlate"]}}
    # a vehicle matches two deny-lists: only what both hide (nothing but the plate, denied anyway) stays hidden
    view = authorizer(everything_but_contract, but_speed, no_plates).read_view(ANONYMOUS, "")
    assert sorted(view.project(vehicle(1))["attrs"]) == [D + "speed", NGSI + "location"]
    assert view.readable(vehicle(1)) == {D + "speed", NGSI + "location"}
    # a parking matches one deny-list: the contract is hidden
    assert sorted(view.project(parking(1))["attrs"]) == [D + "availableSpotNumber"]
    # an allow-list with a deny-list on the same entity: either lets an attribute through
    mixed = authorizer(everything_but_contract, only_spots).read_view(ANONYMOUS, "")
    assert sorted(mixed.project(parking(1))["attrs"]) == [D + "availableSpotNumber"]
    plain = parking(2)
    del plain["attrs"][D + "contract"]
    assert mixed.project(plain) is plain  # nothing present is hidden: the entity itself, not a copy
    assert mixed.project(vehicle(1))["attrs"].keys() == {D + "licensePlate", NGSI + "location"}
    # an entity no allow matches shows nothing
    assert authorizer(only_spots).read_view(ANONYMOUS, "").project(vehicle(1))["attrs"] == {}


def test_views_and_write_guards_are_reused_for_the_same_principal() -> None:
    engine = authorizer(OPERATOR)
    operator = user("parking-operator")
    assert engine.read_view(operator, "") is engine.read_view(operator, "")
    assert engine.write_guard(operator, "") is engine.write_guard(operator, "")
    # the same id with other roles (a changed key) is not taken for the cached principal
    demoted = Principal(id=operator.id, kind="key", tenants=None, roles=frozenset())
    assert not engine.read_view(demoted, "").visible(parking(1))
    assert engine.read_view(operator, "").visible(parking(1))
    # a write to an attribute the write rules hide is refused only when its value changes
    hidden = {**OPERATOR, "resources": {"types": ["OffStreetParking"], "exceptAttrs": ["contract"]}}
    refuses_only_the_contract(write_check(authorizer(hidden), operator, ""))


def test_an_admin_kept_out_of_a_tenant_never_shares_the_view_of_one_let_in() -> None:
    """Views are shared by principals with the same applicable policies (and cached renderings are
    keyed by the view): the admin's implicit allow must not travel to an admin of other tenants."""
    engine = authorizer(OPERATOR)  # no policy applies to either admin: only the implicit allow
    everywhere = user("admin")
    elsewhere = Principal(id="key:admin-a", kind="key", tenants=frozenset({"a"}), roles=frozenset({"admin"}))
    assert engine.read_view(everywhere, "b").visible(parking(1))
    assert not engine.read_view(elsewhere, "b").visible(parking(1))
    assert engine.read_view(elsewhere, "a").visible(parking(1))
    assert engine.read_view(everywhere, "b").visible(parking(1))
