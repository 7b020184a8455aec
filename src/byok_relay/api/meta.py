"""Metadata routes: health, version, routing table, OpenAPI, docs and the client files."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from aiohttp import web

from byok_relay import __version__
from byok_relay.api.endpoints import endpoint
from byok_relay.api.openapi import build_openapi
from byok_relay.api.schemas import HealthResponse, VersionResponse
from byok_relay.errors import json_response
from byok_relay.services import Services

_STATIC = files("byok_relay") / "static"


@endpoint(
    "GET",
    "/health",
    summary="Liveness; ?deep=1 also checks the database",
    auth="none",
    response=HealthResponse,
    tag="meta",
    limited=False,
    errors=(503,),
)
async def health(request: web.Request, svc: Services) -> web.Response:
    """200 when healthy, 503 (same shape, ok=false) when a deep check fails."""
    body: dict[str, Any] = {"ok": True, "version": __version__, "providers": svc.registry.names}
    if request.query.get("deep") in ("1", "true", "yes"):
        checks: dict[str, str] = {}
        try:
            await svc.storage.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable ({type(exc).__name__})"
            body["ok"] = False
        checks["rate_limits"] = svc.limiter.backend
        checks["encryption_key_version"] = svc.cipher.current_version
        body["checks"] = checks
    return json_response(body, 200 if body["ok"] else 503)


@endpoint(
    "GET", "/version", summary="Version, commit and build time", auth="none",
    response=VersionResponse, tag="meta",
)  # fmt: skip
async def version(request: web.Request, svc: Services) -> VersionResponse:
    s = svc.settings
    return VersionResponse(version=__version__, commit=s.BUILD_COMMIT, build_time=s.BUILD_TIME)


@endpoint("GET", "/models", summary="Routing table and model allowlist", auth="none", tag="meta")
async def models(request: web.Request, svc: Services) -> dict[str, Any]:
    """What POST /relay can route: `provider/model` prefixes and bare-name patterns."""
    router = svc.relay.router
    allow = svc.relay.allowlist
    return {
        "providers": svc.registry.names,
        "providerPrefixes": [
            p.name for p in svc.registry if p.spec.chat_path or p.name == "google"
        ],
        "patterns": [
            {"pattern": glob, "provider": provider, "path": path}
            for glob, provider, path in router.patterns
        ],
        "allowed_models": allow.patterns if allow.active else None,
        "usage": 'POST /relay with { model: "provider/model-name", ...providerBody }',
        "examples": [
            '{ "model": "anthropic/claude-3-5-haiku", "max_tokens": 256, '
            '"messages": [{"role":"user","content":"Hello"}] }',
            '{ "model": "gpt-4o", "messages": [{"role":"user","content":"Hello"}] }',
            '{ "model": "google/gemini-2.0-flash", "contents": [{"parts":[{"text":"Hello"}]}] }',
        ],
    }


@endpoint("GET", "/openapi.json", summary="This API, described", auth="none", tag="meta")
async def openapi(request: web.Request, svc: Services) -> web.Response:
    return json_response(build_openapi())


_DOCS_HTML = """<!doctype html><html><head><meta charset="utf-8"><title>byok-relay API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:4px}pre{padding:.6rem;overflow:auto}
h2{border-bottom:1px solid #ddd}.m{display:inline-block;min-width:4.5rem;font-weight:bold}</style>
</head><body><h1>byok-relay API</h1><p>Generated from <a href="openapi.json">openapi.json</a>.</p>
<div id="ops"></div><script type="module">
const spec = await (await fetch('openapi.json')).json();
const ops = document.getElementById('ops');
for (const [path, methods] of Object.entries(spec.paths)) {
  for (const [method, op] of Object.entries(methods)) {
    const sec = document.createElement('section');
    const h = document.createElement('h2');
    h.innerHTML = '<span class="m"></span><code></code>';
    h.querySelector('.m').textContent = method.toUpperCase();
    h.querySelector('code').textContent = path;
    const p = document.createElement('p'); p.textContent = op.summary + (op.description ? ' — ' + op.description : '');
    const pre = document.createElement('pre');
    pre.textContent = JSON.stringify({requestBody: op.requestBody, responses: op.responses}, null, 2);
    sec.append(h, p, pre); ops.append(sec);
  }
}
</script></body></html>"""


@endpoint("GET", "/docs", summary="Human-readable API documentation", auth="none", tag="meta")
async def docs(request: web.Request, svc: Services) -> web.Response:
    return web.Response(text=_DOCS_HTML, content_type="text/html")


def _static(name: str, content_type: str) -> web.Response:
    data = (_STATIC / name).read_bytes()
    return web.Response(
        body=data, content_type=content_type, headers={"Cache-Control": "public, max-age=300"}
    )


@endpoint("GET", "/client.js", summary="Browser client (ES module)", auth="none", tag="clients")
async def client_js(request: web.Request, svc: Services) -> web.Response:
    return _static("client.js", "text/javascript")


@endpoint("GET", "/demo", summary="Demo page: register, store a key, chat", auth="none",
          tag="clients")  # fmt: skip
async def demo(request: web.Request, svc: Services) -> web.Response:
    return _static("demo.html", "text/html")
