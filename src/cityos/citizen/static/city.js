// The citizens' page: asks /city/api/ for what is near, reports to Open311 through /city/api/reports,
// and keeps the ids of the caller's reports in this browser (localStorage) to follow them.
"use strict";
(function () {
  const messages = JSON.parse(document.getElementById("messages").textContent);
  const locale = document.body.dataset.locale;
  const numbers = new Intl.NumberFormat(locale);
  const KEPT = "cityos.city.reports";
  const PLACE = "cityos.city.where";
  const $ = (id) => document.getElementById(id);

  function t(key, values) {
    let text = messages[key] || key;
    for (const [name, value] of Object.entries(values || {})) text = text.replace("{" + name + "}", value);
    return text;
  }

  function item(title, lines) {
    const li = document.createElement("li");
    const strong = document.createElement("strong");
    strong.textContent = title;
    li.appendChild(strong);
    for (const line of lines) {
      if (!line) continue;
      const p = document.createElement("p");
      if (typeof line === "string") p.textContent = line;
      else p.appendChild(line);
      li.appendChild(p);
    }
    return li;
  }

  function fill(list, rows, none) {
    list.replaceChildren(...(rows.length ? rows : [item(t(none), [])]));
  }

  function away(entry) {
    return t("common.away", { distance: numbers.format(entry.distance) });
  }

  function badge(label, index, convention) {
    const span = document.createElement("span");
    span.className = "aqi " + convention + "-" + (index.category || "none");
    const category = index.category ? t("aqi." + convention + "." + index.category) : "–";
    const primary = index.primary && index.primary.length ? " · " + t("air.primary") + " " + index.primary.join(", ") : "";
    span.textContent = label + " " + (index.value === null ? "–" : numbers.format(index.value)) + " " + category + primary;
    return span;
  }

  function hours(spec) {
    if (typeof spec === "string") return spec;
    if (!Array.isArray(spec) || !spec.length) return "";
    return t("places.hours") + ": " + spec.map((d) => t("day." + d.dayOfWeek) + " " + String(d.opens).slice(0, 5) + "–" + String(d.closes).slice(0, 5)).join(", ");
  }

  const render = {
    air: (body) => fill($("air"), body.stations.map((s) => item(s.name || s.id, [away(s), badge(t("air.us"), s.usAqi, "us"), badge(t("air.cn"), s.cnAqi, "cn")])), "air.none"),
    parking: (body) => fill($("parking"), body.parking.map((p) => item(p.name || p.id, [away(p), p.free === null ? "" : t("parking.free", { free: numbers.format(p.free), total: p.total === null ? "?" : numbers.format(p.total) })])), "parking.none"),
    stops: (body) => fill($("stops"), body.stops.map((s) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = t("transit.show", { stop: s.name || s.id });
      const li = item(s.name || s.id, [away(s), button]);
      const list = document.createElement("ul");
      list.className = "list departures";
      li.appendChild(list);
      button.addEventListener("click", () => departures(s.id, list).catch(() => {}));
      return li;
    }), "transit.none"),
    places: (body) => fill($("places"), body.places.map((p) => item(p.name || p.id, [away(p), p.description, hours(p.openingHours)])), "places.none"),
  };

  async function departures(stop, list) {
    const answer = await fetch("/city/api/departures?" + new URLSearchParams({ stop }).toString());
    if (!answer.ok) return;
    const body = await answer.json();
    const clock = new Intl.DateTimeFormat(locale, { hour: "2-digit", minute: "2-digit", timeZone: body.zone });  // the agency's time
    const rows = body.departures.map((d) => {
      const minutes = Math.round(Math.abs(d.delay || 0) / 60);
      const state = d.delay === null ? t("transit.timetable") : minutes === 0 ? t("transit.ontime") : t(d.delay > 0 ? "transit.late" : "transit.early", { minutes: numbers.format(minutes) });
      return item(clock.format(new Date(d.expected)) + " " + (d.route || "") + " " + (d.headsign || ""), [state]);
    });
    fill(list, rows, "transit.empty");
    list.dataset.loaded = "1";
  }

  async function ask(where) {
    $("status").textContent = t("where.loading");
    const query = new URLSearchParams({ lat: where.lat, lon: where.lon }).toString();
    let offline = false;
    await Promise.all(Object.keys(render).map(async (name) => {
      const answer = await fetch("/city/api/" + name + "?" + query);
      if (answer.headers.get("x-from-cache")) offline = true;
      if (answer.ok) render[name](await answer.json());
    }));
    $("status").textContent = offline ? t("where.offline") : t("where.done");
  }

  function current() {
    const lat = parseFloat($("lat").value), lon = parseFloat($("lon").value);
    return Number.isFinite(lat) && Number.isFinite(lon) ? { lat, lon } : null;
  }

  $("where").addEventListener("submit", (event) => {
    event.preventDefault();
    const where = current();
    if (!where) { $("status").textContent = t("where.invalid"); return; }
    localStorage.setItem(PLACE, JSON.stringify(where));
    ask(where).catch(() => { $("status").textContent = t("where.offline"); });
  });

  $("locate").addEventListener("click", () => {
    if (!navigator.geolocation) { $("status").textContent = t("where.denied"); return; }
    navigator.geolocation.getCurrentPosition((position) => {
      $("lat").value = position.coords.latitude.toFixed(5);
      $("lon").value = position.coords.longitude.toFixed(5);
      $("where").requestSubmit();
    }, () => { $("status").textContent = t("where.denied"); });
  });

  async function services() {
    const answer = await fetch("/open311/v2/services.json");
    if (!answer.ok) return;
    const options = (await answer.json()).map((s) => {
      const option = document.createElement("option");
      option.value = s.service_code;
      option.textContent = s.service_name;
      return option;
    });
    $("service").replaceChildren(...options);
    await questions();
  }

  // a service's own questions (its Open311 definition's attributes), asked as the spec names them
  async function questions() {
    const box = $("questions");
    box.replaceChildren();
    const code = $("service").value;
    if (!code) return;
    const answer = await fetch("/open311/v2/services/" + encodeURIComponent(code) + ".json");
    if (!answer.ok) return;
    const attributes = ((await answer.json()).attributes || []).filter((a) => a.variable !== false);
    for (const a of attributes.sort((x, y) => (x.order || 0) - (y.order || 0))) {
      const label = document.createElement("label");
      label.textContent = a.description + " ";
      let input;
      if (a.datatype === "singlevaluelist" || a.datatype === "multivaluelist") {
        input = document.createElement("select");
        if (a.datatype === "multivaluelist") input.multiple = true;
        for (const v of a.values || []) {
          const option = document.createElement("option");
          option.value = v.key;
          option.textContent = v.name;
          input.appendChild(option);
        }
      } else {
        input = document.createElement(a.datatype === "text" ? "textarea" : "input");
        if (a.datatype === "number") input.inputMode = "decimal";
      }
      input.name = "attribute[" + a.code + "]" + (a.datatype === "multivaluelist" ? "[]" : "");
      input.required = Boolean(a.required);
      label.appendChild(input);
      box.appendChild(label);
    }
  }

  $("service").addEventListener("change", () => questions().catch(() => {}));

  function kept() {
    try { return JSON.parse(localStorage.getItem(KEPT) || "[]"); } catch (e) { return []; }
  }

  async function mine() {
    const reports = kept();
    const rows = await Promise.all(reports.map(async (report) => {
      const path = report.id ? "/open311/v2/requests/" + encodeURIComponent(report.id) + ".json" : "/open311/v2/tokens/" + encodeURIComponent(report.token) + ".json";
      try {
        const answer = await fetch(path);
        const found = answer.ok ? (await answer.json())[0] || {} : {};
        if (found.service_request_id && !report.id) report.id = found.service_request_id;
        const status = found.status || t("mine.pending");
        return item((found.service_name || report.service || "") + " #" + (report.id || report.token), [status, found.updated_datetime || found.requested_datetime || ""]);
      } catch (e) {
        return item("#" + (report.id || report.token), [t("where.offline")]);
      }
    }));
    localStorage.setItem(KEPT, JSON.stringify(reports));
    fill($("mine"), rows, "mine.none");
  }

  $("report").addEventListener("submit", async (event) => {
    event.preventDefault();
    const where = current();
    if (!where) { $("report-status").textContent = t("report.where"); return; }
    const form = new FormData($("report"));
    if (!$("photo").files.length) form.delete("media");
    form.set("lat", where.lat);
    form.set("long", where.lon);
    const answer = await fetch("/city/api/reports", { method: "POST", body: form });
    const body = await answer.json().catch(() => null);
    if (!answer.ok || !Array.isArray(body)) {
      const reason = Array.isArray(body) && body[0] ? body[0].description : String(answer.status);
      $("report-status").textContent = t("report.failed", { reason });
      return;
    }
    const made = body[0];
    const reports = kept();
    reports.unshift({ id: made.service_request_id || null, token: made.token || null, service: $("service").selectedOptions[0].textContent });
    localStorage.setItem(KEPT, JSON.stringify(reports.slice(0, 50)));
    $("report-status").textContent = t("report.sent", { id: made.service_request_id || made.token });
    $("report").reset();
    await questions();
    await mine();
  });

  const params = new URLSearchParams(location.search);
  const saved = (() => { try { return JSON.parse(localStorage.getItem(PLACE) || "null"); } catch (e) { return null; } })();
  const start = params.get("lat") && params.get("lon") ? { lat: params.get("lat"), lon: params.get("lon") } : saved;
  services().catch(() => {});
  mine().catch(() => {});
  if (start) {
    $("lat").value = start.lat;
    $("lon").value = start.lon;
    $("where").requestSubmit();
  }
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("/city/sw.js", { scope: "/city/" }).catch(() => {});
})();
