"""Users and their relay tokens: register, rotate, revoke, erase."""

from __future__ import annotations

import time
import uuid

from aiohttp import web

from byok_relay.api.endpoints import endpoint
from byok_relay.api.schemas import OkResponse, RegisterRequest, TokenResponse
from byok_relay.auth import Principal
from byok_relay.crypto import new_token
from byok_relay.errors import ApiError
from byok_relay.services import Services

_DAY_MS = 86_400_000


def _expiry(svc: Services, now: int) -> int | None:
    days = svc.settings.TOKEN_EXPIRY_DAYS
    return now + days * _DAY_MS if days > 0 else None


@endpoint(
    "POST",
    "/users",
    summary="Register a user and get a relay token",
    auth="app_secret",
    body=RegisterRequest,
    response=TokenResponse,
    tag="users",
    errors=(400, 401, 429),
)
async def register(request: web.Request, svc: Services, body: RegisterRequest) -> TokenResponse:
    """Creates a user for `app_id`. When APP_SECRET is set, send
    `Authorization: Bearer <APP_SECRET>`. Registrations are limited per client address."""
    await svc.limiter.check("register", svc.client_address.bucket(request))
    token = new_token()
    now = int(time.time() * 1000)
    expires_at = _expiry(svc, now)
    await svc.storage.create_user(
        uuid.uuid4().hex, body.app_id, svc.hasher.hash(token), now, expires_at
    )
    return TokenResponse(token=token, expires_at=expires_at)


@endpoint(
    "DELETE",
    "/users",
    summary="Erase the caller: user, every stored key and their request log",
    response=OkResponse,
    tag="users",
    errors=(401,),
)
async def delete_user(request: web.Request, svc: Services, principal: Principal) -> dict[str, bool]:
    """Irreversible. The token stops working at once."""
    svc.usage.forget_user(principal.user_id)
    deleted = await svc.storage.delete_user(principal.user_id)
    svc.auth.forget_user(principal.user_id)
    svc.vault.forget_user(principal.user_id)
    return {"ok": True, "deleted": deleted}


@endpoint(
    "POST",
    "/tokens/revoke",
    summary="Revoke the current relay token at once",
    response=OkResponse,
    tag="tokens",
    errors=(401,),
)
async def revoke_token(
    request: web.Request, svc: Services, principal: Principal
) -> dict[str, bool]:
    """The token is dead immediately. Stored keys stay but are unreachable with it."""
    revoked = await svc.storage.revoke_token(principal.token_hash, int(time.time() * 1000))
    svc.auth.forget_token(principal.token_hash)
    return {"ok": True, "revoked": revoked}


@endpoint(
    "POST",
    "/tokens/rotate",
    summary="Get a new relay token for the same user; the old one dies",
    response=TokenResponse,
    tag="tokens",
    errors=(401,),
)
async def rotate_token(request: web.Request, svc: Services, principal: Principal) -> TokenResponse:
    """Keys are kept. Use this when a token may have leaked."""
    token = new_token()
    now = int(time.time() * 1000)
    expires_at = _expiry(svc, now)
    rotated = await svc.storage.rotate_token(
        principal.token_hash, svc.hasher.hash(token), now, expires_at
    )
    svc.auth.forget_token(principal.token_hash)
    if not rotated:
        raise ApiError(401, "This relay token was revoked or replaced meanwhile.")
    return TokenResponse(token=token, expires_at=expires_at)
