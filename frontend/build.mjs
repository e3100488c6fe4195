// Copies the console's browser assets from node_modules (pinned by package-lock.json) into the
// Python package, so `pip install` and `make run` need no Node: `npm ci && npm run build`,
// then commit src/cityos/console/static/vendor/ (and tests/data/axe.min.js, for the browser tests).
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "..", "src", "cityos", "console", "static", "vendor");
const files = {
  "maplibre-gl/dist/maplibre-gl.js": "maplibre-gl.js",
  "maplibre-gl/dist/maplibre-gl.css": "maplibre-gl.css",
  "maplibre-gl/LICENSE.txt": "LICENSE-maplibre-gl.txt",
  "uplot/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
  "uplot/dist/uPlot.min.css": "uPlot.min.css",
  "uplot/LICENSE": "LICENSE-uplot.txt",
  "htmx.org/dist/htmx.min.js": "htmx.min.js",
  "htmx.org/LICENSE": "LICENSE-htmx.txt",
};
mkdirSync(vendor, { recursive: true });
const versions = {};
for (const [from, to] of Object.entries(files)) {
  copyFileSync(join(here, "node_modules", from), join(vendor, to));
  const pkg = from.split("/")[0];
  versions[pkg] = JSON.parse(readFileSync(join(here, "node_modules", pkg, "package.json"), "utf8")).version;
}
writeFileSync(join(vendor, "versions.json"), JSON.stringify(versions, null, 2) + "\n");
// axe-core is for the tests only (injected by tests/test_console_browser.py), not shipped
const tests = join(here, "..", "tests", "data");
mkdirSync(tests, { recursive: true });
copyFileSync(join(here, "node_modules", "axe-core", "axe.min.js"), join(tests, "axe.min.js"));
console.log("vendored", versions);
