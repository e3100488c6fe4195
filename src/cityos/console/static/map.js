// The console's map (MapLibre GL JS): a layer per entity type, coloured by its Smart Data Models
// type and display value, clustering, a q filter, click for details, live updates, a time slider
// replaying history from the temporal API, and a 3D view extruding Building entities.
//
// Where the features come from (docs/console.md, "How the map gets its data"):
// - vector tiles /tiles/{z}/{x}/{y}.mvt?type=T (layers "entities" and, where a tile holds too many,
//   "clusters" counted by the server), so the browser never holds the whole city;
// - one change stream /cityos/v1/changes?type=T1,T2,... (server-sent events: one connection, the
//   browser allows few per host), drawn on a live overlay above the tiles; the tile's own copy of a
//   changed entity is hidden (feature state "stale"). The overlay is bounded: past MAX_LIVE entries
//   the visible tiles are reloaded (the server invalidated them) and the overlay's older entries go.
// With --auth required both are read with the session cookie (docs/security.md).
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("map-config").textContent);
  const text = JSON.parse(document.getElementById("map-messages").textContent);
  const status = document.getElementById("map-status");
  const details = document.getElementById("map-details");
  const mapBox = document.getElementById("map");
  const HISTORY_DAYS = 30;
  const BOUNDS_PAGE = 100; // entities per type asked for the first view's bounds
  const FLUSH_MS = 250; // the overlay is redrawn at most this often
  const MAX_LIVE = 1000; // overlay entries before the tiles are reloaded
  const RELOAD_MS = 10000; // at most one tile reload this often
  const TILE_AGE_MS = 6000; // a reloaded tile may come from the browser's cache (max-age 5 s)
  const api = config.api;
  const layerOf = {};
  for (const layer of config.layers) layerOf[layer.type] = layer;
  // live[type][id]: {feature (null: deleted), at}; hist: the replayed values by entity id
  const state = { live: {}, counts: {}, q: "", updates: 0, reloads: 0, replaying: false, hist: {} };
  window.cityosMap = state;

  const style = { version: 8, sources: {}, layers: [{ id: "background", type: "background", paint: { "background-color": "#eef1f4" } }] };
  if (config.basemap) {
    style.sources.basemap = { type: "raster", tiles: [config.basemap], tileSize: 256 };
    style.layers.push({ id: "basemap", type: "raster", source: "basemap" });
  }
  const map = new maplibregl.Map({ container: "map", style: style, center: [0, 20], zoom: 1, attributionControl: false });
  state.map = map;
  map.addControl(new maplibregl.NavigationControl({ visualizePitch: true }));

  // the colour of a feature: by its display value (history replay first), else its type's colour
  function colour(layer) {
    const v = ["coalesce", ["feature-state", "hist"], ["get", layer.value]];
    const num = ["to-number", v, -1];
    if (layer.type === "OffStreetParking") return ["case", ["<", num, 0], layer.colour, ["interpolate", ["linear"], num, 0, "#c62828", 20, "#ef6c00", 50, "#2e7d32"]];
    if (layer.type === "AirQualityObserved") return ["case", ["<", num, 0], layer.colour, ["interpolate", ["linear"], num, 0, "#2e7d32", 35, "#ef6c00", 75, "#c62828"]];
    if (layer.type === "WasteContainer") return ["case", ["<", num, 0], layer.colour, ["interpolate", ["linear"], num, 0, "#2e7d32", 0.5, "#ef6c00", 0.9, "#c62828"]];
    return layer.colour;
  }
  // a tile's feature that the change stream replaced (or deleted) is not drawn
  function unlessStale(opacity) { return ["case", ["boolean", ["feature-state", "stale"], false], 0, opacity]; }

  const clickable = [];
  function hover(id) {
    clickable.push(id);
    map.on("mouseenter", id, function () { map.getCanvas().style.cursor = "pointer"; });
    map.on("mouseleave", id, function () { map.getCanvas().style.cursor = ""; });
  }
  // the drawing of one type: `from` is the tiles (sourceLayer "entities") or the live overlay
  function addShapes(layer, id, from, stale) {
    const opacity = stale ? unlessStale : function (o) { return o; };
    map.addLayer(Object.assign({ id: id + "-poly", type: "fill", filter: ["==", ["geometry-type"], "Polygon"], paint: { "fill-color": colour(layer), "fill-opacity": opacity(0.45), "fill-outline-color": "#333" } }, from));
    map.addLayer(Object.assign({ id: id + "-line", type: "line", filter: ["==", ["geometry-type"], "LineString"], paint: { "line-color": colour(layer), "line-width": 4, "line-opacity": opacity(1) } }, from));
    map.addLayer(Object.assign({ id: id + "-point", type: "circle", filter: ["==", ["geometry-type"], "Point"],
      paint: { "circle-color": colour(layer), "circle-radius": 7, "circle-stroke-color": stale ? "#fff" : "#000", "circle-stroke-width": 1.5, "circle-opacity": opacity(1), "circle-stroke-opacity": opacity(1) } }, from));
    for (const part of ["-poly", "-line", "-point"]) hover(id + part);
  }
  function addType(layer) {
    const tiles = "s-" + layer.type;
    map.addSource(tiles, { type: "vector", tiles: [tileUrl(layer)], promoteId: { entities: "id" } });
    const from = { source: tiles, "source-layer": "entities" };
    addShapes(layer, "l-" + layer.type, from, true);
    if (layer.type === "Building") {
      map.addLayer(Object.assign({ id: "l-Building-3d", type: "fill-extrusion", filter: ["==", ["geometry-type"], "Polygon"], layout: { visibility: "none" },
        paint: { "fill-extrusion-color": layer.colour, "fill-extrusion-opacity": 0.85,
          "fill-extrusion-height": ["case", ["has", "height"], ["to-number", ["get", "height"], 0], ["*", 3.5, ["to-number", ["get", "floorsAboveGround"], 2]]] } }, from));
      hover("l-Building-3d");
    }
    map.addLayer({ id: "l-" + layer.type + "-cluster", type: "circle", source: tiles, "source-layer": "clusters",
      paint: { "circle-color": layer.colour, "circle-opacity": 0.6, "circle-radius": ["interpolate", ["linear"], ["to-number", ["get", "count"], 1], 2, 10, 1000, 30] } });
    map.addSource("live-" + layer.type, { type: "geojson", data: { type: "FeatureCollection", features: [] }, promoteId: "id" });
    addShapes(layer, "l-" + layer.type + "-live", { source: "live-" + layer.type }, false);
    state.live[layer.type] = {};
    state.counts[layer.type] = layer.count;
  }
  function tileUrl(layer) {
    const q = new URLSearchParams({ type: layer.type });
    if (state.q) q.set("q", state.q);
    return location.origin + "/tiles/{z}/{x}/{y}.mvt?" + q;
  }

  // one click handler: the top-most feature under the pointer; the details are the entity's own
  map.on("click", function (e) {
    const hit = map.queryRenderedFeatures(e.point, { layers: clickable.filter(function (l) { return map.getLayoutProperty(l, "visibility") !== "none"; }) });
    if (hit.length) show(hit[0]);
  });
  async function show(feature) {
    const entityId = (feature.properties || {}).id || feature.id;
    const link = document.createElement("a");
    link.href = "/console/entity?id=" + encodeURIComponent(entityId);
    link.textContent = text.open + ": " + entityId;
    details.replaceChildren(link);
    const r = await fetch(api + "/entities/" + encodeURIComponent(entityId) + "?format=keyValues", { headers: { Accept: "application/json" } });
    const p = r.ok ? await r.json() : feature.properties || {};
    const table = document.createElement("table");
    for (const [k, v] of Object.entries(p)) {
      if (v === null || typeof v === "object" || String(v).length > 80 || k === "location") continue;
      const tr = table.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = k;
      tr.appendChild(th);
      tr.insertCell().textContent = window.cityos.shown(v);
    }
    details.replaceChildren(link, table);
  }

  // what the map draws of a type: the loaded tiles' entities, overridden by the change stream's
  state.shown = function (type) {
    const found = {};
    for (const f of map.querySourceFeatures("s-" + type, { sourceLayer: "entities" })) found[f.properties.id] = f.properties;
    for (const [id, entry] of Object.entries(state.live[type] || {})) {
      if (entry.feature) found[id] = entry.feature.properties; else delete found[id];
    }
    return found;
  };

  // --- the change stream ----------------------------------------------------------------------
  const dirty = new Set();
  let flushing = 0;
  let lastReload = 0;
  function flush() {
    flushing = 0;
    for (const type of dirty) {
      const features = [];
      for (const entry of Object.values(state.live[type])) if (entry.feature) features.push(entry.feature);
      map.getSource("live-" + type).setData({ type: "FeatureCollection", features: features });
    }
    dirty.clear();
    mapBox.dataset.updates = String(state.updates);
    const size = Object.values(state.live).reduce(function (n, l) { return n + Object.keys(l).length; }, 0);
    if (size > MAX_LIVE && performance.now() - lastReload > RELOAD_MS) reloadTiles(false);
  }
  function applyChange(change) {
    const layer = layerOf[change.type];
    if (!layer) return;
    const feature = change.deleted || !change.location ? null
      : { type: "Feature", id: change.id, geometry: change.location, properties: Object.assign({ id: change.id, type: change.type }, change.attrs || {}) };
    state.live[layer.type][change.id] = { feature: feature, at: performance.now() };
    map.setFeatureState({ source: "s-" + layer.type, sourceLayer: "entities", id: change.id }, { stale: true });
    state.updates += 1;
    dirty.add(layer.type);
    if (!flushing) flushing = setTimeout(flush, FLUSH_MS);
  }
  // the tiles again (in place: MapLibre keeps drawing the old ones until the new ones come); the
  // overlay keeps what changed since the oldest tile the browser may reuse, or nothing (`all`)
  function reloadTiles(all) {
    lastReload = performance.now();
    const keepFrom = all ? Infinity : lastReload - TILE_AGE_MS;
    for (const layer of config.layers) {
      const live = state.live[layer.type];
      for (const [id, entry] of Object.entries(live)) {
        if (entry.at >= keepFrom) continue;
        delete live[id];
        map.removeFeatureState({ source: "s-" + layer.type, sourceLayer: "entities", id: id }, "stale");
      }
      map.getSource("s-" + layer.type).setTiles([tileUrl(layer)]);
      dirty.add(layer.type);
    }
    state.reloads += 1;
    if (!flushing) flushing = setTimeout(flush, FLUSH_MS);
  }
  let stream = null;
  function connect() {
    if (stream) stream.close();
    if (!config.layers.length) return;
    const q = new URLSearchParams({ type: config.layers.map(function (l) { return l.type; }).join(",") });
    if (state.q) q.set("q", state.q);
    let opened = 0;
    stream = new EventSource("/cityos/v1/changes?" + q);
    stream.addEventListener("open", function () {
      opened += 1;
      if (opened > 1) reloadTiles(true); // reconnected: changes may have been missed
      mapBox.dataset.streaming = "1";
    });
    stream.addEventListener("change", function (e) { applyChange(JSON.parse(e.data)); });
    stream.addEventListener("dropped", function () { reloadTiles(true); connect(); }); // fell behind
  }

  function visible() {
    const on = new Set(Array.from(document.querySelectorAll("input[name=layer]:checked")).map(function (i) { return i.value; }));
    return config.layers.filter(function (l) { return on.has(l.type); });
  }
  function setVisibility() {
    const on = new Set(visible().map(function (l) { return l.type; }));
    const three = document.getElementById("map-3d").checked;
    for (const layer of config.layers) {
      for (const part of ["-poly", "-line", "-point", "-cluster", "-3d", "-live-poly", "-live-line", "-live-point"]) {
        const id = "l-" + layer.type + part;
        if (!map.getLayer(id)) continue;
        let shown = on.has(layer.type);
        if (layer.type === "Building" && part === "-3d") shown = shown && three;
        if (layer.type === "Building" && part === "-poly") shown = shown && !three;
        map.setLayoutProperty(id, "visibility", shown ? "visible" : "none");
      }
    }
  }

  // the first view: the bounds of a small page of each type's locations (the features come from the tiles)
  async function fit() {
    const b = new maplibregl.LngLatBounds();
    await Promise.all(config.layers.map(async function (layer) {
      const q = new URLSearchParams({ type: layer.type, limit: String(BOUNDS_PAGE), attrs: "location" });
      const r = await fetch(api + "/entities?" + q, { headers: { Accept: "application/geo+json" } });
      if (!r.ok) return;
      for (const f of (await r.json()).features) {
        if (f.geometry) (function walk(c) { if (typeof c[0] === "number") b.extend(c); else c.forEach(walk); })(f.geometry.coordinates);
      }
    }));
    if (!b.isEmpty()) map.fitBounds(b, { padding: 40, maxZoom: 16, duration: 0 });
  }

  // --- the time slider: each layer's display value at a past instant (temporal API, lastN=1) ----
  const slider = document.getElementById("map-time");
  const label = document.getElementById("map-time-label");
  const span = { start: 0, end: 0 };
  async function historyRange() {
    let end = 0;
    for (const layer of config.layers.filter(function (l) { return l.value; })) {
      const q = new URLSearchParams({ type: layer.type, attrs: layer.value, options: "temporalValues", lastN: "1" });
      const r = await fetch(api + "/temporal/entities?" + q, { headers: { Accept: "application/json" } });
      if (!r.ok) continue;
      for (const e of await r.json()) {
        const v = ((e[layer.value] || {}).values || [])[0];
        if (v) end = Math.max(end, new Date(v[1]).getTime());
      }
    }
    span.end = end || Date.now();
    span.start = span.end - HISTORY_DAYS * 86400000;
  }
  function targets(type, id) {
    return [{ source: "s-" + type, sourceLayer: "entities", id: id }, { source: "live-" + type, id: id }];
  }
  async function replay() {
    await state.range;
    const v = Number(slider.value);
    for (const [id, type] of Object.entries(state.histType || {})) for (const t of targets(type, id)) map.removeFeatureState(t, "hist");
    state.hist = {};
    state.histType = {};
    state.replaying = v < Number(slider.max);
    if (!state.replaying) { label.textContent = text.live; mapBox.dataset.replayed = ""; return; }
    const at = new Date(span.start + (span.end - span.start) * v / Number(slider.max));
    label.textContent = text.history + " " + window.cityos.dates.format(at);
    let applied = 0;
    for (const layer of visible().filter(function (l) { return l.value; })) {
      const q = new URLSearchParams({ type: layer.type, attrs: layer.value, options: "temporalValues", timerel: "before", timeAt: at.toISOString(), lastN: "1" });
      const r = await fetch(api + "/temporal/entities?" + q, { headers: { Accept: "application/json" } });
      if (!r.ok) continue;
      for (const e of await r.json()) {
        const val = ((e[layer.value] || {}).values || [])[0];
        if (!val) continue;
        for (const t of targets(layer.type, e.id)) map.setFeatureState(t, { hist: Number(val[0]) });
        state.hist[e.id] = Number(val[0]);
        state.histType[e.id] = layer.type;
        applied += 1;
      }
    }
    mapBox.dataset.replayed = at.toISOString() + " " + applied;
  }

  map.on("load", async function () {
    for (const layer of config.layers) addType(layer);
    setVisibility();
    connect();
    await fit();
    const shown = Object.values(state.counts).reduce(function (a, b) { return a + b; }, 0);
    status.textContent = window.cityos.numbers.format(shown) + " " + text.loaded;
    state.range = historyRange();
    await state.range;
    mapBox.dataset.loaded = String(shown);
  });
  document.querySelectorAll("input[name=layer]").forEach(function (i) { i.addEventListener("change", setVisibility); });
  document.getElementById("map-3d").addEventListener("change", function (e) {
    setVisibility();
    map.easeTo({ pitch: e.target.checked ? 60 : 0, bearing: e.target.checked ? -20 : 0, duration: 0 });
  });
  document.getElementById("map-q").addEventListener("change", function (e) {
    state.q = e.target.value.trim();
    reloadTiles(true);
    connect();
  });
  slider.addEventListener("change", replay);
})();
