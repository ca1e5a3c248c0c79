/* moodlens API docs page: Swagger UI (vendored swagger-ui-bundle.js) on this server's OpenAPI document. */
"use strict";
(function () {
  const root = document.getElementById("swagger-ui");
  if (!root || typeof window.SwaggerUIBundle !== "function") return;
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.url,
    domNode: root,
    deepLinking: false,
    validatorUrl: null, // never ask validator.swagger.io (offline, and the CSP allows only this server)
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
    tryItOutEnabled: false,
    queryConfigEnabled: false, // ?url=... must not load another document
  });
})();
