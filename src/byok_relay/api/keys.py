"""The caller's provider keys: store, list, delete. Values never leave the relay."""

from __future__ import annotations

from aiohttp import web

from byok_relay.api.endpoints import endpoint
from byok_relay.api.schemas import (
    DeleteResponse,
    KeyEntry,
    KeyListResponse,
    StoreKeyRequest,
    StoreKeyResponse,
)
from byok_relay.auth import Principal
from byok_relay.errors import ApiError
from byok_relay.netguard import ForbiddenUpstream, check_base_url
from byok_relay.providers import Provider
from byok_relay.services import Services


def provider_from_path(request: web.Request, svc: Services) -> Provider:
    name = request.match_info["provider"]
    provider = svc.registry.get(name)
    if provider is None:
        raise ApiError(400, svc.registry.unknown(name), extra={"supported": svc.registry.names})
    return provider


@endpoint(
    "POST",
    "/keys/{provider}",
    summary="Store or replace the caller's key for a provider",
    body=StoreKeyRequest,
    response=StoreKeyResponse,
    tag="keys",
    errors=(400, 401),
    check_path=provider_from_path,  # "opnai" is the first thing to hear about
)
async def store_key(
    request: web.Request, svc: Services, principal: Principal, body: StoreKeyRequest
) -> StoreKeyResponse:
    """The key is encrypted (AES-256-GCM) before it is stored and is never returned.
    `base_url` is accepted only by providers that take one (`openai-compatible`)."""
    provider = provider_from_path(request, svc)
    base_url = body.base_url
    if base_url is not None:
        if not provider.spec.takes_base_url:
            raise ApiError(
                400, f'base_url is not accepted for provider "{provider.name}": its upstream '
                "is fixed by the relay operator."
            )  # fmt: skip
        try:
            await check_base_url(
                base_url,
                allow_private=svc.settings.ALLOW_PRIVATE_UPSTREAMS,
                resolver=svc.upstream.resolver,
            )
        except ForbiddenUpstream as exc:
            raise ApiError(400, f"base_url refused: {exc}") from None
    await svc.vault.put(principal.user_id, provider.name, body.key, base_url)
    return StoreKeyResponse(ok=True, provider=provider.name)


@endpoint(
    "GET",
    "/keys",
    summary="Which providers have a stored key (values are never returned)",
    response=KeyListResponse,
    tag="keys",
    errors=(401,),
)
async def list_keys(request: web.Request, svc: Services, principal: Principal) -> KeyListResponse:
    keys = await svc.vault.list(principal.user_id)
    return KeyListResponse(
        providers=[k.provider for k in keys],
        keys=[
            KeyEntry(
                provider=k.provider,
                hint=k.hint,
                base_url=k.base_url,
                created_at=k.created_at,
                updated_at=k.updated_at,
                last_used_at=k.last_used_at,
            )
            for k in keys
        ],
    )


@endpoint(
    "DELETE",
    "/keys/{provider}",
    summary="Forget the caller's key for a provider",
    response=DeleteResponse,
    tag="keys",
    errors=(400, 401),
)
async def delete_key(request: web.Request, svc: Services, principal: Principal) -> DeleteResponse:
    provider = provider_from_path(request, svc)
    deleted = await svc.vault.delete(principal.user_id, provider.name)
    return DeleteResponse(ok=True, deleted=deleted)
