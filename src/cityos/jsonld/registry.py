"""Where @contexts come from: bundled core contexts, hosted (user-added) contexts, a preload
manifest, and remote contexts fetched under the outbound policy and cached.

Every distinct context value is compiled once into a TermMap (see termmap.py) and cached, so a
request pays for a dict lookup, not for JSON-LD processing. A failed fetch is remembered for
`failure_ttl` seconds (a batch of 1,000 entities naming one unreachable context tries it once), all
fetches share one HTTP client, and one request spends at most `request_budget` seconds fetching.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import orjson

from cityos.errors import BadRequestData, LdContextNotAvailable, NgsiLdError
from cityos.jsonld.termmap import TermMap, define_terms
from cityos.net import OutboundPolicy, OutboundRefused

CORE_BASE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context"
CORE_FILES = {
    f"{CORE_BASE}-v1.9.jsonld": "ngsi-ld-core-context-v1.9.jsonld",
    f"{CORE_BASE}-v1.8.jsonld": "ngsi-ld-core-context-v1.8.jsonld",
    f"{CORE_BASE}-v1.7.jsonld": "ngsi-ld-core-context-v1.7.jsonld",
    f"{CORE_BASE}-v1.6.jsonld": "ngsi-ld-core-context-v1.6.jsonld",
}
MAX_NESTING = 8
HOSTED_PATH = "/ngsi-ld/v1/jsonldContexts/"


def core_url(version: str) -> str:
    return f"{CORE_BASE}-{version}.jsonld"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StoredContext:
    """A context known to the broker, with the bookkeeping the jsonldContexts API reports."""

    url: str
    local_id: str
    kind: str  # "Hosted", "Cached", "ImplicitlyCreated"
    document: dict[str, Any]
    tenant: str = ""
    created_at: str = field(default_factory=now_iso)
    last_usage: str | None = None
    number_of_hits: int = 0

    def touch(self) -> None:
        self.number_of_hits += 1
        self.last_usage = now_iso()

    def details(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "URL": self.url,
            "localId": self.local_id,
            "kind": self.kind,
            "createdAt": self.created_at,
        }
        if self.last_usage is not None:
            info["lastUsage"] = self.last_usage
        info["numberOfHits"] = self.number_of_hits
        return info


@dataclass(frozen=True)
class ResolvedContext:
    """A request's effective context: its compiled terms and the value to echo in responses."""

    terms: TermMap
    value: Any  # what goes into "@context" / Link of responses (a URL, or a list)
    link_url: str  # the single URL for a Link header


