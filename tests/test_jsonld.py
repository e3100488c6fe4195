"""Unit tests of the JSON-LD term maps and of the @context registry (core, inline, remote, preloaded).

Remote contexts are served by a real HTTP server started on 127.0.0.1 for the test; every request
it receives is counted, so caching and the outbound policy are checked from the server's side.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.errors import BadRequestData, LdContextNotAvailable, NgsiLdError
from cityos.jsonld.registry import ContextRegistry, ResolvedContext, core_url
from cityos.jsonld.termmap import TermDef, TermMap, define_terms
from cityos.net import OutboundPolicy
from cityos.settings import Settings
from notify_helpers import free_port

T = TypeVar("T")

NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
GEOJSON = "https://purl.org/geojson/vocab#"
CORE_V19 = core_url("v1.9")
CORE_V18 = core_url("v1.8")
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
EX = "http://example.org/"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def offline_registry(**kwargs: Any) -> ContextRegistry:
    """A registry whose policy refuses loopback and private targets (no test network needed)."""
    return ContextRegistry(OutboundPolicy(allow_private_networks=False, timeout=0.5), **kwargs)


@pytest.fixture
def core() -> TermMap:
    return offline_registry().core_terms()


def user_terms(context: dict[str, Any]) -> TermMap:
    """User terms with the v1.9 core on top, as the registry builds an effective context."""
    return run(offline_registry().resolve("", context)).terms


# ---------------------------------------------------------------------------------------------
# TermMap / define_terms with the bundled core context
# ---------------------------------------------------------------------------------------------


class TestCoreTerms:
    def test_core_has_the_default_vocab(self, core: TermMap) -> None:
        assert core.vocab == DEFAULT

    @pytest.mark.parametrize(
        ("term", "iri"),
        [
            ("location", NGSI_LD + "location"),
            ("observedAt", NGSI_LD + "observedAt"),
            ("Property", NGSI_LD + "Property"),
            ("Relationship", NGSI_LD + "Relationship"),
            ("GeoProperty", NGSI_LD + "GeoProperty"),
            ("Point", GEOJSON + "Point"),
            ("id", "@id"),
            ("type", "@type"),
        ],
    )
    def test_core_terms_expand(self, core: TermMap, term: str, iri: str) -> None:
        assert core.expand(term) == iri

    @pytest.mark.parametrize(
        ("compact", "iri"),
        [
            ("ngsi-ld:foo", NGSI_LD + "foo"),
            ("geojson:Whatever", GEOJSON + "Whatever"),
            ("ngsi-ld:default-context/speed", DEFAULT + "speed"),
        ],
    )
    def test_compact_iris_expand_with_their_prefix(self, core: TermMap, compact: str, iri: str) -> None:
        assert core.expand(compact) == iri

    @pytest.mark.parametrize(
        "iri",
        [
            "http://example.org/speed",
            "https://example.org/a/b#c",
            "urn:ngsi-ld:Vehicle:A1",
            "unknownprefix:thing",
            "ngsi-ld://not-a-compact-iri",  # a suffix starting with // is never a compact IRI
        ],
    )
    def test_absolute_iris_are_kept(self, core: TermMap, iri: str) -> None:
        assert core.expand(iri) == iri

    @pytest.mark.parametrize("term", ["speed", "temperature", "name", "brandName"])
    def test_unknown_terms_fall_back_to_the_default_vocab(self, core: TermMap, term: str) -> None:
        assert core.expand(term) == DEFAULT + term

    @pytest.mark.parametrize(
        ("iri", "compact"),
        [
            (NGSI_LD + "location", "location"),
            (NGSI_LD + "observedAt", "observedAt"),
            (NGSI_LD + "Property", "Property"),
            (GEOJSON + "Point", "Point"),
            (DEFAULT + "speed", "speed"),
            (NGSI_LD + "somethingNew", "ngsi-ld:somethingNew"),
            (GEOJSON + "somethingNew", "geojson:somethingNew"),
            ("http://example.org/speed", "http://example.org/speed"),
            ("urn:ngsi-ld:Vehicle:A1", "urn:ngsi-ld:Vehicle:A1"),
        ],
    )
    def test_compaction(self, core: TermMap, iri: str, compact: str) -> None:
        assert core.compact(iri) == compact

    @pytest.mark.parametrize("term", ["location", "observedAt", "speed", "ngsi-ld:somethingNew", "Point"])
    def test_round_trip(self, core: TermMap, term: str) -> None:
        assert core.compact(core.expand(term)) == term

    def test_repeated_lookups_are_stable(self, core: TermMap) -> None:
        first = [core.expand("speed"), core.compact(DEFAULT + "speed")]
        second = [core.expand("speed"), core.compact(DEFAULT + "speed")]
        assert first == second == [DEFAULT + "speed", "speed"]

    def test_core_context_may_use_scoped_contexts(self, core: TermMap) -> None:
        # ngsildproof carries a scoped context in the v1.9 core; the core itself compiles fine
        assert core.expand("ngsildproof") == NGSI_LD + "ngsildproof"

    def test_v18_core_terms(self) -> None:
        registry = offline_registry(default_core="v1.8")
        terms = registry.core_terms()
        assert terms.vocab == DEFAULT
        assert terms.expand("location") == NGSI_LD + "location"
        # "attributeCount": "attributeCount" in v1.8 is vocabulary-relative
        assert terms.expand("attributeCount") == DEFAULT + "attributeCount"
        assert registry.core_terms(CORE_V19).expand("attributeCount") == NGSI_LD + "attributeCount"


class TestDefineTerms:
    def test_string_definitions(self) -> None:
        terms = TermMap()
        define_terms(terms, {"speed": "http://example.org/speed"})
        assert terms.terms["speed"] == TermDef("http://example.org/speed")
        assert terms.expand("speed") == "http://example.org/speed"
        assert terms.compact("http://example.org/speed") == "speed"

    def test_prefix_defined_in_the_same_context(self) -> None:
        terms = TermMap()
        # the prefix is defined after its use: order inside one context does not matter
        define_terms(terms, {"speed": "ex:speed", "ex": EX, "fuel": {"@id": "ex:fuel", "@type": "@vocab"}})
        assert terms.expand("speed") == EX + "speed"
        assert terms.terms["fuel"] == TermDef(EX + "fuel", "@vocab")
        assert terms.expand("ex:other") == EX + "other"
        assert terms.compact(EX + "other") == "ex:other"
        assert terms.compact(EX + "speed") == "speed"

    def test_prefix_from_an_earlier_context(self) -> None:
        terms = TermMap()
        define_terms(terms, {"ex": EX})
        define_terms(terms, {"speed": "ex:speed"})
        assert terms.expand("speed") == EX + "speed"

    def test_term_aliasing_another_term(self) -> None:
        terms = TermMap()
        define_terms(terms, {"speed": EX + "speed", "velocity": "speed"})
        assert terms.expand("velocity") == EX + "speed"

    def test_type_coercion_and_container(self) -> None:
        terms = TermMap()
        define_terms(
            terms,
            {
                "ex": EX,
                "category": {"@id": "ex:category", "@type": "@vocab"},
                "owner": {"@id": "ex:owner", "@type": "@id"},
                "temp": {"@id": "ex:temp", "@type": "ex:Celsius"},
                "names": {"@id": "ex:names", "@container": "@set"},
            },
        )
        assert terms.terms["category"] == TermDef(EX + "category", "@vocab")
        assert terms.terms["owner"] == TermDef(EX + "owner", "@id")
        assert terms.terms["temp"] == TermDef(EX + "temp", EX + "Celsius")
        assert terms.terms["names"] == TermDef(EX + "names", None, "@set")
        assert terms.definition_of_iri(EX + "category") == TermDef(EX + "category", "@vocab")
        assert terms.definition_of_iri(EX + "unknown") is None

    def test_vocab(self) -> None:
        terms = TermMap()
        define_terms(terms, {"@vocab": "http://example.org/vocab/"})
        assert terms.vocab == "http://example.org/vocab/"
        assert terms.expand("anything") == "http://example.org/vocab/anything"
        assert terms.compact("http://example.org/vocab/anything") == "anything"
        define_terms(terms, {"@vocab": None})
        assert terms.vocab is None
        assert terms.expand("anything") == "anything"

    def test_later_definitions_win_and_caches_are_invalidated(self) -> None:
        terms = TermMap()
        define_terms(terms, {"speed": EX + "speed"})
        assert terms.expand("speed") == EX + "speed"
        assert terms.compact(EX + "speed") == "speed"
        define_terms(terms, {"speed": "http://other.example/speed"})
        assert terms.expand("speed") == "http://other.example/speed"
        assert terms.compact(EX + "speed") == EX + "speed"
        assert terms.compact("http://other.example/speed") == "speed"

    def test_null_removes_a_definition(self) -> None:
        terms = TermMap()
        define_terms(terms, {"speed": EX + "speed"})
        define_terms(terms, {"speed": None})
        assert "speed" not in terms.terms

    def test_shortest_term_wins_compaction(self) -> None:
        terms = TermMap()
        define_terms(terms, {"vehicleSpeed": EX + "speed", "speed": EX + "speed"})
        assert terms.compact(EX + "speed") == "speed"

    def test_copy_is_independent(self) -> None:
        terms = TermMap()
        define_terms(terms, {"speed": EX + "speed"})
        copy = terms.copy()
        define_terms(copy, {"speed": "http://other.example/speed"})
        assert terms.expand("speed") == EX + "speed"
        assert copy.expand("speed") == "http://other.example/speed"

    @pytest.mark.parametrize(
        "context",
        [
            {"speed": 42},
            {"speed": ["http://example.org/speed"]},
            {"speed": {"@id": 42}},
        ],
    )
    def test_malformed_definitions_are_refused(self, context: dict[str, Any]) -> None:
        with pytest.raises(BadRequestData):
            define_terms(TermMap(), context)

    def test_scoped_contexts_are_refused(self) -> None:
        scoped = {"Vehicle": {"@id": EX + "Vehicle", "@context": {"speed": EX + "vehicleSpeed"}}}
        with pytest.raises(BadRequestData) as caught:
            define_terms(TermMap(), scoped)
        assert caught.value.status == 400
        assert "scoped" in caught.value.detail
        allowed = TermMap()
        define_terms(allowed, scoped, allow_scoped=True)
        assert allowed.expand("Vehicle") == EX + "Vehicle"


class TestEffectiveContext:
    """User terms with the core context on top, as resolve() compiles them."""

    def test_user_terms_override_the_vocab(self) -> None:
        terms = user_terms({"speed": EX + "speed"})
        assert terms.expand("speed") == EX + "speed"
        assert terms.compact(EX + "speed") == "speed"
        assert terms.expand("fuel") == DEFAULT + "fuel"
        assert terms.compact(DEFAULT + "fuel") == "fuel"

    def test_default_context_iri_of_a_redefined_term_compacts_with_the_ngsi_ld_prefix(self) -> None:
        terms = user_terms({"speed": EX + "speed"})
        # "speed" now means something else, so the default-context IRI cannot compact to it
        assert terms.compact(DEFAULT + "speed") == "ngsi-ld:default-context/speed"
        assert terms.expand("ngsi-ld:default-context/speed") == DEFAULT + "speed"

    def test_core_terms_cannot_be_redefined(self) -> None:
        terms = user_terms({"location": EX + "location", "observedAt": EX + "observedAt"})
        assert terms.expand("location") == NGSI_LD + "location"
        assert terms.expand("observedAt") == NGSI_LD + "observedAt"
        assert terms.compact(NGSI_LD + "location") == "location"
        # the user's IRI is still reachable, as an absolute or compact IRI
        assert terms.compact(EX + "location") == EX + "location"

    def test_user_prefixes_compact(self) -> None:
        terms = user_terms({"ex": EX})
        assert terms.expand("ex:speed") == EX + "speed"
        assert terms.compact(EX + "speed") == "ex:speed"

    def test_term_without_id_gets_an_absolute_iri(self) -> None:
        """An expanded term definition without @id must not yield a relative IRI: either the
        effective vocabulary gives it one, or the context is refused."""
        try:
            terms = user_terms({"category": {"@type": "@vocab"}})
        except BadRequestData:
            return
        assert terms.expand("category") == DEFAULT + "category"

    def test_scoped_user_context_is_refused(self) -> None:
        with pytest.raises(BadRequestData):
            user_terms({"Vehicle": {"@id": EX + "Vehicle", "@context": {"speed": EX + "s"}}})


# ---------------------------------------------------------------------------------------------
# ContextRegistry.resolve: inline objects, lists and core URLs (no network)
# ---------------------------------------------------------------------------------------------


class TestResolveOffline:
    def test_none_is_the_core_context(self) -> None:
        registry = offline_registry()
        resolved = run(registry.resolve("", None))
        assert resolved.value == CORE_V19
        assert resolved.link_url == CORE_V19
        assert resolved.terms.expand("location") == NGSI_LD + "location"
        assert resolved.terms.expand("speed") == DEFAULT + "speed"

    def test_inline_object(self) -> None:
        context = {"speed": EX + "speed"}
        resolved = run(offline_registry().resolve("", context))
        assert resolved.value == context
        assert resolved.link_url == CORE_V19
        assert resolved.terms.expand("speed") == EX + "speed"
        assert resolved.terms.expand("location") == NGSI_LD + "location"

    def test_list_of_objects_later_wins(self) -> None:
        context = [{"speed": EX + "speed", "fuel": EX + "fuel"}, {"speed": "http://other.example/speed"}]
        resolved = run(offline_registry().resolve("", context))
        assert resolved.value == context
        assert resolved.terms.expand("speed") == "http://other.example/speed"
        assert resolved.terms.expand("fuel") == EX + "fuel"

    def test_list_with_core_url(self) -> None:
        context = [{"speed": EX + "speed"}, CORE_V19]
        resolved = run(offline_registry().resolve("", context))
        assert resolved.terms.expand("speed") == EX + "speed"
        assert resolved.terms.expand("location") == NGSI_LD + "location"

    @pytest.mark.parametrize("url", [CORE_V19, CORE_V18])
    def test_core_urls_resolve_offline(self, url: str) -> None:
        resolved = run(offline_registry().resolve("", url))
        assert resolved.value == url
        assert resolved.link_url == url
        assert resolved.terms.expand("location") == NGSI_LD + "location"
        assert resolved.terms.expand("speed") == DEFAULT + "speed"

    def test_single_url_list_is_linked(self) -> None:
        resolved = run(offline_registry().resolve("", [CORE_V18]))
        assert resolved.link_url == CORE_V18

    def test_core_documents_are_bundled(self) -> None:
        registry = offline_registry()
        for url in (CORE_V19, CORE_V18):
            assert registry.is_core(url)
            document = run(registry.load("", url))
            assert "@context" in document
        assert not registry.is_core("http://example.org/context.jsonld")

    def test_compiled_contexts_are_reused(self) -> None:
        registry = offline_registry()
        first = run(registry.resolve("", {"speed": EX + "speed"}))
        second = run(registry.resolve("", {"speed": EX + "speed"}))
        assert first.terms is second.terms

    def test_tenants_do_not_share_hosted_contexts(self) -> None:
        registry = offline_registry()
        registry.base_url = "http://127.0.0.1:1026"  # as create_app sets it
        stored = registry.add_hosted("city1", {"@context": {"speed": EX + "speed"}})
        assert registry.find("city1", stored.local_id) is stored
        assert registry.find("city2", stored.local_id) is None
        assert stored.url == "http://127.0.0.1:1026/ngsi-ld/v1/jsonldContexts/" + stored.local_id
        resolved = run(registry.resolve("city1", stored.url))
        assert resolved.terms.expand("speed") == EX + "speed"
        # another tenant does not see it, and loopback is not fetched under this policy
        with pytest.raises(LdContextNotAvailable):
            run(registry.resolve("city2", stored.url))

    @pytest.mark.parametrize("value", [42, True, [42], [{"a": EX + "a"}, 3.5]])
    def test_invalid_context_values(self, value: Any) -> None:
        with pytest.raises(BadRequestData):
            run(offline_registry().resolve("", value))

    def test_relative_url_is_bad_request(self) -> None:
        with pytest.raises(BadRequestData):
            run(offline_registry().resolve("", "context.jsonld"))

    def test_file_urls_are_never_read(self, tmp_path: Path) -> None:
        secret = tmp_path / "ctx.jsonld"
        secret.write_bytes(orjson.dumps({"@context": {"speed": EX + "speed"}}))
        policy = OutboundPolicy(allow_private_networks=True, timeout=0.5)
        with pytest.raises((LdContextNotAvailable, BadRequestData)):
            run(ContextRegistry(policy).resolve("", secret.as_uri()))

    def test_non_public_literal_addresses_are_refused(self) -> None:
        for url in ("http://10.1.2.3/ctx.jsonld", "http://192.168.0.1/ctx.jsonld", "http://[::1]/ctx.jsonld"):
            with pytest.raises(LdContextNotAvailable) as caught:
                run(offline_registry().resolve("", url))
            assert caught.value.status == 504


# ---------------------------------------------------------------------------------------------
# Remote contexts, served by a real HTTP server on 127.0.0.1
# ---------------------------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/ld+json"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class ContextServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ContextHandler)
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends slow answers early at teardown

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def serve_json(self, path: str, document: Any, **kwargs: Any) -> str:
        self.routes[path] = Route(body=orjson.dumps(document), **kwargs)
        return self.url(path)

    def total_hits(self) -> int:
        with self.lock:
            return sum(self.hits.values())

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout, size limit) is expected here


class ContextHandler(BaseHTTPRequestHandler):
    server: ContextServer
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.hits[self.path] += 1
        route = self.server.routes.get(self.path, Route(status=404, body=b"not found", content_type="text/plain"))
        if route.delay:
            self.server.release.wait(route.delay)
        try:
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(route.body)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[ContextServer]:
    server = ContextServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def remote_registry(**policy: Any) -> ContextRegistry:
    options: dict[str, Any] = {"allow_private_networks": True, "timeout": 2.0}
    options.update(policy)
    return ContextRegistry(OutboundPolicy(**options))


VEHICLE_CONTEXT = {"@context": {"Vehicle": EX + "Vehicle", "speed": EX + "speed"}}


class TestRemoteContexts:
    def test_fetched_and_expanded(self, http_server: ContextServer) -> None:
        url = http_server.serve_json("/vehicle.jsonld", VEHICLE_CONTEXT)
        resolved = run(remote_registry().resolve("", url))
        assert resolved.value == url
        assert resolved.link_url == url
        assert resolved.terms.expand("speed") == EX + "speed"
        assert resolved.terms.compact(EX + "Vehicle") == "Vehicle"
        assert resolved.terms.expand("location") == NGSI_LD + "location"
        assert http_server.hits["/vehicle.jsonld"] == 1

    def test_served_as_plain_json(self, http_server: ContextServer) -> None:
        url = http_server.serve_json("/vehicle.json", VEHICLE_CONTEXT, content_type="application/json")
        assert run(remote_registry().resolve("", url)).terms.expand("speed") == EX + "speed"

    def test_fetched_once_and_cached(self, http_server: ContextServer) -> None:
        url = http_server.serve_json("/vehicle.jsonld", VEHICLE_CONTEXT)
        registry = remote_registry()

        async def scenario() -> list[ResolvedContext]:
            return [
                await registry.resolve("", url),
                await registry.resolve("", url),
                # other effective contexts and other tenants reuse the cached document
                await registry.resolve("", [url, {"fuel": EX + "fuel"}]),
                await registry.resolve("city1", url),
                await registry.resolve("city2", [{"ex": EX}, url]),
            ]

        results = run(scenario())
        assert all(r.terms.expand("speed") == EX + "speed" for r in results)
        assert results[2].terms.expand("fuel") == EX + "fuel"
        assert http_server.hits["/vehicle.jsonld"] == 1
        cached = registry.listing("", "Cached")
        assert [c.url for c in cached] == [url]
        assert cached[0].document == VEHICLE_CONTEXT
        assert cached[0].number_of_hits >= 4

    def test_concurrent_requests_fetch_once(self, http_server: ContextServer) -> None:
        url = http_server.serve_json("/slowish.jsonld", VEHICLE_CONTEXT, delay=0.2)
        registry = remote_registry()

        async def scenario() -> list[ResolvedContext]:
            return list(
                await asyncio.gather(
                    registry.resolve("", url),
                    registry.resolve("", [url, {"a": EX + "a"}]),
                    registry.resolve("t", [url, {"b": EX + "b"}]),
                )
            )

        results = run(scenario())
        assert all(r.terms.expand("speed") == EX + "speed" for r in results)
        assert http_server.hits["/slowish.jsonld"] == 1

    def test_nested_remote_contexts(self, http_server: ContextServer) -> None:
        base = http_server.serve_json("/base.jsonld", {"@context": {"ex": EX}})
        url = http_server.serve_json("/vehicle.jsonld", {"@context": [base, {"speed": "ex:speed"}]})
        terms = run(remote_registry().resolve("", url)).terms
        assert terms.expand("speed") == EX + "speed"
        assert terms.expand("ex:fuel") == EX + "fuel"
        assert http_server.hits["/base.jsonld"] == 1
        assert http_server.hits["/vehicle.jsonld"] == 1

    def test_cyclic_remote_contexts_terminate(self, http_server: ContextServer) -> None:
        a, b = http_server.url("/a.jsonld"), http_server.url("/b.jsonld")
        http_server.serve_json("/a.jsonld", {"@context": [b, {"speed": EX + "speed"}]})
        http_server.serve_json("/b.jsonld", {"@context": [a, {"fuel": EX + "fuel"}]})
        terms = run(remote_registry().resolve("", a)).terms
        assert terms.expand("speed") == EX + "speed"
        assert terms.expand("fuel") == EX + "fuel"
        assert http_server.hits["/a.jsonld"] == 1
        assert http_server.hits["/b.jsonld"] == 1

    def test_remote_scoped_context_is_refused(self, http_server: ContextServer) -> None:
        url = http_server.serve_json("/scoped.jsonld", {"@context": {"V": {"@id": EX + "V", "@context": {}}}})
        with pytest.raises(BadRequestData):
            run(remote_registry().resolve("", url))

    def test_not_found_is_ld_context_not_available(self, http_server: ContextServer) -> None:
        url = http_server.url("/missing.jsonld")
        with pytest.raises(LdContextNotAvailable) as caught:
            run(remote_registry().resolve("", url))
        assert caught.value.status == 504
        assert caught.value.problem()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable"
        assert http_server.hits["/missing.jsonld"] == 1

    def test_server_error_is_ld_context_not_available(self, http_server: ContextServer) -> None:
        http_server.routes["/broken.jsonld"] = Route(status=500, body=b"{}")
        with pytest.raises(LdContextNotAvailable):
            run(remote_registry().resolve("", http_server.url("/broken.jsonld")))

    def test_unreachable_is_ld_context_not_available(self) -> None:
        url = f"http://127.0.0.1:{free_port()}/ctx.jsonld"  # nothing listens there
        with pytest.raises(LdContextNotAvailable) as caught:
            run(remote_registry().resolve("", url))
        assert caught.value.status == 504

    def test_failure_is_remembered_for_failure_ttl(self, http_server: ContextServer) -> None:
        registry = ContextRegistry(OutboundPolicy(allow_private_networks=True, timeout=2.0), failure_ttl=0.5)
        url = http_server.url("/later.jsonld")
        with pytest.raises(LdContextNotAvailable):
            run(registry.resolve("", url))
        http_server.serve_json("/later.jsonld", VEHICLE_CONTEXT)
        with pytest.raises(LdContextNotAvailable, match="context_failure_ttl"):
            run(registry.resolve("", url))  # answered from the negative cache, no new fetch
        assert http_server.hits["/later.jsonld"] == 1
        time.sleep(0.6)
        assert run(registry.resolve("", url)).terms.expand("speed") == EX + "speed"
        assert http_server.hits["/later.jsonld"] == 2

    def test_failure_ttl_zero_retries_every_time(self, http_server: ContextServer) -> None:
        registry = ContextRegistry(OutboundPolicy(allow_private_networks=True, timeout=2.0), failure_ttl=0)
        url = http_server.url("/later.jsonld")
        with pytest.raises(LdContextNotAvailable):
            run(registry.resolve("", url))
        http_server.serve_json("/later.jsonld", VEHICLE_CONTEXT)
        assert run(registry.resolve("", url)).terms.expand("speed") == EX + "speed"
        assert http_server.hits["/later.jsonld"] == 2

    @pytest.mark.parametrize(
        "body",
        [b"this is not json", b'{"@context": ', b"[1, 2, 3]", b'{"speed": "http://example.org/speed"}', b"42"],
    )
    def test_invalid_document_is_bad_request_data(self, http_server: ContextServer, body: bytes) -> None:
        http_server.routes["/bad.jsonld"] = Route(body=body)
        with pytest.raises(BadRequestData) as caught:
            run(remote_registry().resolve("", http_server.url("/bad.jsonld")))
        assert caught.value.status == 400

    def test_document_over_max_bytes(self, http_server: ContextServer) -> None:
        big = {"@context": {f"term{i}": f"{EX}term{i}" for i in range(200)}}
        url = http_server.serve_json("/big.jsonld", big)
        assert len(orjson.dumps(big)) > 2000
        with pytest.raises(LdContextNotAvailable) as caught:
            run(remote_registry(max_bytes=1000).resolve("", url))
        assert caught.value.status == 504
        # the same document is accepted under a larger limit
        terms = run(remote_registry(max_bytes=100_000).resolve("", url)).terms
        assert terms.expand("term7") == EX + "term7"

    def test_slow_server_times_out(self, http_server: ContextServer) -> None:
        url = http_server.serve_json("/slow.jsonld", VEHICLE_CONTEXT, delay=5.0)
        loop_time = asyncio.run(self._timed_failure(remote_registry(timeout=0.5), url))
        assert loop_time < 3.0

    @staticmethod
    async def _timed_failure(registry: ContextRegistry, url: str) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(LdContextNotAvailable):
            await registry.resolve("", url)
        return loop.time() - start

    def test_loopback_refused_without_private_networks(self, http_server: ContextServer) -> None:
        url = http_server.serve_json("/vehicle.jsonld", VEHICLE_CONTEXT)
        localhost_url = url.replace("127.0.0.1", "localhost")
        registry = ContextRegistry(OutboundPolicy(allow_private_networks=False, timeout=1.0))
        for target in (url, localhost_url):
            with pytest.raises(LdContextNotAvailable) as caught:
                run(registry.resolve("", target))
            assert caught.value.status == 504
            assert "--allow-private-networks" in caught.value.detail  # the way out is named
        assert http_server.total_hits() == 0

    def test_redirects_are_followed(self, http_server: ContextServer) -> None:
        """JSON-LD document loading follows redirects (w3id.org contexts rely on them)."""
        url = http_server.serve_json("/vehicle.jsonld", VEHICLE_CONTEXT)
        http_server.routes["/moved.jsonld"] = Route(status=302, headers={"Location": url})
        terms = run(remote_registry().resolve("", http_server.url("/moved.jsonld"))).terms
        assert terms.expand("speed") == EX + "speed"

    def test_reload_fetches_again(self, http_server: ContextServer) -> None:
        url = http_server.serve_json("/vehicle.jsonld", VEHICLE_CONTEXT)
        registry = remote_registry()
        assert run(registry.resolve("", url)).terms.expand("speed") == EX + "speed"
        http_server.serve_json("/vehicle.jsonld", {"@context": {"speed": "http://other.example/speed"}})
        (stored,) = registry.listing("", "Cached")
        run(registry.reload(stored))
        assert http_server.hits["/vehicle.jsonld"] == 2
        assert run(registry.resolve("", url)).terms.expand("speed") == "http://other.example/speed"

    def test_cache_size_bounds_the_cache(self, http_server: ContextServer) -> None:
        registry = ContextRegistry(OutboundPolicy(allow_private_networks=True, timeout=2.0), cache_size=2)
        urls = [http_server.serve_json(f"/c{i}.jsonld", {"@context": {f"t{i}": f"{EX}t{i}"}}) for i in range(3)]
        for url in urls:
            run(registry.resolve("", url))
        assert len(registry.listing("", "Cached")) == 2


# ---------------------------------------------------------------------------------------------
# The preload manifest: contexts served with no network
# ---------------------------------------------------------------------------------------------


def write_manifest(directory: Path, mapping: dict[str, str], files: dict[str, Any]) -> Path:
    for name, document in files.items():
        (directory / name).write_bytes(orjson.dumps(document))
    manifest = directory / "manifest.json"
    manifest.write_bytes(orjson.dumps(mapping))
    return manifest


class TestPreloadManifest:
    def test_preloaded_contexts_need_no_network(self, tmp_path: Path) -> None:
        absolute = tmp_path / "fleet.jsonld"
        absolute.write_bytes(orjson.dumps({"@context": {"fleet": EX + "fleet"}}))
        manifest = write_manifest(
            tmp_path,
            {"https://example.org/vehicle.jsonld": "vehicle.jsonld", "https://example.org/fleet.jsonld": str(absolute)},
            {"vehicle.jsonld": VEHICLE_CONTEXT},
        )
        registry = offline_registry(preload_manifest=str(manifest))
        terms = run(registry.resolve("", "https://example.org/vehicle.jsonld")).terms
        assert terms.expand("speed") == EX + "speed"
        both = run(registry.resolve("", ["https://example.org/vehicle.jsonld", "https://example.org/fleet.jsonld"]))
        assert both.terms.expand("fleet") == EX + "fleet"
        assert both.terms.expand("Vehicle") == EX + "Vehicle"

    def test_preload_wins_over_the_network(self, tmp_path: Path, http_server: ContextServer) -> None:
        url = http_server.serve_json("/vehicle.jsonld", {"@context": {"speed": "http://network.example/speed"}})
        manifest = write_manifest(tmp_path, {url: "vehicle.jsonld"}, {"vehicle.jsonld": VEHICLE_CONTEXT})
        registry = ContextRegistry(
            OutboundPolicy(allow_private_networks=True, timeout=1.0), preload_manifest=str(manifest)
        )
        assert run(registry.resolve("", url)).terms.expand("speed") == EX + "speed"
        assert http_server.total_hits() == 0

    @pytest.mark.parametrize(
        ("mapping", "files"),
        [
            ({"https://example.org/a.jsonld": "missing.jsonld"}, {}),
            ({"https://example.org/a.jsonld": "a.jsonld"}, {"a.jsonld": {"speed": EX + "speed"}}),
            ({"https://example.org/a.jsonld": "a.jsonld"}, {"a.jsonld": [1, 2]}),
        ],
    )
    def test_bad_manifest_entries(self, tmp_path: Path, mapping: dict[str, str], files: dict[str, Any]) -> None:
        manifest = write_manifest(tmp_path, mapping, files)
        with pytest.raises(ValueError):
            offline_registry(preload_manifest=str(manifest))

    def test_manifest_must_be_an_object(self, tmp_path: Path) -> None:
        manifest = tmp_path / "manifest.json"
        manifest.write_bytes(b'["https://example.org/a.jsonld"]')
        with pytest.raises(ValueError):
            offline_registry(preload_manifest=str(manifest))
        manifest.write_bytes(b"{not json")
        with pytest.raises(ValueError):
            offline_registry(preload_manifest=str(manifest))
        with pytest.raises(ValueError):
            offline_registry(preload_manifest=str(tmp_path / "absent.json"))

    def test_setting_serves_preloaded_contexts_to_the_api(self, tmp_path: Path, db_url: str) -> None:
        url = "https://contexts.example.org/vehicle.jsonld"
        manifest = write_manifest(tmp_path, {url: "vehicle.jsonld"}, {"vehicle.jsonld": VEHICLE_CONTEXT})
        settings = Settings(database=db_url, context_preload=str(manifest))
        assert settings.allow_private_networks is False
        link = f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
        entity = {"id": "urn:ngsi-ld:Vehicle:P1", "type": "Vehicle", "speed": {"type": "Property", "value": 50}}
        with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
            created = client.post("/ngsi-ld/v1/entities", json=entity, headers={"Link": link})
            assert created.status_code == 201, created.text
            expanded = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Vehicle:P1").json()
            assert expanded["type"] == EX + "Vehicle"
            assert expanded[EX + "speed"]["value"] == 50
            compacted = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Vehicle:P1", headers={"Link": link})
            assert compacted.json()["type"] == "Vehicle"
            assert compacted.json()["speed"]["value"] == 50
            assert url in compacted.headers["link"]

    def test_bad_manifest_fails_app_creation(self, tmp_path: Path) -> None:
        settings = Settings(database=str(tmp_path / "city.db"), context_preload=str(tmp_path / "absent.json"))
        with pytest.raises(ValueError):
            create_app(settings)


def test_errors_are_ngsi_ld_problems() -> None:
    assert issubclass(LdContextNotAvailable, NgsiLdError)
    assert LdContextNotAvailable("x").status == 504
    assert BadRequestData("x").status == 400
