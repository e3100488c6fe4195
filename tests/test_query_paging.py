"""Queries paged and counted in SQL (issue 15) answer exactly what the Python evaluation answers.

Each query runs twice on the same store: as built (its q pushed down whole when query/pushdown.py
finds it exact, its page and count chosen in SQL, a type listing through the offset anchors) and
with the predicate forced back into Python (every candidate decoded and tested). Both back-ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.entities.expiry import now_key
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.query.pushdown import pushdown
from cityos.query.q import parse_q
from cityos.settings import Settings
from cityos.store.base import EntityQuery, QueryResult
from cityos.store.postgres import PostgresStore
from cityos.store.sqlite_query import ANCHOR_STEP

ENTITIES = "/ngsi-ld/v1/entities"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
SIZE = 3 * ANCHOR_STEP + 17
OTHER = {"NGSILD-Tenant": "other"}
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"


def make(n: int) -> dict[str, Any]:
    """Parking n: `n` in every shape q compares (ties, floats, strings, booleans, arrays, a second
    dataset), a name, sometimes a second type, a scope, a relationship and a language map."""
    shapes: dict[int, Any] = {1: n + 0.5, 2: "x", 3: True, 4: [n % 150, n % 40]}
    entity: dict[str, Any] = {
        "id": f"urn:ngsi-ld:Parking:{n:04d}",
        "type": ["Parking", "Building"] if n % 7 == 0 else "Parking",
        "n": {"type": "Property", "value": shapes.get(n % 10, n % 150)},  # n % 150: ties
        "name": {"type": "Property", "value": f"{chr(97 + n % 26)}{n}"},
    }
    if n % 11 == 0:
        entity["n"] = [entity["n"], {"type": "Property", "value": 1000 + n, "datasetId": "urn:ngsi-ld:Dataset:b"}]
    if n % 5 == 0:
        entity["scope"] = "/city/north"
    if n % 13 == 0:
        entity["kind"] = {"type": "Relationship", "object": f"urn:ngsi-ld:Kind:{n % 3}"}
    if n % 9 == 0:
        entity["label"] = {"type": "LanguageProperty", "languageMap": {"en": "abc", "pt": f"cba{n % 4}"}}
    return entity


@pytest.fixture(scope="module")
def city(module_db_url: str) -> Iterator[tuple[TestClient, Starlette]]:
    app = create_app(Settings(database=module_db_url))
    with TestClient(app, base_url="http://127.0.0.1:1026") as client:
        for start in range(0, SIZE, 200):
            batch = [make(n) for n in range(start, min(start + 200, SIZE))]
            assert client.post(UPSERT, json=batch).status_code == 201
        assert client.post(UPSERT, json=[make(n) for n in range(50)], headers=OTHER).status_code == 201
        yield client, app


def expand(name: str) -> str:
    return name if ":" in name else DEFAULT + name


def run(city: tuple[TestClient, Starlette], tenant: str, query: EntityQuery) -> QueryResult:
    client, app = city
    assert client.portal is not None
    result: QueryResult = client.portal.call(app.state.services.store.query_entities, tenant, query)
    return result


def both_ways(
    city: tuple[TestClient, Starlette], spec: QuerySpec, *, tenant: str = "", **paging: Any
) -> tuple[tuple[list[str], int | None, bool], tuple[list[str], int | None, bool]]:
    """(as built, in Python) results of one query: ids, count, has_more."""
    built = build_entity_query(spec, expand)
    for key, value in paging.items():
        setattr(built, key, value)
    # a predicate other than the pushed-down one: every candidate is decoded and judged in Python
    judged = built.predicate or (lambda entity: True)
    in_python = dataclasses.replace(built, predicate=lambda entity: judged(entity), predicate_in_sql=None)
    answers = []
    for query in (built, in_python):
        result = run(city, tenant, query)
        answers.append(([e["id"] for e in result.entities], result.total, result.has_more))
    return answers[0], answers[1]


EXACT_Q = [
    "n>50",
    "n>=50;n<100",
    "n<=3",
    "n==3,7,149",
    'n==3,"x"',
    "n==10..20",
    "n==0.5..30.5",
    'name=="c".."k"',
    'name~="^b"',
    'name~="1$";n>100',
    'name=="c2"',
    "kind==urn:ngsi-ld:Kind:1",
    'label=="cba2"',
    'label~="^cba[13]"',
    "n>1099",
    "n>100000",
]


@pytest.mark.parametrize("q", EXACT_Q)
def test_exact_q_is_pushed_down_whole(q: str) -> None:
    filters, exact = pushdown(parse_q(q), expand)
    assert exact and filters, q


@pytest.mark.parametrize(
    "q",
    [
        "n",  # existence: an instance without a value does not count
        "n!=3",
        'name!~="a"',
        "n>3|n<1",
        "n.observedAt>2020-01-01T00:00:00Z",
        "n==2020-01-01",
        "n>9007199254740993",  # beyond what a REAL holds exactly
        "modifiedAt>2020-01-01T00:00:00Z",
    ],
)
def test_other_q_is_left_to_the_predicate(q: str) -> None:
    assert not pushdown(parse_q(q), expand)[1], q


def test_vocabulary_literals_are_exact_unless_expanded() -> None:
    assert pushdown(parse_q("category==parking"), expand)[1]
    filters, exact = pushdown(parse_q("category==parking"), expand, frozenset({"category"}))
    assert not exact and set(filters[0].values) == {"parking", DEFAULT + "parking"}


@pytest.mark.parametrize("q", EXACT_Q)
@pytest.mark.parametrize(("limit", "offset"), [(20, 0), (7, 5), (1, 40), (20, SIZE), (50, 10_000)])
def test_pages_and_counts_equal_the_python_evaluation(
    city: tuple[TestClient, Starlette], q: str, limit: int, offset: int
) -> None:
    sql, python = both_ways(city, QuerySpec(type_expr="Parking", q=q), limit=limit, offset=offset, count=True)
    assert sql == python
    assert build_entity_query(QuerySpec(type_expr="Parking", q=q), expand).predicate_in_sql is not None


@pytest.mark.parametrize(
    "spec",
    [
        QuerySpec(q="n>100"),
        QuerySpec(type_expr="Building", q="n<75"),
        QuerySpec(type_expr="Parking,Building", q='name~="^[a-f]"'),
        QuerySpec(type_expr="Parking", attrs=["label", "kind"], q="n>=20"),
        QuerySpec(type_expr="Parking", scope_q="/city/north", q="n>20"),
        QuerySpec(type_expr="Parking", id_pattern=".*:00[0-4][0-9]$", q="n>5"),
        QuerySpec(ids=[f"urn:ngsi-ld:Parking:{n:04d}" for n in range(0, 90, 3)], q="n>30"),
    ],
    ids=["no-type", "second-type", "type-union", "attrs", "scope", "id-pattern", "ids"],
)
@pytest.mark.parametrize("tenant", ["", "other"])
def test_mixed_filters_equal_the_python_evaluation(
    city: tuple[TestClient, Starlette], spec: QuerySpec, tenant: str
) -> None:
    for limit, offset in ((5, 0), (5, 11), (100, 0)):
        sql, python = both_ways(city, spec, tenant=tenant, limit=limit, offset=offset, count=True)
        assert sql == python
    assert sql[1] is not None and sql[1] > 0


LISTING_PAGES = [(0, 20), (1, 20), (ANCHOR_STEP - 1, 3), (ANCHOR_STEP, 20), (2 * ANCHOR_STEP + 5, 20)]
LISTING_PAGES += [(SIZE - 3, 20), (SIZE, 20), (SIZE + 500, 20), (3 * ANCHOR_STEP, 0)]


def listing(city: tuple[TestClient, Starlette], tenant: str = "") -> None:
    for offset, limit in LISTING_PAGES:
        sql, python = both_ways(city, QuerySpec(type_expr="Parking"), tenant=tenant, limit=limit, offset=offset)
        assert sql == python, (offset, limit)
        counted = both_ways(city, QuerySpec(type_expr="Parking"), tenant=tenant, limit=limit, offset=offset, count=True)
        assert counted[0] == counted[1], (offset, limit)


def test_deep_offsets_of_a_listing_follow_creates_and_deletes(city: tuple[TestClient, Starlette]) -> None:
    client = city[0]
    listing(city)
    listing(city, "other")
    # entities created and deleted after the anchors were taken: they are taken again
    extra = [make(n) for n in range(SIZE, SIZE + 9)]
    assert client.post(UPSERT, json=extra).status_code == 201
    for n in (3, ANCHOR_STEP + 1, 2 * ANCHOR_STEP + 2):
        assert client.delete(f"{ENTITIES}/urn:ngsi-ld:Parking:{n:04d}").status_code == 204
    listing(city)
    ids, count, _ = both_ways(city, QuerySpec(type_expr="Parking"), offset=SIZE - 1, limit=20, count=True)[0]
    assert count == SIZE + 9 - 3
    assert ids[-1] == f"urn:ngsi-ld:Parking:{SIZE + 8:04d}"
    listing(city, "other")


def test_an_expired_attribute_waiting_for_the_sweeper_is_not_matched(city: tuple[TestClient, Starlette]) -> None:
    """Side rows of an expired instance stay until the sweeper runs: q and attrs then judge the
    documents (the answer is the same whether or not the sweeper has run yet)."""
    client = city[0]
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    gone = {"id": "urn:ngsi-ld:Parking:gone", "type": "Parking", "n": {"type": "Property", "value": 77777}}
    gone["n"]["expiresAt"] = past
    gone["stale"] = {"type": "Property", "value": 1, "expiresAt": past}
    assert client.post(ENTITIES, json=gone).status_code == 201
    for spec in (QuerySpec(type_expr="Parking", q="n==77777"), QuerySpec(type_expr="Parking", attrs=["stale"])):
        sql, python = both_ways(city, spec, limit=20, count=True)
        assert sql == python == ([], 0, False)
    response = client.get(ENTITIES, params={"type": "Parking", "q": "n>70000", "count": "true"})
    assert response.status_code == 200 and response.json() == []
    assert response.headers["NGSILD-Results-Count"] == "0"


def test_the_api_pages_an_exact_q_like_the_python_evaluation(city: tuple[TestClient, Starlette]) -> None:
    client = city[0]
    _, python = both_ways(city, QuerySpec(type_expr="Parking", q="n>=40;n<=60"), count=True)
    seen: list[str] = []
    for offset in range(0, len(python[0]) + 10, 10):
        params = {"type": "Parking", "q": "n>=40;n<=60", "limit": "10", "offset": str(offset), "count": "true"}
        response = client.get(ENTITIES, params=params)
        assert response.status_code == 200, response.text
        assert response.headers["NGSILD-Results-Count"] == str(python[1])
        seen += [e["id"] for e in response.json()]
    assert seen == python[0]


class Statements:
    """Counts what asyncpg sends for the store's query_entities calls (extended-protocol statements
    and simple queries such as BEGIN and COMMIT); the store's background tasks are not counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: PostgresStore) -> None:
        import asyncpg.connection

        self.count = 0
        querying: ContextVar[bool] = ContextVar("querying", default=False)
        connection = asyncpg.connection.Connection
        do_execute, execute, query_entities = connection._do_execute, connection.execute, store.query_entities

        async def counted_do_execute(this: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += querying.get()
            return await do_execute(this, *args, **kwargs)

        async def counted_execute(this: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            self.count += querying.get() and not args  # with arguments it is counted in _do_execute
            return await execute(this, query, *args, **kwargs)

        async def counted_query(tenant: str, query: EntityQuery) -> QueryResult:
            querying.set(True)  # in this call's task only
            return await query_entities(tenant, query)

        monkeypatch.setattr(connection, "_do_execute", counted_do_execute)
        monkeypatch.setattr(connection, "execute", counted_execute)
        monkeypatch.setattr(store, "query_entities", counted_query)


@pytest.mark.parametrize(
    ("spec", "paging"),
    [
        (QuerySpec(type_expr="Parking"), {"limit": 20}),
        (QuerySpec(type_expr="Parking"), {"limit": 20, "count": True}),
        (QuerySpec(type_expr="Parking"), {"limit": 20, "offset": 2 * ANCHOR_STEP + 5}),
        (QuerySpec(type_expr="Parking"), {"limit": 20, "offset": SIZE + 500, "count": True}),
        (QuerySpec(type_expr="Parking", q="n>50"), {"limit": 20}),
        (QuerySpec(type_expr="Parking", q="n>50"), {"limit": 20, "offset": 30, "count": True}),
    ],
    ids=["type", "type-count", "type-offset", "type-past-the-end", "q", "q-offset-count"],
)
def test_postgres_pages_exact_in_sql_are_one_statement(
    city: tuple[TestClient, Starlette], monkeypatch: pytest.MonkeyPatch, spec: QuerySpec, paging: dict[str, Any]
) -> None:
    """On PostgreSQL a page whose filters are all exact in SQL is one statement outside a
    transaction (store/postgres/pages.py page_at_once: no BEGIN, COMMIT or statement before it),
    once a listing's offset anchors are cached, and answers what the Python evaluation answers."""
    store = city[1].state.services.store
    if not isinstance(store, PostgresStore):
        pytest.skip("PostgreSQL's round trips")
    # an expired part not swept yet (left by an earlier test) rightly sends a page the other way
    assert city[0].portal is not None
    city[0].portal.call(store.purge_expired, now_key())
    sql, python = both_ways(city, spec, **paging)  # the anchors taken, statements prepared
    assert sql == python
    statements = Statements(monkeypatch, store)
    built = build_entity_query(spec, expand)
    for key, value in paging.items():
        setattr(built, key, value)
    result = run(city, "", built)
    assert statements.count == 1
    assert ([e["id"] for e in result.entities], result.total, result.has_more) == sql


@pytest.mark.parametrize("direct_rows", [0, 40, None], ids=["by-keys", "short-pages-only", "default"])
def test_postgres_pages_read_with_their_rows_or_by_their_keys_alike(
    city: tuple[TestClient, Starlette], monkeypatch: pytest.MonkeyPatch, direct_rows: int | None
) -> None:
    """page_at_once reads a short page's documents in the statement that chooses its rows (the
    checks as columns of each row), a long one by its keys (pages.DIRECT_ROWS), and asks an empty
    page's checks again: every way answers what the Python evaluation answers, in one statement
    when the page has rows, at most two when it is empty."""
    from cityos.store.postgres import pages

    store = city[1].state.services.store
    if not isinstance(store, PostgresStore):
        pytest.skip("PostgreSQL's statements")
    if direct_rows is not None:
        monkeypatch.setattr(pages, "DIRECT_ROWS", direct_rows)
    assert city[0].portal is not None
    city[0].portal.call(store.purge_expired, now_key())
    cases: list[tuple[QuerySpec, dict[str, Any]]] = [
        (QuerySpec(type_expr="Parking"), {"limit": 20}),
        (QuerySpec(type_expr="Parking"), {"limit": 20, "offset": 30}),
        (QuerySpec(type_expr="Parking"), {"limit": 20, "offset": 2 * ANCHOR_STEP + 5, "count": True}),
        (QuerySpec(type_expr="Parking", q="n>50"), {"limit": 20, "offset": 30, "count": True}),
        (QuerySpec(type_expr="Parking", q="n>100000"), {"limit": 20, "count": True}),  # empty, counted
        (QuerySpec(type_expr="Parking", q="n>100000"), {"limit": 20}),  # empty
        (QuerySpec(type_expr="Nothing"), {"limit": 20}),  # empty, no check to read
    ]
    for spec, paging in cases:
        sql, python = both_ways(city, spec, **paging)  # anchors taken, statements prepared
        assert sql == python, (spec, paging)
        statements = Statements(monkeypatch, store)
        built = build_entity_query(spec, expand)
        for key, value in paging.items():
            setattr(built, key, value)
        result = run(city, "", built)
        assert ([e["id"] for e in result.entities], result.total, result.has_more) == python, (spec, paging)
        by_keys_only = direct_rows == 0  # short pages too: the checks in a row of their own
        assert statements.count == (1 if python[0] or spec.type_expr == "Nothing" or by_keys_only else 2)
