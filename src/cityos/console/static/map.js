// The console's map (MapLibre GL JS): a layer per entity type, coloured by its Smart Data Models
// type and display value, clustering, a q filter, click for details, live updates, a time slider
// replaying history from the temporal API, and a 3D view extruding Building entities.
//
// Two data sources behind one interface (config.source, the console_map_source setting):
// - "geojson": paged NGSI-LD GeoJSON queries through /console/api/ (bounded: MAX_PAGES pages of
//   config.pageSize per type), refreshed every POLL_MS for live updates;
// - "tiles": vector tiles /tiles/{z}/{x}/{y}.mvt?type=T (layers "entities" and "clusters") and the
//   change stream /cityos/v1/changes?type=T (server-sent events), applied to a live overlay.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("map-config").textContent);
  const text = JSON.parse(document.getElementById("map-messages").textContent);
  const status = document.getElementById("map-status");
  const details = document.getElementById("map-details");
  const MAX_PAGES = 20;
  const POLL_MS = 2000;
  const HISTORY_DAYS = 30;
  const api = config.api;
  const state = { features: {}, counts: {}, q: "", updates: 0, live: true };
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

  // `shapes`: the source of areas and lines (a clustered GeoJSON source keeps points only)
  function addLayers(layer, source, sourceLayer, shapes) {
    const id = "l-" + layer.type;
    const from = sourceLayer ? { source: source, "source-layer": sourceLayer } : { source: source };
    const fromShapes = sourceLayer ? from : { source: shapes };
    const point = ["all", ["==", ["geometry-type"], "Point"], ["!", ["has", "point_count"]]];
    map.addLayer(Object.assign({ id: id + "-poly", type: "fill", filter: ["==", ["geometry-type"], "Polygon"], paint: { "fill-color": colour(layer), "fill-opacity": 0.45, "fill-outline-color": "#333" } }, fromShapes));
    if (layer.type === "Building") {
      map.addLayer(Object.assign({ id: id + "-3d", type: "fill-extrusion", filter: ["==", ["geometry-type"], "Polygon"], layout: { visibility: "none" },
        paint: { "fill-extrusion-color": layer.colour, "fill-extrusion-opacity": 0.85,
          "fill-extrusion-height": ["case", ["has", "height"], ["to-number", ["get", "height"], 0], ["*", 3.5, ["to-number", ["get", "floorsAboveGround"], 2]]] } }, fromShapes));
    }
    map.addLayer(Object.assign({ id: id + "-line", type: "line", filter: ["==", ["geometry-type"], "LineString"], paint: { "line-color": colour(layer), "line-width": 4 } }, fromShapes));
    map.addLayer(Object.assign({ id: id + "-point", type: "circle", filter: point, paint: { "circle-color": colour(layer), "circle-radius": 7, "circle-stroke-color": "#fff", "circle-stroke-width": 1.5 } }, from));
    const clusters = sourceLayer ? Object.assign({}, from, { "source-layer": "clusters" }) : from;
    map.addLayer(Object.assign({ id: id + "-cluster", type: "circle", filter: sourceLayer ? ["has", "count"] : ["has", "point_count"],
      paint: { "circle-color": layer.colour, "circle-opacity": 0.6, "circle-radius": ["interpolate", ["linear"], ["to-number", ["coalesce", ["get", "point_count"], ["get", "count"]], 1], 2, 10, 1000, 30] } }, clusters));
    for (const part of ["-poly", "-line", "-point", "-3d"]) {
      if (!map.getLayer(id + part)) continue;
      clickable.push(id + part);
      map.on("mouseenter", id + part, function () { map.getCanvas().style.cursor = "pointer"; });
      map.on("mouseleave", id + part, function () { map.getCanvas().style.cursor = ""; });
    }
  }
  // one click handler: the top-most feature under the pointer (points above lines above areas)
  const clickable = [];
  map.on("click", function (e) {
    const hit = map.queryRenderedFeatures(e.point, { layers: clickable.filter(function (l) { return map.getLayoutProperty(l, "visibility") !== "none"; }) });
    if (hit.length) show(hit[0]);
  });

  function show(feature) {
    const p = feature.properties || {};
    const entityId = p.id || feature.id;
    const table = document.createElement("table");
    for (const [k, v] of Object.entries(p)) {
      if (typeof v === "object" || String(v).length > 80 || k === "location") continue;
      const tr = table.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = k;
      tr.appendChild(th);
      tr.insertCell().textContent = typeof v === "number" ? window.cityos.numbers.format(v) : String(v);
    }
    const link = document.createElement("a");
    link.href = "/console/entity?id=" + encodeURIComponent(entityId);
    link.textContent = text.open + ": " + entityId;
    details.replaceChildren(link, table);
  }

  // --- the GeoJSON source: paged queries, bounded, polled for changes --------------------------
  async function fetchType(type) {
    const all = [];
    for (let page = 0; page < MAX_PAGES; page++) {
      const q = new URLSearchParams({ type: type, format: "keyValues", limit: String(config.pageSize), offset: String(page * config.pageSize) });
      if (state.q) q.set("q", state.q);
      const r = await fetch(api + "/entities?" + q, { headers: { Accept: "application/geo+json" } });
      if (!r.ok) break;
      const fc = await r.json();
      for (const f of fc.features) { if (!f.geometry) continue; f.properties.id = f.id; all.push(f); }
      if (fc.features.length < config.pageSize) break;
    }
    return all;
  }
  const geojsonSource = {
    add: function (layer) {
      const empty = { type: "FeatureCollection", features: [] };
      map.addSource("s-" + layer.type, { type: "geojson", data: empty, promoteId: "id", cluster: true, clusterMaxZoom: 12, clusterRadius: 40 });
      map.addSource("shapes-" + layer.type, { type: "geojson", data: empty, promoteId: "id" });
      addLayers(layer, "s-" + layer.type, null, "shapes-" + layer.type);
    },
    load: async function (layer) {
      const features = await fetchType(layer.type);
      const before = JSON.stringify(state.features[layer.type] || []);
      state.features[layer.type] = features;
      state.counts[layer.type] = features.length;
      if (JSON.stringify(features) !== before) {
        const point = function (f) { return f.geometry.type === "Point"; };
        map.getSource("s-" + layer.type).setData({ type: "FeatureCollection", features: features.filter(point) });
        map.getSource("shapes-" + layer.type).setData({ type: "FeatureCollection", features: features.filter(function (f) { return !point(f); }) });
        state.updates += 1;
      }
      return features;
    },
    live: function () {
      setInterval(async function () {
        if (!state.live || document.hidden) return;
        for (const layer of visible()) await geojsonSource.load(layer);
        document.getElementById("map").dataset.updates = String(state.updates);
      }, POLL_MS);
    },
  };

  // --- the vector tile source and the change stream (issue 18's tiles/SSE endpoints) ------------
  const tileSource = {
    add: function (layer) {
      const q = new URLSearchParams({ type: layer.type });
      map.addSource("s-" + layer.type, { type: "vector", tiles: [location.origin + "/tiles/{z}/{x}/{y}.mvt?" + q], promoteId: { entities: "id" } });
      addLayers(layer, "s-" + layer.type, "entities", null);
      // what the change stream reports since the tiles were made, drawn over them
      map.addSource("live-" + layer.type, { type: "geojson", data: { type: "FeatureCollection", features: [] }, promoteId: "id" });
      map.addLayer({ id: "l-" + layer.type + "-live", type: "circle", source: "live-" + layer.type, filter: ["==", ["geometry-type"], "Point"],
        paint: { "circle-color": colour(layer), "circle-radius": 7, "circle-stroke-color": "#000", "circle-stroke-width": 1.5 } });
      clickable.push("l-" + layer.type + "-live");
      state.features[layer.type] = [];
    },
    load: async function (layer) {
      const q = new URLSearchParams({ type: layer.type });
      if (state.q) q.set("q", state.q);
      map.getSource("s-" + layer.type).setTiles([location.origin + "/tiles/{z}/{x}/{y}.mvt?" + q]);
      // one small page for the initial view's bounds only (the features come from the tiles)
      const r = await fetch(api + "/entities?" + new URLSearchParams({ type: layer.type, limit: "100" }), { headers: { Accept: "application/geo+json" } });
      const fc = r.ok ? await r.json() : { features: [] };
      state.features[layer.type] = fc.features.filter(function (f) { return f.geometry; });
      state.counts[layer.type] = layer.count;
      return state.features[layer.type];
    },
    live: function () {
      for (const layer of config.layers) {
        const events = new EventSource("/cityos/v1/changes?" + new URLSearchParams({ type: layer.type }));
        const changed = {};
        events.onmessage = function (e) {
          const change = JSON.parse(e.data);
          if (!change.location) return;
          changed[change.id] = { type: "Feature", id: change.id, geometry: change.location, properties: Object.assign({ id: change.id, type: change.type }, change.attrs || {}) };
          map.getSource("live-" + layer.type).setData({ type: "FeatureCollection", features: Object.values(changed) });
          state.updates += 1;
          document.getElementById("map").dataset.updates = String(state.updates);
        };
      }
    },
  };
  const source = config.source === "tiles" ? tileSource : geojsonSource;

  function visible() {
    const on = new Set(Array.from(document.querySelectorAll("input[name=layer]:checked")).map(function (i) { return i.value; }));
    return config.layers.filter(function (l) { return on.has(l.type); });
  }
  function setVisibility() {
    const on = new Set(visible().map(function (l) { return l.type; }));
    const three = document.getElementById("map-3d").checked;
    for (const layer of config.layers) {
      for (const part of ["-poly", "-line", "-point", "-cluster", "-3d", "-live"]) {
        const id = "l-" + layer.type + part;
        if (!map.getLayer(id)) continue;
        let show = on.has(layer.type);
        if (layer.type === "Building" && part === "-3d") show = show && three;
        if (layer.type === "Building" && part === "-poly") show = show && !three;
        map.setLayoutProperty(id, "visibility", show ? "visible" : "none");
      }
    }
  }

  function fit() {
    const all = [].concat.apply([], Object.values(state.features));
    if (!all.length) return;
    const b = new maplibregl.LngLatBounds();
    (function walk(c) { if (typeof c[0] === "number") b.extend(c); else c.forEach(walk); })(all.map(function (f) { return f.geometry.coordinates; }));
    map.fitBounds(b, { padding: 40, maxZoom: 16, duration: 0 });
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
  async function replay() {
    await state.range;
    const v = Number(slider.value);
    state.live = v >= Number(slider.max);
    for (const layer of config.layers) map.removeFeatureState({ source: "s-" + layer.type, sourceLayer: config.source === "tiles" ? "entities" : undefined });
    if (state.live) { label.textContent = text.live; document.getElementById("map").dataset.replayed = ""; return; }
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
        map.setFeatureState({ source: "s-" + layer.type, sourceLayer: config.source === "tiles" ? "entities" : undefined, id: e.id }, { hist: Number(val[0]) });
        state.hist = state.hist || {};
        state.hist[e.id] = Number(val[0]);
        applied += 1;
      }
    }
    document.getElementById("map").dataset.replayed = at.toISOString() + " " + applied;
  }

  map.on("load", async function () {
    for (const layer of config.layers) source.add(layer);
    for (const layer of config.layers) await source.load(layer);
    setVisibility();
    fit();
    const shown = Object.values(state.counts).reduce(function (a, b) { return a + b; }, 0);
    status.textContent = window.cityos.numbers.format(shown) + " " + text.loaded;
    source.live();
    state.range = historyRange();
    await state.range;
    document.getElementById("map").dataset.loaded = String(shown);
  });
  document.querySelectorAll("input[name=layer]").forEach(function (i) { i.addEventListener("change", setVisibility); });
  document.getElementById("map-3d").addEventListener("change", function (e) {
    setVisibility();
    map.easeTo({ pitch: e.target.checked ? 60 : 0, bearing: e.target.checked ? -20 : 0, duration: 0 });
  });
  document.getElementById("map-q").addEventListener("change", async function (e) {
    state.q = e.target.value.trim();
    for (const layer of visible()) await source.load(layer);
  });
  slider.addEventListener("change", replay);
})();
