// Copies the pinned browser assets (package-lock.json) into the Python package, which ships them:
// `npm ci && npm run copy`, then commit src/cityos/ops/static/ (the server never reaches a CDN).
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, "..", "src", "cityos", "ops", "static", "swagger-ui");
const source = join(here, "node_modules", "swagger-ui-dist");
mkdirSync(target, { recursive: true });
for (const name of ["swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE", "package.json"]) {
  copyFileSync(join(source, name), join(target, name));
}
console.log(`copied swagger-ui-dist into ${target}`);
