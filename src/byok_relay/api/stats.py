"""Usage statistics from the request log: the caller's own, and an app's for operators."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from byok_relay.api.endpoints import endpoint
from byok_relay.auth import Principal
from byok_relay.services import Services


@endpoint("GET", "/stats", summary="The caller's usage", tag="stats", errors=(401,))
async def user_stats(request: web.Request, svc: Services, principal: Principal) -> dict[str, Any]:
    """The reference relay's fields (total, last_7d, last_30d, error_count, error_rate,
    providers, top_models, last_request) plus input/output token totals. Rows are written
    about once a second, so the newest request may take a moment to appear."""
    return await svc.usage.user_stats(principal.user_id)


@endpoint(
    "GET",
    "/stats/{app_id}",
    summary="Operator aggregate for an app (needs APP_SECRET)",
    auth="app_secret_required",
    tag="stats",
    errors=(401, 503),
)
async def app_stats(request: web.Request, svc: Services) -> dict[str, Any]:
    """Send `Authorization: Bearer <APP_SECRET>`; 503 when the relay has no APP_SECRET."""
    app_id = request.match_info["app_id"]
    return {"app_id": app_id, **await svc.usage.app_stats(app_id)}
