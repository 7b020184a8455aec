"""Checking keys with the provider: verify the stored key, rotate to a verified new one."""

from __future__ import annotations

from aiohttp import web

from byok_relay.api.endpoints import endpoint
from byok_relay.api.keys import provider_from_path
from byok_relay.api.schemas import RotateKeyRequest, RotateKeyResponse, VerifyKeyResponse
from byok_relay.auth import Principal
from byok_relay.errors import ApiError
from byok_relay.services import Services
from byok_relay.vault import KeyUnreadable

# Statuses by which a provider says "this key is not valid" (anything else: can't tell).
_REJECTED = frozenset({401, 403})


@endpoint(
    "POST",
    "/keys/{provider}/verify",
    summary="Check the stored key with the provider",
    response=VerifyKeyResponse,
    tag="keys",
    errors=(400, 401, 502),
)
async def verify_key(
    request: web.Request, svc: Services, principal: Principal
) -> VerifyKeyResponse:
    """Makes one cheap authenticated call (e.g. listing models). `ok` is true when the
    provider accepted the key; `status` is the provider's HTTP status."""
    provider = provider_from_path(request, svc)
    try:
        key = await svc.vault.get(principal.user_id, provider.name)
    except KeyUnreadable:
        raise ApiError(
            500,
            f"The stored key cannot be decrypted: store it again with POST /keys/{provider.name}.",
        ) from None
    if key is None:
        raise ApiError(
            400,
            f'No API key stored for provider "{provider.name}". POST /keys/{provider.name} first.',
        )
    status = await svc.upstream.probe(provider, key.secret, key.base_url)
    return VerifyKeyResponse(ok=200 <= status < 300, status=status)


@endpoint(
    "POST",
    "/keys/{provider}/rotate",
    summary="Replace the stored key, only after the provider accepts the new one",
    body=RotateKeyRequest,
    response=RotateKeyResponse,
    tag="keys",
    errors=(400, 401, 422, 502),
    check_path=provider_from_path,
)
async def rotate_key(
    request: web.Request, svc: Services, principal: Principal, body: RotateKeyRequest
) -> RotateKeyResponse:
    """The new key is checked with the provider first. Rejected (401/403) → 422 and the
    old key stays in place; accepted → stored; anything else → 502, old key kept."""
    provider = provider_from_path(request, svc)
    try:
        current = await svc.vault.get(principal.user_id, provider.name)
    except KeyUnreadable:
        current = None
    base_url = current.base_url if current else None
    status = await svc.upstream.probe(provider, body.key, base_url)
    if status in _REJECTED:
        raise ApiError(
            422,
            f"The provider rejected the new key (HTTP {status}); the old key is kept.",
            extra={"ok": False, "provider": provider.name, "rotated": False, "status": status},
        )
    if not 200 <= status < 300:
        raise ApiError(
            502,
            f"Could not verify the new key (provider answered HTTP {status}); "
            "the old key is kept. Try again later.",
            extra={"ok": False, "provider": provider.name, "rotated": False, "status": status},
        )
    await svc.vault.put(principal.user_id, provider.name, body.key, base_url)
    # As the reference: rotated=false when there was no key before (a first store).
    return RotateKeyResponse(ok=True, provider=provider.name, rotated=current is not None)
