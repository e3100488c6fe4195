"""Compile JSON-LD @contexts into term maps once, then expand and compact names with dict lookups.

This is deliberately not a general JSON-LD processor: NGSI-LD only needs term <-> IRI mapping
for attribute names, entity types and a few value coercions (`@vocab`-typed values), so each
distinct context is compiled once into a TermMap and cached by the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cityos.errors import BadRequestData

KEYWORDS = frozenset(
    {
        "@id",
        "@type",
        "@value",
        "@language",
        "@list",
        "@set",
        "@graph",
        "@context",
        "@vocab",
        "@base",
        "@container",
        "@index",
        "@reverse",
        "@json",
        "@none",
        "@nest",
        "@version",
        "@protected",
        "@import",
        "@propagate",
        "@prefix",
        "@direction",
        "@included",
    }
)
GEN_DELIMS = (":", "/", "?", "#", "[", "]", "@")


@dataclass(frozen=True, slots=True)
class TermDef:
    iri: str
    type: str | None = None  # @type coercion, e.g. "@vocab", "@id", "@json", or an IRI
    container: str | None = None


@dataclass(slots=True)
class TermMap:
    """Terms of one effective context (user contexts first, the core context on top)."""

    terms: dict[str, TermDef] = field(default_factory=dict)
    vocab: str | None = None
    _inverse: dict[str, str] | None = None
    _prefixes: list[tuple[str, str]] | None = None
    compacted: dict[str, str] = field(default_factory=dict)  # IRI -> compact form, filled by compact()
    _expand_cache: dict[str, str] = field(default_factory=dict)
    generation: int = 0  # bumped by define_terms: what was rendered under an older one is stale

    def copy(self) -> TermMap:
        return TermMap(terms=dict(self.terms), vocab=self.vocab)

    # -- expansion -------------------------------------------------------------------------
    def expand(self, term: str) -> str:
        """Expand a term, compact IRI or absolute IRI to an absolute IRI (vocabulary-relative)."""
        hit = self._expand_cache.get(term)
        if hit is not None:
            return hit
        iri = self._expand_uncached(term)
        if len(self._expand_cache) < 10_000:
            self._expand_cache[term] = iri
        return iri

    def _expand_uncached(self, term: str) -> str:
        definition = self.terms.get(term)
        if definition is not None:
            return definition.iri
        if ":" in term:
            prefix, suffix = term.split(":", 1)
            if not suffix.startswith("//"):
                prefix_def = self.terms.get(prefix)
                if prefix_def is not None and not prefix_def.iri.startswith("@"):
                    return prefix_def.iri + suffix
            return term
        if self.vocab is not None:
            return self.vocab + term
        return term

    def definition_of_iri(self, iri: str) -> TermDef | None:
        term = self.inverse().get(iri)
        return self.terms.get(term) if term is not None else None

    # -- compaction ------------------------------------------------------------------------
    def inverse(self) -> dict[str, str]:
        if self._inverse is None:
            inverse: dict[str, str] = {}
            for term, definition in self.terms.items():
                if definition.iri.startswith("@") or term.startswith("@"):
                    continue
                current = inverse.get(definition.iri)
                if current is None or (len(term), term) < (len(current), current):
                    inverse[definition.iri] = term
            self._inverse = inverse
        return self._inverse

    def prefixes(self) -> list[tuple[str, str]]:
        if self._prefixes is None:
            self._prefixes = sorted(
                (
                    (term, d.iri)
                    for term, d in self.terms.items()
                    if ":" not in term and d.iri.endswith(GEN_DELIMS) and not d.iri.startswith("@")
                ),
                key=lambda pair: -len(pair[1]),
            )
        return self._prefixes

    def compact(self, iri: str) -> str:
        """Compact an absolute IRI to the shortest term or compact IRI this context allows."""
        hit = self.compacted.get(iri)
        if hit is not None:
            return hit
        result = self._compact_uncached(iri)
        if len(self.compacted) < 10_000:
            self.compacted[iri] = result
        return result

    def _compact_uncached(self, iri: str) -> str:
        term = self.inverse().get(iri)
        if term is not None:
            return term
        if self.vocab is not None and iri.startswith(self.vocab):
            suffix = iri[len(self.vocab) :]
            if suffix and suffix not in self.terms and ":" not in suffix:
                return suffix
        best: str | None = None
        for prefix, prefix_iri in self.prefixes():
            if iri.startswith(prefix_iri) and len(iri) > len(prefix_iri):
                candidate = f"{prefix}:{iri[len(prefix_iri) :]}"
                if candidate not in self.terms and (best is None or len(candidate) < len(best)):
                    best = candidate
        return best if best is not None else iri


def define_terms(target: TermMap, context: dict[str, Any], *, allow_scoped: bool = False) -> None:
    """Add the term definitions of one context object to `target` (later definitions win).
    Scoped contexts are refused in user contexts: NGSI-LD names must mean one thing per request."""
    local: dict[str, Any] = context

    def resolve(value: str, seen: frozenset[str] = frozenset()) -> str:
        if value.startswith("@") or "://" in value:
            return value
        if ":" in value:
            prefix, suffix = value.split(":", 1)
            if prefix in local and prefix not in seen:
                raw = local[prefix]
                base = raw if isinstance(raw, str) else raw.get("@id") if isinstance(raw, dict) else None
                if isinstance(base, str):
                    return resolve(base, seen | {prefix}) + suffix
            existing = target.terms.get(prefix)
            if existing is not None:
                return existing.iri + suffix
            return value
        if value in local and value not in seen:
            raw = local[value]
            if isinstance(raw, str):
                return resolve(raw, seen | {value})
        existing = target.terms.get(value)
        if existing is not None:
            return existing.iri
        return (target.vocab + value) if target.vocab else value

    vocab = context.get("@vocab")
    if isinstance(vocab, str):
        target.vocab = resolve(vocab) if vocab else None
    elif "@vocab" in context and vocab is None:
        target.vocab = None
    for term, raw in context.items():
        if term.startswith("@"):
            continue
        if raw is None:
            target.terms.pop(term, None)
            continue
        if isinstance(raw, str):
            target.terms[term] = TermDef(resolve(raw))
        elif isinstance(raw, dict):
            if "@context" in raw and not allow_scoped:
                raise BadRequestData(f"@context term {term!r} uses a scoped context, which is not supported")
            iri_raw = raw.get("@id")
            if iri_raw is None:
                iri = resolve(term) if ":" in term else (target.vocab or "") + term
            elif isinstance(iri_raw, str):
                iri = resolve(iri_raw)
            else:
                raise BadRequestData(f"@context term {term!r} has a non-string @id")
            type_raw = raw.get("@type")
            coercion = resolve(type_raw) if isinstance(type_raw, str) else None
            container = raw.get("@container")
            target.terms[term] = TermDef(iri, coercion, container if isinstance(container, str) else None)
        else:
            raise BadRequestData(f"@context term {term!r} must map to a string or an object")
    target._inverse = None
    target._prefixes = None
    target.compacted.clear()
    target._expand_cache.clear()
    target.generation += 1
