// One uPlot chart per numeric attribute of the entity page, from the temporal API (through the
// console's read proxy, /console/api/, with the session's rights): range and aggregation controls.
(function () {
  "use strict";
  const box = document.getElementById("charts");
  if (!box) return;
  const id = box.dataset.entity;
  const attrs = box.dataset.attrs.split(",").filter(Boolean);
  const form = document.getElementById("chart-controls");
  const DAY = 86400000;
  const spans = { P1D: DAY, P7D: 7 * DAY, P30D: 30 * DAY };

  // the time axis in the page's language (uPlot's own labels are English): finer ticks, finer
  // labels; made at the first chart (console.js, deferred, has not run when this script starts)
  let tickFormats = null;
  function tick(t, step) {
    if (!tickFormats) {
      const locale = window.cityos.locale;
      tickFormats = [
        [86400, new Intl.DateTimeFormat(locale, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })],
        [86400 * 28, new Intl.DateTimeFormat(locale, { month: "short", day: "numeric" })],
        [Infinity, new Intl.DateTimeFormat(locale, { year: "numeric", month: "short" })],
      ];
    }
    const found = tickFormats.find(function (f) { return step < f[0]; });
    return found[1].format(new Date(t * 1000));
  }

  async function series(attr, range, agg) {
    const q = new URLSearchParams({ attrs: attr });
    if (agg) { q.set("aggrMethods", agg); q.set("aggrPeriodDuration", "PT1H"); q.set("options", "aggregatedValues"); }
    else { q.set("options", "temporalValues"); }
    if (range !== "all") {
      // the range ends at the attribute's newest instance (history may be older than now)
      const last = await fetch("/console/api/ngsi-ld/v1/temporal/entities/" + encodeURIComponent(id) +
        "?" + new URLSearchParams({ attrs: attr, options: "temporalValues", lastN: "1" }), { headers: { Accept: "application/json" } });
      const doc = last.ok ? await last.json() : {};
      const v = ((doc[attr] || {}).values || [])[0];
      const end = v ? new Date(v[1]).getTime() : Date.now();
      q.set("timerel", "after");
      q.set("timeAt", new Date(end - spans[range]).toISOString());
    } else {
      q.set("lastN", "2000");
    }
    const r = await fetch("/console/api/ngsi-ld/v1/temporal/entities/" + encodeURIComponent(id) + "?" + q, { headers: { Accept: "application/json" } });
    if (!r.ok) return [[], []];
    const doc = await r.json();
    const a = doc[attr] || {};
    const rows = agg ? (a[agg] || []) : (a.values || []);
    const pts = rows.map(function (v) { return [new Date(v[1]).getTime() / 1000, Number(v[0])]; })
      .filter(function (p) { return !Number.isNaN(p[1]); }).sort(function (x, y) { return x[0] - y[0]; });
    return [pts.map(function (p) { return p[0]; }), pts.map(function (p) { return p[1]; })];
  }

  async function draw() {
    box.replaceChildren();
    const range = form ? form.range.value : "all";
    const agg = form ? form.agg.value : "";
    const width = Math.max(280, Math.min(box.clientWidth || 800, 1100));
    for (const attr of attrs) {
      const holder = document.createElement("figure");
      holder.className = "chart";
      holder.dataset.attr = attr;
      const caption = document.createElement("figcaption");
      caption.textContent = attr;
      holder.appendChild(caption);
      box.appendChild(holder);
      const data = await series(attr, range, agg);
      if (!data[0].length) {
        const p = document.createElement("p");
        p.className = "empty";
        p.textContent = box.dataset.empty;
        holder.appendChild(p);
        continue;
      }
      new uPlot({
        width: width, height: 200,
        cursor: { drag: { x: true, y: false } },  // drag to zoom, double-click to reset
        scales: { x: { time: true } },
        series: [
          { label: box.dataset.time, value: function (u, t) { return t == null ? "" : window.cityos.dates.format(new Date(t * 1000)); } },
          { label: attr, stroke: "#0b5cad", width: 1.5, value: function (u, v) { return v == null ? "" : window.cityos.numbers.format(v); } },
        ],
        axes: [
          { values: function (u, vals, axis, space, step) { return vals.map(function (t) { return tick(t, step); }); } },
          {
            values: function (u, vals) { return vals.map(function (v) { return window.cityos.numbers.format(v); }); },
            // wide enough for the longest label (uPlot's fixed 50 px cut "10,000" to "0,000")
            size: function (u, vals) { return vals ? 18 + 7 * Math.max(3, ...vals.map(function (v) { return String(v).length; })) : 50; },
          },
        ],
      }, data, holder);
      holder.dataset.points = String(data[0].length);
    }
    box.dataset.ready = "true";
  }
  if (form) form.addEventListener("change", draw);
  draw();
})();
