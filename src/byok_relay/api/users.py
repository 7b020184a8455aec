"""Users and their relay tokens: register, rotate, revoke, erase."""

from __future__ import annotations

from aiohttp import web

from byok_relay.api.endpoints import endpoint
from byok_relay.api.schemas import OkResponse, RegisterRequest, TokenResponse
from byok_relay.auth import Principal
from byok_relay.errors import ApiError
from byok_relay.services import Services


@endpoint(
    "POST",
    "/users",
    summary="Register a user and get a relay token",
    auth="app_secret",
    body=RegisterRequest,
    response=TokenResponse,
    tag="users",
    errors=(400, 401, 403, 429),
)
async def register(request: web.Request, svc: Services, body: RegisterRequest) -> TokenResponse:
    """Creates a user for `app_id`. When APP_SECRET is set, send
    `Authorization: Bearer <APP_SECRET>`. Registrations are limited per client address.
    With JWT_ONLY=true this answers 403: users come from the app's identity provider."""
    if svc.settings.JWT_ONLY:
        raise ApiError(
            403,
            "This relay accepts only your app's sign-in (JWT_ONLY=true): send the signed-in "
            "user's token (a JWT) as the credential instead of registering.",
        )
    await svc.limiter.check("register", svc.client_address.bucket(request))
    issued = await svc.accounts.register(body.app_id)
    return TokenResponse(token=issued.token, expires_at=issued.expires_at)


@endpoint(
    "DELETE",
    "/users",
    summary="Erase the caller: user, every stored key and their request log",
    response=OkResponse,
    tag="users",
    errors=(401, 403),
)
async def delete_user(request: web.Request, svc: Services, principal: Principal) -> dict[str, bool]:
    """Irreversible. The token, and every scoped token, stop working at once."""
    return {"ok": True, "deleted": await svc.accounts.erase(principal)}


@endpoint(
    "POST",
    "/tokens/revoke",
    summary="Revoke the current relay token (and the scoped tokens it minted) at once",
    response=OkResponse,
    tag="tokens",
    errors=(400, 401, 403),
)
async def revoke_token(
    request: web.Request, svc: Services, principal: Principal
) -> dict[str, bool]:
    """The token is dead immediately, on every instance, with every scoped token it
    minted. Stored keys stay but are unreachable with it."""
    return {"ok": True, "revoked": await svc.accounts.revoke(principal)}


@endpoint(
    "POST",
    "/tokens/rotate",
    summary="Get a new relay token for the same user; the old one dies",
    response=TokenResponse,
    tag="tokens",
    errors=(400, 401, 403),
)
async def rotate_token(request: web.Request, svc: Services, principal: Principal) -> TokenResponse:
    """Keys are kept, and so are the scoped tokens the old token minted. Use this when a
    token may have leaked."""
    issued = await svc.accounts.rotate(principal)
    return TokenResponse(token=issued.token, expires_at=issued.expires_at)
