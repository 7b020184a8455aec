"""Declaring a management endpoint: its route, auth, body and response models.

The same declarations feed the router (app.py) and the OpenAPI document (openapi.py),
so the documentation cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from byok_relay.auth import SCOPED_CANNOT_MANAGE, Principal
from byok_relay.bodies import read_body
from byok_relay.crypto import constant_time_equals
from byok_relay.errors import ApiError, json_response
from byok_relay.services import SERVICES, Services

Auth = Literal["none", "token", "app_secret", "app_secret_required"]
Handler = Callable[..., Awaitable[Any]]


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    tag: str = "management"
    limited: bool = True
    errors: tuple[int, ...] = ()
    description: str = ""
    # Checks the path's own parameters before the body is read and checked: a caller
    # with a typo in the URL hears about that, not about a field of the body.
    check_path: Callable[[web.Request, Services], object] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str,
    path: str,
    *,
    summary: str,
    auth: Auth = "token",
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    tag: str = "management",
    limited: bool = True,
    errors: tuple[int, ...] = (),
    check_path: Callable[[web.Request, Services], object] | None = None,
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ENDPOINTS.append(
            Endpoint(
                method, path, fn, summary, auth, body, response, tag, limited, errors,
                (fn.__doc__ or "").strip(), check_path,
            )
        )  # fmt: skip
        return fn

    return register


def _field_message(err: Any, model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    kind = err["type"]
    if kind == "missing":
        return f"{loc} is required"
    if kind == "extra_forbidden":
        known = ", ".join(model.model_fields) if len(err["loc"]) == 1 else "see GET /docs"
        return f"{loc} is not a known field (known: {known})"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"{loc} must be an integer"
    if kind == "literal_error":
        return f"{loc}: {err['msg']}"
    if kind in {"string_type", "str_type"}:
        return f"{loc} must be a string"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc} {msg}" if kind == "value_error" else f"{loc}: {msg}"


_JSON_TYPES = ("application/json",)
# The rest of an unread body makes the connection unusable: tell the client not to reuse it.
_CLOSE = {"Connection": "close"}


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """A JSON object body checked against `model`; every failure is a clear 400."""
    ctype = request.content_type
    if request.headers.get("content-type") and not (
        ctype in _JSON_TYPES or ctype.endswith("+json")
    ):
        raise ApiError(
            400,
            "Content-Type must be application/json "
            "(with curl: -H 'content-type: application/json').",
        )
    svc = request.app[SERVICES]
    settings = svc.settings
    raw = await read_body(
        request, settings.REQUEST_BODY_LIMIT_BYTES, settings.CLIENT_BODY_TIMEOUT_S
    )
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise ApiError(400, "Request body must be valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, _field_message(exc.errors()[0], model)) from None


def bearer_matches(request: web.Request, secret: str) -> bool:
    """`Authorization: Bearer <secret>`, compared in constant time. The scheme is
    case-insensitive (RFC 9110), as for relay tokens (auth.read_credential)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and constant_time_equals(value.strip(), secret)


def require_app_secret(request: web.Request, svc: Services, *, required: bool) -> None:
    secret = svc.settings.APP_SECRET
    if secret is None:
        if required:
            raise ApiError(503, "This endpoint needs APP_SECRET to be configured on the relay.")
        return
    if not bearer_matches(request, secret.get_secret_value()):
        raise ApiError(
            401, "Unauthorized: a valid Authorization: Bearer <APP_SECRET> header is required."
        )


def make_handler(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        svc = request.app[SERVICES]
        if ep.limited:
            await svc.limiter.check("global", svc.client_address.bucket(request))
        kwargs: dict[str, Any] = {}
        if ep.auth == "token":
            principal: Principal = await svc.auth.authenticate(request.headers)
            request["user_id"] = principal.user_id
            if principal.scoped is not None:
                # Scoped tokens are for relay routes only (SPEC §9).
                raise ApiError(403, SCOPED_CANNOT_MANAGE)
            kwargs["principal"] = principal
        elif ep.auth in ("app_secret", "app_secret_required"):
            require_app_secret(request, svc, required=ep.auth == "app_secret_required")
        if ep.check_path is not None:
            ep.check_path(request, svc)
        if ep.body is not None:
            kwargs["body"] = await parse_body(request, ep.body)
        result = await ep.handler(request, svc, **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, BaseModel):
            return json_response(result.model_dump(mode="json"))
        return json_response(result)

    return handle
