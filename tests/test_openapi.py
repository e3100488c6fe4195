"""The API description (/openapi.json, /docs: ops/openapi.py) against the application's own route
table, and schemathesis against a real server: stateful runs over the entity links (create, then
read, update, delete what was created) on both back-ends, then every operation once over SQLite.
Every 5xx, and every answer the description does not allow, fails."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.ngsild.common import TENANT_RE
from cityos.ops.declare import declared, in_description
from cityos.ops.openapi import describe, operations
from cityos.ops.schemas import TENANT_PATTERN
from cityos.settings import Settings
from notify_helpers import cityos_serving

pytestmark = pytest.mark.slow(seconds=80)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
STATEFUL_CHECKS = [*CHECKS, use_after_free, ensure_resource_availability]
BUDGET_SECONDS = 25.0  # per back-end: the stateful run; the whole module stays under a minute
ENTITIES = "^/ngsi-ld/v1/entities(/\\{entity_id\\}.*)?$"


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return create_app(Settings(database=str(tmp_path_factory.mktemp("d") / "city.db"))).router.routes


def test_every_route_is_described_and_declared(app_routes: Any) -> None:
    """A route added without a declaration (ops/declare.api on its handler) fails here."""
    document = describe(app_routes)
    described = {(m.upper(), path) for path, ops in document["paths"].items() for m in ops}
    assert described == operations(app_routes)
    undeclared = sorted(
        f"{method} {route.path} ({route.endpoint.__name__})"
        for route in app_routes
        if in_description(route)
        for method in route.methods - {"HEAD"}
        if declared(route.endpoint, method) is None
    )
    assert undeclared == []
    pages = {route.path for route in app_routes if hasattr(route, "endpoint") and not in_description(route)}
    browser = ("/console/", "/city/")  # the console's pages and the citizens' page (its JSON API is described)
    assert pages and all(
        path == "/" or (path.startswith(browser) and not path.startswith("/city/api/")) for path in pages
    )
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, ops in document["paths"].items():
        for op in ops.values():
            assert op["summary"], path
            # Open311 (and the citizens' page, which relays it) and CKAN answer their own error shapes
            open311 = path.endswith(".{format}") or path == "/city/api/reports"
            errors = "Open311Errors" if open311 else "Object" if path.startswith("/api/") else "ProblemDetails"
            assert errors in str(op["responses"]["4XX"]), path
            # NGSI-LD's request headers, from the declarations' default (ops/schemas.HEADERS)
            headers = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
            if path.startswith("/ngsi-ld/v1/"):
                assert headers == {"NGSILD-Tenant", "Link"}, path
    tile = next(ops["get"] for path, ops in document["paths"].items() if path.endswith("/tiles/{z}/{x}/{y}.mvt"))
    assert {p["name"] for p in tile["parameters"] if p["in"] == "header"} == {"NGSILD-Tenant", "Link"}
    assert TENANT_RE.pattern == TENANT_PATTERN  # the description's tenant names are the handlers'


def test_description_and_docs_page_are_served(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as client:
        answer = client.get("/openapi.json")
        assert answer.status_code == 200
        document = answer.json()
        assert document["openapi"] == "3.1.0"
        assert document == describe(client.app.router.routes)  # type: ignore[attr-defined]
        assert ("POST", "/ngsi-ld/v1/entities") in {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # no CDN: everything from here
        for asset in ("/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/docs.js"):
            served = client.get(asset)
            assert served.status_code == 200 and len(served.content) > 100, asset
        assert "SwaggerUIBundle" in client.get("/docs/swagger-ui-bundle.js").text
        missing = client.get("/docs/nothing.js")
        assert missing.status_code == 404 and missing.json()["type"].endswith("ResourceNotFound")


@pytest.fixture(scope="module")
def served(module_db_url: str) -> Iterator[str]:
    """A real `cityos serve` on 127.0.0.1 over the module's database; its base URL."""
    with cityos_serving(module_db_url, timeout=30) as base:
        yield base


def test_stateful_entity_lifecycle(served: str) -> None:
    """Create an entity, then follow the description's links from its 201 (retrieve, append,
    update, merge, replace, delete) in random orders; a fixed derandomised seed."""
    schema = schemathesis.openapi.from_url(served + "/openapi.json").include(path_regex=ENTITIES)
    schema.config.generation.update(modes=["positive"])  # valid entities, so the links are followed

    class Lifecycle(schema.as_state_machine()):  # type: ignore[misc]
        calls: ClassVar[list[int]] = []
        made = itertools.count()

        def before_call(self, case: Any) -> None:
            # a new id for every entity created: a scenario never meets an earlier one's entity, so
            # a replay draws the same (hypothesis needs that), and the links lead to this one
            if case.method == "POST" and isinstance(case.body, dict) and "id" in case.body:
                case.body["id"] = f"{case.body['id']}-{next(self.made)}"
            # one tenant for a whole scenario (the default), so that what was made is found by
            # the linked reads; the other operations are run in generated tenants below
            if case.headers:
                case.headers.pop("NGSILD-Tenant", None)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            self.calls.append(response.status_code)
            case.validate_response(response, checks=STATEFUL_CHECKS, transport_kwargs=kwargs)

    started = time.monotonic()
    Lifecycle.run(
        settings=hypothesis.settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,  # the same scenarios on every run
            # no shrinking: the server keeps its state between scenarios, so a replay differs
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET_SECONDS, f"the stateful run took {elapsed:.1f} s"
    statuses = collections.Counter(Lifecycle.calls)
    # entities were created and changed (each created one read back by ensure_resource_availability)
    assert statuses[201] >= 10 and statuses[204] >= 10, statuses


@pytest.mark.parametrize("module_db_url", ["sqlite"], indirect=True)
def test_every_operation_answers_within_its_description(served: str) -> None:
    """Every operation a few times with generated input (SQLite only: the handlers and the
    description are the same on both back-ends; the stateful run covers PostgreSQL's store)."""
    schema = schemathesis.openapi.from_url(served + "/openapi.json")
    failures: list[str] = []
    seen = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/cityos/v1/changes":  # an endless event stream: tests/test_change_stream.py
            continue
        strategy = operation.as_strategy()

        @hypothesis.given(case=strategy)
        @hypothesis.settings(
            max_examples=3,
            deadline=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def one(case: Any) -> None:
            nonlocal seen
            seen += 1
            response = case.call(timeout=10)
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:
                failures.append(f"{case.method} {case.path}: {exc}")

        one()
    assert seen > 150
    assert failures == []


@pytest.mark.parametrize("module_db_url", ["sqlite"], indirect=True)
def test_docs_page_renders_in_a_browser_from_this_server_alone(served: str) -> None:
    """Chromium opens /docs: Swagger UI draws the description's operations, and no request goes
    anywhere but this server (no CDN, no font or telemetry host)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    elsewhere: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith(served) else elsewhere.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(served + "/docs")
            page.wait_for_selector(".opblock-tag", timeout=60_000)
            drawn = page.locator(".opblock-tag").count()
            title = page.locator(".title").first.inner_text()
            page.locator(".opblock-tag", has_text="NGSI-LD entities").first.click()  # a tag opens on demand
            page.wait_for_selector(".opblock-post", timeout=30_000)
        finally:
            browser.close()
    document = httpx.get(served + "/openapi.json").json()
    tags = {tag for ops in document["paths"].values() for op in ops.values() for tag in op["tags"]}
    assert drawn == len(tags) > 10  # every tag, each holding its operations (collapsed)
    assert title.startswith("CityOS")
    assert elsewhere == [] and errors == []
