"""Owner budgets (SPEC §9): cap what every credential of the caller may spend per window."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from byok_relay.api.endpoints import endpoint
from byok_relay.api.schemas import BudgetRequest, BudgetResponse, DeleteResponse
from byok_relay.api.tokens import check_providers
from byok_relay.auth import Principal
from byok_relay.budgets import Budget, Caps
from byok_relay.errors import ApiError
from byok_relay.services import Services


@endpoint(
    "PUT",
    "/budget",
    summary="Set (replace) the caller's budget: requests and tokens per hour, day or month",
    body=BudgetRequest,
    response=BudgetResponse,
    tag="budget",
    errors=(400, 401, 403),
)
async def put_budget(
    request: web.Request, svc: Services, principal: Principal, body: BudgetRequest
) -> dict[str, Any]:
    """Holds for every credential of the caller (relay token, scoped tokens). Once a
    count reaches its cap, relayed requests get 429 `code: "budget_exceeded"` with
    `Retry-After` = seconds to the window's end (UTC calendar periods)."""
    check_providers(svc, list(body.providers or ()), "providers")
    if body.requests is None and body.tokens is None and not body.providers:
        raise ApiError(
            400, "Set at least one cap: requests, tokens or providers (DELETE /budget removes it)."
        )
    budget = Budget(
        window=body.window,
        total=Caps(body.requests, body.tokens),
        providers={n: Caps(c.requests, c.tokens) for n, c in (body.providers or {}).items()},
    )
    await svc.spend.set_budget(principal.user_id, budget)
    return {"budget": budget.to_dict()}


@endpoint(
    "GET",
    "/budget",
    summary="The caller's budget and the current window's usage",
    tag="budget",
    errors=(401, 403),
)
async def get_budget(request: web.Request, svc: Services, principal: Principal) -> dict[str, Any]:
    """`budget` is null when none is set (usage is then shown for the current UTC day).
    Times are ms since the epoch; counts are the same as GET /stats reports."""
    await svc.usage.flush()
    budget = await svc.spend.budget(principal.user_id)
    usage = await svc.spend.window_usage(principal.user_id, budget.window if budget else "day")
    return {"budget": budget.to_dict() if budget else None, "usage": usage}


@endpoint(
    "DELETE",
    "/budget",
    summary="Remove the caller's budget",
    response=DeleteResponse,
    tag="budget",
    errors=(401, 403),
)
async def delete_budget(
    request: web.Request, svc: Services, principal: Principal
) -> DeleteResponse:
    return DeleteResponse(ok=True, deleted=await svc.spend.delete_budget(principal.user_id))