class ContextRegistry:
    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        default_core: str = "v1.9",
        cache_size: int = 256,
        preload_manifest: str = "",
        failure_ttl: float = 30.0,
        request_budget: float = 10.0,
    ) -> None:
        self.policy = policy
        self.failure_ttl = failure_ttl
        self.request_budget = request_budget
        # URL -> (monotonic expiry, error class, detail) of a recent failed fetch
        self._failures: dict[str, tuple[float, type[NgsiLdError], str]] = {}
        # made at the first fetch on an event loop, closed by aclose()
        self._client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None
        self.core_url = core_url(default_core)
        self.cache_size = cache_size
        self._core_docs: dict[str, dict[str, Any]] = {}
        self._core_terms: dict[str, TermMap] = {}
        self._core_resolved: ResolvedContext | None = None  # resolve(value=None), kept (core_terms is)
        self._preloaded: dict[str, dict[str, Any]] = {}
        # per-tenant hosted / implicit contexts, keyed by local id
        self._hosted: dict[str, dict[str, StoredContext]] = {}
        # remote contexts fetched and cached (shared by tenants), keyed by URL
        self._cached: OrderedDict[str, StoredContext] = OrderedDict()
        self._compiled: OrderedDict[Any, TermMap] = OrderedDict()
        self._fetch_locks: dict[str, asyncio.Lock] = {}
        self.base_url = ""  # set by the app: how this broker's hosted URLs begin
        # resolutions of a request's own @context: compiled before (hit), now (miss), and remote
        # fetches that failed; read by the metrics (observe/metrics.py)
        self.counts = {"hit": 0, "miss": 0, "fetch_failure": 0}
        if preload_manifest:
            self._load_manifest(Path(preload_manifest))

    # -- bundled and preloaded ---------------------------------------------------------------
    def core_document(self, url: str) -> dict[str, Any] | None:
        name = CORE_FILES.get(url)
        if name is None:
            if url in (f"{CORE_BASE}.jsonld", "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"):
                name = CORE_FILES[self.core_url]
            else:
                return None
        doc = self._core_docs.get(name)
        if doc is None:
            raw = resources.files("cityos.jsonld").joinpath("contexts").joinpath(name).read_bytes()
            doc = orjson.loads(raw)
            self._core_docs[name] = doc
        return doc

    def core_terms(self, url: str | None = None) -> TermMap:
        url = url or self.core_url
        terms = self._core_terms.get(url)
        if terms is None:
            doc = self.core_document(url)
            assert doc is not None
            terms = TermMap()
            define_terms(terms, doc["@context"], allow_scoped=True)
            self._core_terms[url] = terms
        return terms

    def is_core(self, url: str) -> bool:
        return self.core_document(url) is not None

    def _load_manifest(self, path: Path) -> None:
        try:
            manifest = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"cannot read context preload manifest {path}: {exc}") from exc
        if not isinstance(manifest, dict):
            raise ValueError(f"{path}: the manifest must map @context URLs to file paths")
        for url, file_name in manifest.items():
            file_path = (path.parent / str(file_name)).resolve()
            try:
                doc = orjson.loads(file_path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise ValueError(f"cannot read preloaded @context {file_path}: {exc}") from exc
            if not isinstance(doc, dict) or "@context" not in doc:
                raise ValueError(f"{file_path} has no @context member")
            self._preloaded[url] = doc

    # -- hosted ------------------------------------------------------------------------------
    def hosted_url(self, local_id: str) -> str:
        return f"{self.base_url}{HOSTED_PATH}{local_id}"

    def add_hosted(self, tenant: str, document: dict[str, Any], kind: str = "Hosted") -> StoredContext:
        local_id = uuid.uuid4().hex
        stored = StoredContext(self.hosted_url(local_id), local_id, kind, document, tenant)
        self._hosted.setdefault(tenant, {})[local_id] = stored
        return stored

    def restore_hosted(self, stored: StoredContext) -> None:
        stored.url = self.hosted_url(stored.local_id)
        self._hosted.setdefault(stored.tenant, {})[stored.local_id] = stored

    def replace_hosted(self, contexts: list[StoredContext]) -> None:
        """Hold exactly these hosted and implicit contexts (the store's, after another worker
        changed them); compiled term maps are dropped since they may use a replaced one. Contexts
        that did not change keep their usage counts."""
        held, self._hosted = self._hosted, {}
        for stored in contexts:
            same = held.get(stored.tenant, {}).get(stored.local_id)
            if same is not None and same.kind == stored.kind and same.document == stored.document:
                stored = same
            self.restore_hosted(stored)
        self._compiled.clear()

    def find(self, tenant: str, context_id: str) -> StoredContext | None:
        """A context by local id or URL: the tenant's hosted ones, then the shared cache."""
        hosted = self._hosted.get(tenant, {})
        if context_id in hosted:
            return hosted[context_id]
        local_id = self._local_id_of(context_id)
        if local_id is not None and local_id in hosted:
            return hosted[local_id]
        if context_id in self._cached:
            return self._cached[context_id]
        for stored in self._cached.values():
            if stored.local_id == context_id:
                return stored
        return None

    def _local_id_of(self, url: str) -> str | None:
        index = url.find(HOSTED_PATH)
        return url[index + len(HOSTED_PATH) :] if index >= 0 else None

    def listing(self, tenant: str, kind: str | None) -> list[StoredContext]:
        items = list(self._hosted.get(tenant, {}).values()) + list(self._cached.values())
        return [item for item in items if kind is None or item.kind == kind]

    def remove(self, stored: StoredContext) -> None:
        if stored.kind == "Cached":
            self._cached.pop(stored.url, None)
        else:
            self._hosted.get(stored.tenant, {}).pop(stored.local_id, None)
        self._compiled.clear()

    async def reload(self, stored: StoredContext) -> None:
        """Fetch a cached context again; on failure the cached copy stays."""
        fresh = await self._download(stored.url)
        stored.document = fresh
        self._compiled.clear()

    async def aclose(self) -> None:
        """Close the shared HTTP client (at shutdown)."""
        held, self._client = self._client, None
        if held is not None and held[0] is asyncio.get_running_loop():
            await held[1].aclose()

    def deadline(self) -> float:
        """The event-loop time by which a request that starts now must have its contexts."""
        return asyncio.get_running_loop().time() + self.request_budget

    # -- resolution --------------------------------------------------------------------------
    async def resolve(self, tenant: str, value: Any, *, deadline: float | None = None) -> ResolvedContext:
        """Compile a request's @context (a URL, an object, a list, or None for the core only).
        Fetching stops at `deadline` (event-loop time; by default request_budget from now), which a
        request resolving several contexts (a batch) passes to every call."""
        if value is None:  # the usual read: no Link header; one object while the core stays the same
            core_terms = self.core_terms()
            resolved = self._core_resolved
            if resolved is None or resolved.terms is not core_terms or resolved.value != self.core_url:
                resolved = self._core_resolved = ResolvedContext(core_terms, self.core_url, self.core_url)
            return resolved
        key = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        cache_key = (tenant, key)
        terms = self._compiled.get(cache_key)
        if terms is None:
            self.counts["miss"] += 1
            terms = TermMap(vocab=self.core_terms().vocab)
            try:
                async with asyncio.timeout_at(self.deadline() if deadline is None else deadline):
                    await self._apply(tenant, terms, value, 0, set())
            except TimeoutError as exc:
                raise LdContextNotAvailable(
                    f"the @context could not be fetched within {self.request_budget} s (context_request_budget)"
                ) from exc
            core = self.core_terms()
            terms.terms.update(core.terms)  # the core context comes last and is protected
            terms.vocab = core.vocab
            self._compiled[cache_key] = terms
            if len(self._compiled) > self.cache_size * 4:
                self._compiled.popitem(last=False)
        else:
            self.counts["hit"] += 1
            self._compiled.move_to_end(cache_key)
        for url in value if isinstance(value, list) else [value]:
            if isinstance(url, str):
                self._touch(tenant, url)
        link = value if isinstance(value, str) else self.core_url
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            link = value[0]
        return ResolvedContext(terms, value, link)

    def _touch(self, tenant: str, url: str) -> None:
        """Count a use of a hosted or cached context (numberOfHits, lastUsage)."""
        stored = self._cached.get(url)
        if stored is None:
            local_id = self._local_id_of(url)
            stored = self._hosted.get(tenant, {}).get(local_id) if local_id is not None else None
        if stored is not None:
            stored.touch()

    async def _apply(self, tenant: str, terms: TermMap, value: Any, depth: int, seen: set[str]) -> None:
        if depth > MAX_NESTING:
            raise BadRequestData("@context nesting is too deep")
        if value is None:
            return
        if isinstance(value, list):
            for item in value:
                await self._apply(tenant, terms, item, depth + 1, seen)
        elif isinstance(value, str):
            if value in seen or self.is_core(value):
                return  # the core context is applied on top of every context anyway
            seen.add(value)
            doc = await self.load(tenant, value)
            await self._apply(tenant, terms, doc.get("@context"), depth + 1, seen)
        elif isinstance(value, dict):
            define_terms(terms, value)
        else:
            raise BadRequestData("@context must be a URL, an object or an array of them")

    async def load(self, tenant: str, url: str) -> dict[str, Any]:
        """The document behind a context URL, fetched at most once and then cached."""
        core = self.core_document(url)
        if core is not None:
            return core
        if url in self._preloaded:
            return self._preloaded[url]
        if "://" not in url:
            raise BadRequestData(f"@context entry {url!r} is not an absolute URL")
        local_id = self._local_id_of(url)
        if local_id is not None:
            hosted = self._hosted.get(tenant, {}).get(local_id)
            if hosted is not None:
                return hosted.document
        stored = self._cached.get(url)
        if stored is not None:
            self._cached.move_to_end(url)
            return stored.document
        return (await self._fetch(url)).document

    async def _download(self, url: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:  # a client belongs to one loop
            # no idle connections: a former loop's client then holds none to close
            self._client = (loop, self.policy.client(limits=httpx.Limits(max_keepalive_connections=0)))
        try:
            body = await self.policy.get(url, "application/ld+json, application/json", client=self._client[1])
        except OutboundRefused as exc:
            raise LdContextNotAvailable(f"@context {url} could not be retrieved: {exc}") from exc
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequestData(f"the document at {url} is not valid JSON") from exc
        if not isinstance(doc, dict) or "@context" not in doc:
            raise BadRequestData(f"the document at {url} has no @context member")
        return doc

    def _recent_failure(self, url: str) -> None:
        """Raise again, at once, the error of a fetch of `url` that failed less than failure_ttl ago."""
        failure = self._failures.get(url)
        if failure is None:
            return
        expiry, error, detail = failure
        if time.monotonic() >= expiry:
            del self._failures[url]
            return
        raise error(f"{detail} (remembered for {self.failure_ttl:g} s: context_failure_ttl)")

    async def _fetch(self, url: str) -> StoredContext:
        self._recent_failure(url)
        lock = self._fetch_locks.setdefault(url, asyncio.Lock())
        async with lock:
            stored = self._cached.get(url)
            if stored is not None:
                return stored
            self._recent_failure(url)  # found by the fetch this one waited for
            try:
                doc = await self._download(url)
            except (LdContextNotAvailable, BadRequestData) as exc:
                self.counts["fetch_failure"] += 1
                if self.failure_ttl > 0:
                    if len(self._failures) >= self.cache_size:
                        self._failures.pop(next(iter(self._failures)))
                    self._failures[url] = (time.monotonic() + self.failure_ttl, type(exc), exc.detail)
                raise
            finally:
                self._fetch_locks.pop(url, None)
            stored = StoredContext(url, uuid.uuid4().hex, "Cached", doc)
            self._cached[url] = stored
            while len(self._cached) > self.cache_size:
                self._cached.popitem(last=False)
            return stored
