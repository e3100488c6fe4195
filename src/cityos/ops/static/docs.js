// The /docs page: Swagger UI over this server's own /openapi.json (the assets are served by
// CityOS itself, src/cityos/ops/static/, copied from npm by frontend/copy-assets.mjs).
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "none", // 150 operations: the tags first, opened on demand
    tryItOutEnabled: false,
  });
});
