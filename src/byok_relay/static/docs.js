// Starts Swagger UI (static/vendor/swagger-ui/) on this relay's /openapi.json for GET /docs.
// An external file, not an inline script: the page's Content-Security-Policy allows
// scripts from this origin only.
'use strict'
window.ui = window.SwaggerUIBundle({
  url: new URL('openapi.json', window.location.href).href,
  dom_id: '#swagger-ui',
  // Every operation open, with its parameters, body and answers (example and schema).
  docExpansion: 'full',
  defaultModelsExpandDepth: 3,
  defaultModelExpandDepth: 3,
  displayRequestDuration: true,
  deepLinking: true,
  // No validator badge (it would send the document's URL to validator.swagger.io); only
  // the standalone preset, which is not shipped, shows it: off in case that ever changes.
  validatorUrl: null,
  // ?url=… and ?configUrl=… must not point this page at another document.
  queryConfigEnabled: false,
  // A token typed into "Authorize" stays in this tab's memory only.
  persistAuthorization: false
})
