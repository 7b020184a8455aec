"""Scoped tokens (SPEC §9): mint one for a tab, a page or a job; list; revoke."""

from __future__ import annotations

from aiohttp import web

from byok_relay.api.endpoints import endpoint
from byok_relay.api.schemas import (
    DeleteResponse,
    ScopedTokenEntry,
    ScopedTokenList,
    ScopedTokenRequest,
    ScopedTokenResponse,
    ScopedTokenUsage,
)
from byok_relay.auth import Principal
from byok_relay.errors import ApiError, json_response
from byok_relay.scopes import Scope
from byok_relay.services import Services


def check_providers(svc: Services, names: list[str] | None, field: str) -> None:
    for name in names or ():
        if svc.registry.get(name) is None:
            raise ApiError(
                400,
                f"{field}: {svc.registry.unknown(name, capital=False)}",
                extra={"supported": svc.registry.names},
            )


@endpoint(
    "POST",
    "/tokens",
    summary="Mint a scoped token: limited providers, models, origins, ips, lifetime, budget",
    body=ScopedTokenRequest,
    response=ScopedTokenResponse,
    tag="tokens",
    errors=(400, 401, 403),
)
async def mint_token(
    request: web.Request, svc: Services, principal: Principal, body: ScopedTokenRequest
) -> web.Response:
    """Answers 201 with the token (shown once; only its HMAC is stored). Every absent
    field means "no restriction of that kind"; `ttl_s` defaults to 3600 and never
    reaches past the minting token's own expiry. Hand the token to a browser page; it
    works on relay routes only, and is refused (403/401/429, naming the rule) outside
    its scope, after expiry, and once its budget is spent."""
    check_providers(svc, body.providers, "providers")
    budget = body.budget
    scope = Scope.build(
        body.providers,
        body.models,
        body.origins,
        body.ips,
        budget.requests if budget else None,
        budget.tokens if budget else None,
    )
    token, record = await svc.accounts.mint_scoped(principal, body.label, scope, body.ttl_s)
    answer = ScopedTokenResponse(
        token=token,
        id=record.id,
        label=record.label,
        scope=scope.to_dict(),
        expires_at=record.expires_at,
    )
    return json_response(answer.model_dump(mode="json"), 201)


@endpoint(
    "GET",
    "/tokens",
    summary="The caller's live scoped tokens with their usage (never their secrets)",
    response=ScopedTokenList,
    tag="tokens",
    errors=(401, 403),
)
async def list_tokens(request: web.Request, svc: Services, principal: Principal) -> ScopedTokenList:
    """Neither revoked nor expired, newest first. `usage` counts relayed requests and
    input/output tokens, as GET /stats does."""
    tokens = await svc.accounts.list_scoped(principal.user_id)
    return ScopedTokenList(
        tokens=[
            ScopedTokenEntry(
                id=t.record.id,
                label=t.record.label,
                scope=t.scope.to_dict(),
                created_at=t.record.created_at,
                expires_at=t.record.expires_at,
                last_used_at=t.usage.last_used_at,
                usage=ScopedTokenUsage(
                    requests=t.usage.requests,
                    input_tokens=t.usage.input_tokens,
                    output_tokens=t.usage.output_tokens,
                ),
            )
            for t in tokens
        ]
    )


@endpoint(
    "DELETE",
    "/tokens/{id}",
    summary="Revoke one scoped token at once (on every instance)",
    response=DeleteResponse,
    tag="tokens",
    errors=(401, 403),
)
async def revoke_scoped(
    request: web.Request, svc: Services, principal: Principal
) -> DeleteResponse:
    """`deleted` is false when the caller has no live scoped token with that id."""
    deleted = await svc.accounts.revoke_scoped(principal.user_id, request.match_info["id"])
    return DeleteResponse(ok=True, deleted=deleted)
