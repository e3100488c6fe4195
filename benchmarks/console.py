"""The console's timings in Debian's chromium against a running server (docs/performance.md,
"The console"): first contentful paint and load of each page, the map's time to show its layers,
and how the map keeps drawing (frames per second) while entities change through the API.

python -m benchmarks.console http://127.0.0.1:1026 [--changes-per-second 200] [--type ParkingSpot]
python -m benchmarks.console URL --type OffStreetParking --ids 'urn:ngsi-ld:{type}:bench-{i}' --attr availableSpotNumber
    (the 100,000 entities of `python -m benchmarks.map_tiles build`: a number that recolours the map)
python -m benchmarks.console URL --type OffStreetParking --map-timeline 3
    (only the map's "ready" time, broken down from the browser's performance timeline: the page, each
    request by kind (scripts, styles, the bounds pages, the temporal API; the tiles, also those after
    data-loaded, in the 3 s that follow), long tasks)
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from typing import Any

import httpx

CHROMIUM = "/usr/bin/chromium"
PAGES = ["/", "/console/entities?type={type}", "/console/entities?type={type}&page=4000", "/console/map"]


def paint(page: Any, url: str) -> dict[str, float]:
    page.goto(url, wait_until="load")
    timing = page.evaluate(
        "new Promise(r => new PerformanceObserver((list, o) => { o.disconnect();"
        " const n = performance.getEntriesByType('navigation')[0];"
        " r({fcp: list.getEntries()[0].startTime, load: n.loadEventEnd, ttfb: n.responseStart}); })"
        ".observe({type: 'paint', buffered: true}))"
    )
    return {k: float(v) for k, v in timing.items()}


# run before the page's own scripts: when #map gets data-loaded (performance.now()), and long tasks
TIMELINE_INIT = """
window.__timeline = {longtasks: []};
new PerformanceObserver(function (l) {
  for (const e of l.getEntries()) window.__timeline.longtasks.push([e.startTime, e.duration]);
}).observe({type: 'longtask', buffered: true});
new MutationObserver(function (records, observer) {
  for (const r of records) if (r.target.id === 'map' && r.target.dataset.loaded !== undefined) {
    window.__timeline.loaded = performance.now(); observer.disconnect();
  }
}).observe(document, {attributes: true, subtree: true, attributeFilter: ['data-loaded']});
"""


def kind(url: str) -> str:
    """What a request of the map page is for."""
    if "/tiles/" in url:
        return "tiles"
    if "/temporal/" in url:
        return "temporal API (slider range)"
    if "/changes" in url:
        return "change stream"
    if "/entities?" in url:
        return "bounds pages (fit)"
    if url.endswith(".js") or ".js?" in url:
        return "scripts"
    if url.endswith(".css") or ".css?" in url:
        return "styles"
    return "other"


def map_timeline(browser: Any, base: str, runs: int) -> list[dict[str, Any]]:
    """The map page's way to `data-loaded`, from the performance timeline: navigation, each kind of
    request (first start, last end, count, summed duration), long tasks (main-thread work over 50 ms:
    script parse and run, the map's first draws) before data-loaded."""
    found = []
    for _ in range(runs):
        context = browser.new_context(viewport={"width": 1280, "height": 860})  # a cold browser cache each run
        context.add_init_script(TIMELINE_INIT)
        page = context.new_page()
        # the tiles are fetched by MapLibre's workers, outside the page's timeline: from Playwright
        finished: list[tuple[str, dict[str, float]]] = []
        keep = finished.append
        page.on("requestfinished", lambda r, keep=keep: keep((r.url, r.timing)) if "/tiles/" in r.url else None)
        page.goto(base + "/console/map")
        page.wait_for_selector("#map[data-loaded]", timeout=120_000)
        page.wait_for_timeout(3000)  # the tiles of the first view
        origin = page.evaluate("performance.timeOrigin")
        data = page.evaluate(
            "({nav: performance.getEntriesByType('navigation')[0].toJSON(),"
            " resources: performance.getEntriesByType('resource').map(e => [e.name, e.startTime, e.responseEnd]),"
            " longtasks: window.__timeline.longtasks, loaded: window.__timeline.loaded})"
        )
        nav = data["nav"]
        row: dict[str, Any] = {
            "html (response end)": round(nav["responseEnd"]),
            "DOMContentLoaded": round(nav["domContentLoadedEventEnd"]),
            "load": round(nav["loadEventEnd"]),
            "data-loaded": round(data["loaded"]),
        }
        groups: dict[str, list[tuple[float, float]]] = {}
        for name, start, end in data["resources"]:
            if start <= data["loaded"]:
                groups.setdefault(kind(name), []).append((start, end))
        groups["tiles"] = [
            (t["startTime"] - origin, t["startTime"] - origin + t["responseEnd"])
            for _, t in finished
            if t["responseEnd"] >= 0
        ]
        for name, spans in sorted(groups.items()):
            if not spans:
                continue
            row[name] = (
                f"{len(spans)} requests, {min(s for s, _ in spans):.0f}-{max(e for _, e in spans):.0f} ms"
                f" (sum {sum(e - s for s, e in spans):.0f})"
            )
        before = [d for start, d in data["longtasks"] if start <= data["loaded"]]
        row["long tasks"] = f"{len(before)}, {sum(before):.0f} ms (largest {max(before, default=0):.0f})"
        found.append(row)
        print(row, flush=True)
        context.close()
    return found


def changer(args: argparse.Namespace, stop: threading.Event, done: list[int]) -> None:
    """`rate` attribute changes a second through the batch API (one request of `rate` entities a
    second): `status` free or occupied, or another attribute a number 0-300."""
    rate, entity_type = args.changes_per_second, args.type

    def value() -> Any:
        return random.choice(["free", "occupied"]) if args.attr == "status" else random.randrange(300)

    with httpx.Client(base_url=args.base, timeout=30) as client:
        while not stop.is_set():
            started = time.monotonic()
            batch = [
                {"id": args.ids.format(type=entity_type, i=random.randrange(args.count)), "type": entity_type}
                | {args.attr: {"type": "Property", "value": value()}}
                for _ in range(rate)
            ]
            client.post("/ngsi-ld/v1/entityOperations/update", json=batch)
            done[0] += rate
            stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("--type", default="ParkingSpot")
    parser.add_argument("--changes-per-second", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ids", default="urn:ngsi-ld:{type}:p{i}", help="the changed entities' ids ({type}, {i})")
    parser.add_argument("--count", type=int, default=100_000, help="how many ids ({i} below this)")
    parser.add_argument("--attr", default="status", help="the changed attribute (status: free/occupied; else a number)")
    parser.add_argument("--map-timeline", type=int, default=0, help="only the map's ready time, broken down, N runs")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
        )
        if args.map_timeline:
            map_timeline(browser, args.base, args.map_timeline)
            browser.close()
            return
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        for path in PAGES:
            url = args.base + path.format(type=args.type)
            runs = [paint(page, url) for _ in range(args.runs)]
            fcp = statistics.median(r["fcp"] for r in runs)
            load = statistics.median(r["load"] for r in runs)
            shown = path.format(type=args.type)
            print(f"{shown:45} first paint {fcp:6.0f} ms   load {load:6.0f} ms (median of {args.runs})")
        started = time.monotonic()
        page.goto(args.base + "/console/map")
        page.wait_for_selector("#map[data-loaded]", timeout=120_000)
        loaded = page.locator("#map").get_attribute("data-loaded")
        print(f"map: {loaded} features shown after {time.monotonic() - started:.1f} s")
        stop, done = threading.Event(), [0]
        thread = threading.Thread(target=changer, args=(args, stop, done))
        thread.start()
        frames = page.evaluate(
            "new Promise(r => { let n = 0; const t0 = performance.now(); const tick = () => { n++;"
            " if (performance.now() - t0 < 10000) requestAnimationFrame(tick); else r(n / 10); };"
            " window.cityosMap.map.easeTo({zoom: window.cityosMap.map.getZoom() + 1, duration: 10000});"
            " requestAnimationFrame(tick); })"
        )
        stop.set()
        thread.join()
        print(f"map while {done[0]} changes were made ({args.changes_per_second}/s): {frames:.1f} frames a second")
        drawn = page.evaluate("[window.cityosMap.updates, window.cityosMap.reloads]")
        print(f"map: {drawn[0]} changes drawn from the change stream, tiles reloaded {drawn[1]} times")
        browser.close()


if __name__ == "__main__":
    main()
