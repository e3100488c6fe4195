"""The entity read path after issue 15's changes: rendering straight from the stored form with the
context's compacted names, expiry checked only where a row's next_expiry has passed, and plain-dict
parameters. Every representation of an entity read right after an update shows the update, on
both back-ends (nothing rendered is kept between requests)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.entities.expiry import visible, visible_at
from cityos.entities.render import RenderOptions, render_entity, render_instance
from cityos.jsonld.termmap import TermMap, define_terms
from cityos.ngsild.querying import LINK_SAFE, _quoted

ENTITIES = "/ngsi-ld/v1/entities"
V = "https://example.org/"
STAMP = "2026-01-01T00:00:00.000Z"
PAST = "2001-01-01T00:00:00.000000Z"
FUTURE = "2999-01-01T00:00:00.000000Z"


def stored(number: int = 1, *, speed: int = 5, gone: bool = True) -> dict[str, Any]:
    """An entity in the stored (expanded) form with every member kind the renderer rewrites
    (urn:x:<number>; gone: with a sub-attribute whose value is null)."""
    entity: dict[str, Any] = {
        "id": f"urn:x:{number}",
        "type": [V + "T"],
        "scope": ["/a"],
        "createdAt": STAMP,
        "modifiedAt": STAMP,
        "attrs": {
            V + "speed": [
                {
                    "type": "Property",
                    "value": speed,
                    "unitCode": "KMH",
                    "observedAt": STAMP,
                    "createdAt": STAMP,
                    "modifiedAt": STAMP,
                    V + "accuracy": {"type": "Property", "value": 0.5, "createdAt": STAMP, "modifiedAt": STAMP},
                    V + "gone": None,
                },
                {"type": "Property", "value": 6, "datasetId": "urn:d:1", "createdAt": STAMP, "modifiedAt": STAMP},
            ],
            V + "owner": [{"type": "Relationship", "object": "urn:p:1", "objectType": V + "Person"}],
            V + "friends": [{"type": "ListRelationship", "objectList": ["urn:p:2", "urn:p:3"]}],
            V + "kind": [{"type": "VocabProperty", "vocab": V + "Car"}],
            V + "label": [{"type": "LanguageProperty", "languageMap": {"en": "car", "pt": "carro"}}],
            V + "address": [{"type": "Property", "value": {"street": "x"}}],
        },
    }
    if not gone:
        del entity["attrs"][V + "speed"][0][V + "gone"]
    return entity


def terms() -> TermMap:
    mapping = TermMap()
    define_terms(mapping, {"@vocab": V, "T": V + "T"})
    return mapping


def test_normalized_form_rewrites_only_what_it_must() -> None:
    body = render_entity(stored(), RenderOptions(terms()))
    assert body == {
        "id": "urn:x:1",
        "type": "T",
        "scope": "/a",
        "speed": [
            {
                "type": "Property",
                "value": 5,
                "unitCode": "KMH",
                "observedAt": STAMP,
                "accuracy": {"type": "Property", "value": 0.5},
            },
            {"type": "Property", "value": 6, "datasetId": "urn:d:1"},
        ],
        "owner": {"type": "Relationship", "object": "urn:p:1", "objectType": "Person"},
        "friends": {"type": "ListRelationship", "objectList": [{"object": "urn:p:2"}, {"object": "urn:p:3"}]},
        "kind": {"type": "VocabProperty", "vocab": "Car"},
        "label": {"type": "LanguageProperty", "languageMap": {"en": "car", "pt": "carro"}},
        "address": {"type": "Property", "value": {"street": "x"}},
    }
    assert list(body["speed"][0]) == ["type", "value", "unitCode", "observedAt", "accuracy"]  # order kept


def test_system_attributes_language_and_concise() -> None:
    entity = stored()
    with_sys = render_entity(entity, RenderOptions(terms(), sys_attrs=True))
    assert with_sys["speed"][0]["accuracy"] == {
        "type": "Property",
        "value": 0.5,
        "createdAt": STAMP,
        "modifiedAt": STAMP,
    }
    assert (with_sys["createdAt"], with_sys["modifiedAt"]) == (STAMP, STAMP)
    in_portuguese = render_entity(entity, RenderOptions(terms(), lang="pt"))
    assert in_portuguese["label"] == {"type": "Property", "value": "carro", "lang": "pt"}
    concise = render_entity(entity, RenderOptions(terms(), format="concise"))
    assert concise["address"] == {"value": {"street": "x"}}  # a bare object would read as an attribute
    assert concise["speed"][1] == {"value": 6, "datasetId": "urn:d:1"}
    assert concise["kind"] == {"vocab": "Car"}
    key_values = render_entity(entity, RenderOptions(terms(), format="keyValues"))
    assert key_values["speed"] == {"dataset": {"@none": 5, "urn:d:1": 6}}
    assert key_values["friends"] == ["urn:p:2", "urn:p:3"]
    assert "createdAt" not in render_entity(entity, RenderOptions(terms(), format="keyValues", sys_attrs=True))
    instance = entity["attrs"][V + "speed"][0]
    assert (
        render_instance(instance, RenderOptions(terms())) == render_entity(entity, RenderOptions(terms()))["speed"][0]
    )


def test_projections_and_datasets() -> None:
    entity = stored()
    picked = render_entity(entity, RenderOptions(terms(), attrs=frozenset({V + "kind"}), pick_id=False))
    assert picked == {"type": "T", "scope": "/a", "kind": {"type": "VocabProperty", "vocab": "Car"}}
    omitted = render_entity(entity, RenderOptions(terms(), omit=frozenset({V + "speed", V + "label"})))
    assert "speed" not in omitted and "label" not in omitted and "kind" in omitted
    default_only = render_entity(entity, RenderOptions(terms(), datasets=frozenset({None})))
    assert default_only["speed"]["value"] == 5 and "owner" in default_only


def test_a_redefined_term_is_never_rendered_from_the_old_compaction() -> None:
    mapping = terms()
    assert render_entity(stored(), RenderOptions(mapping))["kind"] == {"type": "VocabProperty", "vocab": "Car"}
    assert mapping.compacted[V + "speed"] == "speed"  # filled by the first rendering
    define_terms(mapping, {"velocity": V + "speed", "Auto": V + "Car"})
    body = render_entity(stored(), RenderOptions(mapping))
    assert "speed" not in body and body["velocity"][0]["value"] == 5
    assert body["kind"]["vocab"] == "Auto"


def test_visible_at_walks_only_once_something_expired() -> None:
    entity = stored()
    entity["attrs"][V + "old"] = [{"type": "Property", "value": 1, "expiresAt": PAST}]
    assert visible_at(entity, None) is entity  # no expiry in the row: nothing to prune
    assert visible_at(entity, FUTURE) is entity
    pruned = visible_at(entity, PAST)
    assert pruned == visible(entity) and pruned is not None and V + "old" not in pruned["attrs"]
    entity["expiresAt"] = PAST
    assert visible_at(entity, PAST) is None


@pytest.mark.parametrize("value", ["T", "20", "a b", "x&y=z", "é", "urn:x:1,urn:x:2", "a#b", "a%20b", "", "q>5;r<3"])
def test_link_values_are_quoted_as_before(value: str) -> None:
    from urllib.parse import quote

    assert _quoted(value) == quote(value, safe=LINK_SAFE)


REPRESENTATIONS: list[tuple[dict[str, str], Any]] = [
    ({}, lambda body, n: body["speed"]["value"] == n),
    ({"options": "keyValues"}, lambda body, n: body["speed"] == n),
    ({"options": "concise"}, lambda body, n: body["speed"] == n),
    ({"options": "sysAttrs"}, lambda body, n: body["speed"]["value"] == n),
    ({"attrs": "speed"}, lambda body, n: body["speed"]["value"] == n),
    ({"pick": "id,speed"}, lambda body, n: body["speed"]["value"] == n),
    ({"omit": "name"}, lambda body, n: body["speed"]["value"] == n),
    ({"lang": "pt"}, lambda body, n: body["speed"]["value"] == n and body["name"]["value"] == f"carro {n}"),
]


def test_every_representation_shows_an_update_at_once(client: TestClient) -> None:
    entity = {
        "id": "urn:ngsi-ld:Car:r1",
        "type": "Car",
        "speed": {"type": "Property", "value": 0},
        "name": {"type": "LanguageProperty", "languageMap": {"pt": "carro 0"}},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [0, 0]}},
    }
    assert client.post(ENTITIES, json=entity).status_code == 201
    for n in range(1, 4):
        patch = {
            "speed": {"type": "Property", "value": n},
            "name": {"type": "LanguageProperty", "languageMap": {"pt": f"carro {n}"}},
        }
        assert client.patch(f"{ENTITIES}/urn:ngsi-ld:Car:r1/attrs", json=patch).status_code == 204
        for params, shows in REPRESENTATIONS:
            one = client.get(f"{ENTITIES}/urn:ngsi-ld:Car:r1", params=params)
            assert one.status_code == 200 and shows(one.json(), n), (params, one.text)
            listed = client.get(ENTITIES, params={"type": "Car", "limit": "20", **params})
            assert listed.status_code == 200 and shows(listed.json()[0], n), (params, listed.text)
            filtered = client.get(ENTITIES, params={"type": "Car", "q": f"speed=={n}", **params})
            assert filtered.status_code == 200 and len(filtered.json()) == 1 and shows(filtered.json()[0], n)
        geo = client.get(f"{ENTITIES}/urn:ngsi-ld:Car:r1", headers={"Accept": "application/geo+json"})
        assert geo.json()["properties"]["speed"]["value"] == n
        assert client.get(f"{ENTITIES}/urn:ngsi-ld:Car:r1", params={"type": "Car"}).json()["speed"]["value"] == n
