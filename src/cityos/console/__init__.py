"""The city console: server-rendered pages (Jinja2 templates, htmx islands, MapLibre GL map, uPlot
charts) served by `cityos serve` at `/` and under `/console/`.

The console is a client of the public APIs (client.py calls the application in-process with the
signed-in user's credentials), so it shows each user only what the access policies let them read;
no template reaches into the store. Strings come from one message catalogue per language
(messages/*.json, i18n.py); the browser assets are vendored from npm by frontend/build.mjs.
"""
