// The citizens' page service worker: keeps the page's shell (and the last answers) so that the
// installed app opens offline; the network first for the page and the API, the cache first for assets.
"use strict";
const SHELL = "cityos-city-v1";
const ASSETS = ["/city/", "/city/static/city.js", "/city/static/city.css", "/city/static/icon-192.png", "/city/static/icon-512.png"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(ASSETS)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((names) => Promise.all(names.filter((n) => n !== SHELL).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

async function networkFirst(request) {
  const cache = await caches.open(SHELL);
  try {
    const answer = await fetch(request);
    if (answer.ok) cache.put(request, answer.clone());
    return answer;
  } catch (error) {
    const kept = await cache.match(request, { ignoreSearch: request.mode === "navigate" });
    if (!kept) throw error;
    const headers = new Headers(kept.headers);
    headers.set("X-From-Cache", "1");
    return new Response(kept.body, { status: kept.status, headers });
  }
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/city/static/")) {
    event.respondWith(caches.match(event.request).then((kept) => kept || fetch(event.request)));
  } else if (url.pathname === "/city/" || url.pathname.startsWith("/city/api/")) {
    event.respondWith(networkFirst(event.request));
  }
});
