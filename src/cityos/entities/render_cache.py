"""Query pages rendered from stored documents, each entity's JSON cached by what it is made of.

A page of 20 entities spent two thirds of its time decoding each stored document and rendering it
(compacting every attribute name, then `orjson.dumps`). A document that did not change renders to
the same bytes under the same options, so the JSON of each rendered entity is kept under
(the options' token, the document's stored bytes): a hit skips inflate, decode, render and dumps.

Exact by construction, with nothing to invalidate: the key *is* the stored document (an updated
entity has other bytes, so it is a miss), and the token stands for everything else the rendering
reads (the TermMap object and its generation, format, sysAttrs, attrs/pick/omit, lang,
datasetId, and the caller's access view, whose visible() and project() depend on the entity alone:
policy/enforce.py renders_cached says which views promise that). Under a view an entity it may not
see at all is kept as HIDDEN, never as a rendering, so a retrieve by id answers it as missing. The store
hands out stored bytes only for documents with nothing expired in them (store/base.py
QueryResult.stored); joins, GeoJSON and views that audit personal reads never come here
(ngsild/querying.py). Bounded: at most BUDGET bytes of keys and values, least recently used out
first (the render_cache_mb setting), and at most MAX_TOKENS option sets (past it everything is
dropped, which is always safe).
Rendering happens on the event loop's thread, so there is no lock; two apps' loops in one process
at worst evict each other's entries.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

import orjson

from cityos.entities.model import Entity
from cityos.entities.render import RenderOptions, render_entity, render_owned
from cityos.policy.decision import ReadView

BUDGET = 16 * 1024 * 1024  # bytes of stored documents and rendered JSON held (about 10,000 entities); the
# render_cache_mb setting sets the process's CACHE (create_app)
ENTRY_OVERHEAD = 200  # the ordered dict's node and slot, the key tuple, the bytes objects' headers (measured 130-170)
MAX_TOKENS = 256  # distinct option sets (contexts x formats x projections) before a reset
# of those, under access views (views x option sets): past it the views' tokens are forgotten (their
# entries, unreachable, age out), so many principals' views or policy changes never reset the rest
MAX_VIEW_TOKENS = 64
# every render option but the TermMap, which is keyed by identity and generation (it is not hashable)
_OPTION_FIELDS = tuple(f.name for f in fields(RenderOptions) if f.name != "terms")
_NO_LAST: tuple[object, object, int, int] = (object(), object(), -1, 0)
HIDDEN = b"\x00"  # what a view's entry holds for an entity the view may not see (never JSON)


class RenderCache:
    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self.size = 0
        self._entries: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        # options' key -> (token, the TermMap and view, kept alive so no id() is reused while cached)
        self._tokens: dict[tuple[Any, ...], tuple[int, object, object]] = {}
        self._next_token = 0
        self._view_tokens = 0  # how many of the tokens are under an access view
        # (options, view, TermMap generation, token) of the last call: the options object is held,
        # so no other can take its id while this is kept
        self._last: tuple[object, object, int, int] = _NO_LAST

    def token(self, options: RenderOptions, view: object = None) -> int:
        """A small integer standing for everything but the document that the rendering reads:
        the options and the access view (None: unrestricted) that projects each entity."""
        terms = options.terms
        last = self._last  # the same options object as last time (plain reads share one): no key
        if last[0] is options and last[1] is view and last[2] == terms.generation:
            return last[3]
        key = (id(terms), terms.generation, id(view), *[getattr(options, name) for name in _OPTION_FIELDS])
        found = self._tokens.get(key)
        if found is not None and found[1] is terms and found[2] is view:
            self._last = (options, view, terms.generation, found[0])
            return found[0]
        if view is not None and self._view_tokens >= MAX_VIEW_TOKENS:
            self._forget_views()
        if len(self._tokens) >= MAX_TOKENS:
            self.clear()
        if view is not None:
            self._view_tokens += 1
        self._next_token += 1
        self._tokens[key] = (self._next_token, terms, view)
        self._last = (options, view, terms.generation, self._next_token)
        return self._next_token

    def resize(self, budget: int) -> None:
        """A new bound (the render_cache_mb setting), the least recently used entries out past it."""
        self.budget = budget
        while self.size > budget and self._entries:
            (_, old_stored), old_data = self._entries.popitem(last=False)
            self.size -= len(old_stored) + len(old_data) + ENTRY_OVERHEAD

    def clear(self) -> None:
        self._last = _NO_LAST
        self._entries.clear()
        self._tokens.clear()
        self._view_tokens = 0
        self.size = 0

    def _forget_views(self) -> None:
        """Drop the tokens under access views (a token is never given twice, so their entries are
        never served again and leave by LRU); the unrestricted ones and their entries stay."""
        self._tokens = {key: found for key, found in self._tokens.items() if found[2] is None}
        self._view_tokens = 0
        self._last = _NO_LAST

    def render(self, token: int, stored: bytes, make: Callable[[bytes], bytes]) -> bytes:
        """The JSON of the entity stored as `stored` under `token`; `make` renders it on a miss."""
        key = (token, stored)
        entries = self._entries
        hit = entries.get(key)
        if hit is not None:
            try:  # noqa: SIM105 (a try costs nothing here; suppress() is a context manager per hit)
                entries.move_to_end(key)
            except KeyError:  # evicted meanwhile by another thread's loop (embedding apps)
                pass
            return hit
        # orjson's bytes keep the buffer it grew (about 4 KB for 1 KB of JSON): keep an exact copy
        data = bytes(memoryview(make(stored)))
        cost = len(stored) + len(data) + ENTRY_OVERHEAD
        if cost > self.budget:
            return data
        entries[key] = data
        self.size += cost
        if self.size > self.budget:
            self.resize(self.budget)
        return data


CACHE = RenderCache()  # the process's cache (one event loop per process)


def render_page(
    items: Iterable[bytes | Entity],
    decode: Callable[[bytes], Entity] | None,
    options: RenderOptions,
    context: bytes | None = None,
    view: ReadView | None = None,
    cache: RenderCache = CACHE,
) -> bytes:
    """The JSON array of a query page, byte for byte what `orjson.dumps` of the rendered entities
    gives (entities that render empty left out). `items` are stored documents (read by `decode`)
    or entities; `view`, a restricted access view, projects each entity before it is rendered;
    `context`, the JSON of an @context value, goes into each entity as its last member
    (application/ld+json, as common.json_response does)."""

    make = _maker(decode, options, view)
    token = cache.token(options, view)
    render = cache.render
    parts = [render(token, item, make) if isinstance(item, bytes) else make(item) for item in items]
    # an entity the view may not see is cached as HIDDEN: the query's access filter should have left
    # none, but a hidden one is never shown
    if context is not None:
        parts = [_with_context(data, context) for data in parts if data and data != HIDDEN]
    elif not all(parts) or HIDDEN in parts:
        parts = [data for data in parts if data and data != HIDDEN]
    if not parts:
        return b"[]"
    # the brackets joined with the first and last entities, not around the whole page: one copy
    # of the page's 20-odd KB instead of three
    parts[0] = b"[" + parts[0]
    parts[-1] += b"]"
    return b",".join(parts)


def render_one(
    item: bytes | Entity,
    decode: Callable[[bytes], Entity],
    options: RenderOptions,
    context: bytes | None = None,
    view: ReadView | None = None,
    cache: RenderCache = CACHE,
) -> bytes:
    """The JSON of one entity (GET /entities/{id}), byte for byte `orjson.dumps` of the rendered
    entity (with `context` as its last member, as render_page does); b"" when the projection leaves
    nothing of it; HIDDEN when `view` (a restricted access view, None: unrestricted) may not see it.
    A hit is a dict look-up: no inflate, decode, visibility test, projection, render or dumps."""
    make = _maker(decode, options, view)
    data = cache.render(cache.token(options, view), item, make) if isinstance(item, bytes) else make(item)
    return data if context is None or not data or data == HIDDEN else _with_context(data, context)


def _maker(
    decode: Callable[[bytes], Entity] | None, options: RenderOptions, view: ReadView | None
) -> Callable[[bytes | Entity], bytes]:
    def make(item: bytes | Entity) -> bytes:
        render = render_entity
        if isinstance(item, bytes):
            assert decode is not None  # a back-end that gives stored forms gives their decoder
            item = decode(item)  # a new entity, ours alone: rendered in place
            render = render_owned
        if view is not None:
            if not view.visible(item):
                return HIDDEN
            item = view.project(item)  # a copy of ours, or ours
        rendered = render(item, options)
        return orjson.dumps(rendered) if rendered else b""  # an emptied entity is left out

    return make


def _with_context(data: bytes, context: bytes) -> bytes:
    """A rendered entity (a non-empty object without an @context member) with `context` appended."""
    return b"".join((data[:-1], b',"@context":', context, b"}"))
