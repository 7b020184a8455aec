"""Metadata routes: health, version, routing table, OpenAPI, docs and the client files."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from byok_relay import __version__
from byok_relay.api import assets
from byok_relay.api.endpoints import bearer_matches, endpoint
from byok_relay.api.openapi import UNDOCUMENTED_TAG, build_openapi
from byok_relay.api.schemas import HealthResponse, VersionResponse
from byok_relay.errors import ApiError, json_response
from byok_relay.services import Services


@endpoint(
    "GET",
    "/health",
    summary="Liveness; ?deep=1 also checks the database and the key custody (HSM)",
    auth="none",
    response=HealthResponse,
    tag="meta",
    limited=False,
    errors=(503,),
)
async def health(request: web.Request, svc: Services) -> web.Response:
    """200 when healthy, 503 (same shape, ok=false) when a deep check fails. The
    encryption key version (a fingerprint of the secret) is shown only to a caller with
    `Authorization: Bearer <METRICS_TOKEN or APP_SECRET>`: anyone else could use it to
    confirm a guessed ENCRYPTION_SECRET offline."""
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
        checks["key_custody"] = f"{svc.custody.target} " + await svc.custody.check()
        if not checks["key_custody"].endswith(" ok"):
            body["ok"] = False
        if _operator(request, svc):
            checks["encryption_key_version"] = svc.custody.local.current_version
        body["checks"] = checks
    return json_response(body, 200 if body["ok"] else 503)


def _operator(request: web.Request, svc: Services) -> bool:
    secrets = (svc.settings.METRICS_TOKEN, svc.settings.APP_SECRET)
    return any(s is not None and bearer_matches(request, s.get_secret_value()) for s in secrets)


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
        "providerPrefixes": [p.name for p in svc.registry if p.spec.chat_path],
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


@endpoint("GET", "/", summary="Landing page: name, version, links to the demo, docs, skill "
          "and health", auth="none", tag="meta")  # fmt: skip
async def landing(request: web.Request, svc: Services) -> web.Response:
    """A small HTML page with no script and nothing from another host. Any other unknown
    path still answers the JSON 404."""
    return assets.landing_response()


@endpoint("GET", "/docs", summary="Human-readable API documentation", auth="none", tag="meta")
async def docs(request: web.Request, svc: Services) -> web.Response:
    """This document rendered by Swagger UI, which ships inside the package: the page
    loads nothing from another host (its Content-Security-Policy says so too)."""
    return assets.docs_response()


@endpoint("GET", "/docs/assets/{name}", summary="The docs viewer's files", auth="none",
          tag=UNDOCUMENTED_TAG)  # fmt: skip
async def docs_asset(request: web.Request, svc: Services) -> web.Response:
    return await assets.asset_response(request, request.match_info["name"])


def _static(name: str, content_type: str) -> web.Response:
    data = assets.static_bytes(name)
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


@endpoint("GET", "/metrics", summary="Prometheus metrics", auth="none", tag="meta",
          limited=False, errors=(401,))  # fmt: skip
async def metrics(request: web.Request, svc: Services) -> web.Response:
    """When METRICS_TOKEN is set, send `Authorization: Bearer <METRICS_TOKEN>`."""
    token = svc.settings.METRICS_TOKEN
    if token is not None:
        if not bearer_matches(request, token.get_secret_value()):
            raise ApiError(401, "GET /metrics needs Authorization: Bearer <METRICS_TOKEN>.")
    return web.Response(
        body=svc.metrics.render(), headers={"Content-Type": svc.metrics.content_type}
    )
