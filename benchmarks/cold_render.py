"""A cold page of 20 and a cold retrieve, rendered from stored documents with nothing cached.

`python -m benchmarks.cold_render [ENTITIES [PAGES]]` stores ENTITIES (default 2,000) of the
benchmark's OffStreetParking entities in a new SQLite file through the application, reads their
stored documents back, and renders PAGES (default 500) pages of 20 at random offsets and as many
single entities through entities/render_cache.py with a cache of budget 0 (every page a miss, as a
random page at 1,000,000 entities is): only the decode, render and dumps of the stored documents,
without HTTP, routing or SQL (benchmarks/instructions.py kind `offset` counts the whole request).
CITYOS_COLD_RENDER_PROFILE=1 prints cProfile's top functions instead of the timings; under callgrind
(`valgrind --tool=callgrind --instr-atstart=no`, CITYOS_INSTRUCTIONS_CALLGRIND=1) only the
rendering loop is counted.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks.entities import make_entity
from benchmarks.instructions import API, call, callgrind
from cityos.app import create_app
from cityos.entities.render import plain_options
from cityos.entities.render_cache import RenderCache, render_one, render_page
from cityos.jsonld.registry import CORE_FILES, core_url
from cityos.jsonld.termmap import TermMap, define_terms
from cityos.settings import Settings
from cityos.store.sqlite_query import decode

PAGE = 20


async def stored_documents(count: int, folder: Path) -> list[bytes]:
    """The stored documents of `count` benchmark entities, as the SQLite store keeps them."""
    database = folder / "cold.db"
    app = create_app(Settings(database=str(database), log_level="warning"))
    async with app.router.lifespan_context(app):
        for start in range(0, count, 500):
            load = orjson.dumps([make_entity(n) for n in range(start, min(count, start + 500))])
            assert await call(app, "POST", f"{API}/entityOperations/upsert", load, None) in (201, 204)
    with sqlite3.connect(database) as connection:
        return [bytes(row[0]) for row in connection.execute("SELECT doc FROM entities ORDER BY pk")]


def core_terms() -> TermMap:
    """The TermMap of the default core context (what a request without a Link header renders with)."""
    name = CORE_FILES[core_url("v1.9")]
    context = orjson.loads((Path(__file__).parents[1] / "src/cityos/jsonld/contexts" / name).read_bytes())
    terms = TermMap()
    define_terms(terms, context["@context"], allow_scoped=True)
    return terms


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    pages = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    folder = Path(tempfile.mkdtemp(prefix="cityos-cold-render-"))
    try:
        documents = asyncio.run(stored_documents(count, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    options = plain_options(core_terms())
    cache = RenderCache(budget=0)
    chosen = random.Random(15)
    offsets = [chosen.randrange(len(documents) - PAGE) for _ in range(pages)]
    for offset in offsets[:20]:  # warm-up: the TermMap's compaction cache filled
        render_page(documents[offset : offset + PAGE], decode, options, cache=cache)
    if os.environ.get("CITYOS_COLD_RENDER_PROFILE"):
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        for offset in offsets:
            render_page(documents[offset : offset + PAGE], decode, options, cache=cache)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        return
    callgrind("on")
    started = time.process_time()
    for offset in offsets:
        render_page(documents[offset : offset + PAGE], decode, options, cache=cache)
    paged = time.process_time() - started
    started = time.process_time()
    for offset in offsets:
        render_one(documents[offset], decode, options, cache=cache)
    single = time.process_time() - started
    callgrind("off")
    size = sum(map(len, documents)) / len(documents)
    print(f"{len(documents)} documents ({size:.0f} B stored each), {pages} cold pages of {PAGE}:")
    print(f"  page {paged / pages * 1e6:.1f} us CPU, one entity {single / pages * 1e6:.1f} us CPU")


if __name__ == "__main__":
    main()
