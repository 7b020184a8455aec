"""Assembly: the aiohttp application, its routes and the cross-cutting behaviour.

One middleware does what every request needs (the in-flight count for a graceful stop,
request id, preflight, error → JSON, the access-log line); one response-prepare hook
stamps CORS, security and request-id headers on every response, streamed ones included,
just before their headers leave.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web, web_response

from byok_relay.api import (  # noqa: F401  (registers routes)
    budget,
    key_checks,
    keys,
    meta,
    skill,
    stats,
    tokens,
    users,
)
from byok_relay.api.endpoints import ENDPOINTS, make_handler
from byok_relay.config import Settings
from byok_relay.custody import CustodyUnavailable
from byok_relay.drain import IN_FLIGHT, InFlight
from byok_relay.errors import ApiError, json_response
from byok_relay.logs import AccessLog, access_logger
from byok_relay.providers import ProviderRegistry
from byok_relay.services import SERVICES, Services
from byok_relay.storage import StorageUnavailable

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_SANE_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~\-, ]{0,2048}$")
ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
# Provider and relay headers a browser may read (Access-Control-Expose-Headers).
EXPOSED_HEADERS = ", ".join(
    [
        "X-Relay-Request-Id",
        "x-request-id",
        "request-id",
        "retry-after",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "openai-processing-ms",
        "openai-version",
        *(
            f"x-ratelimit-{kind}-{unit}"
            for kind in ("limit", "remaining", "reset")
            for unit in ("requests", "tokens")
        ),
        *(
            f"anthropic-ratelimit-{unit}-{kind}"
            for unit in ("requests", "tokens", "input-tokens", "output-tokens")
            for kind in ("limit", "remaining", "reset")
        ),
    ]
)
# Every answer says `Server: byok-relay`, also the HTTP parser's own 400s that no app
# hook sees: aiohttp's "Python/3.x aiohttp/3.y" only helps whoever looks for a known
# hole (operators have GET /version).
web_response.SERVER_SOFTWARE = "byok-relay"  # type: ignore[attr-defined]

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
_HSTS = "max-age=31536000; includeSubDomains"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Cors:
    def __init__(self, origins: list[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins)

    def allow_origin(self, origin: str | None) -> str | None:
        if origin is None:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None


_ID_PREFIX = os.urandom(4).hex()
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    # Unique per process start and request, without a syscall per request.
    return f"{_ID_PREFIX}{next(_id_counter):08x}"


class RelayResource(web.DynamicResource):
    """`/relay/{provider}/{path:.*}`, matched by its prefix: the relay routes parse
    `request.raw_path` themselves (relay.py), so the regex and the per-part unquoting
    aiohttp does for a dynamic route produce nothing anyone reads."""

    def __init__(self) -> None:
        super().__init__("/relay/{provider}/{path:.*}")

    def _match(self, path: str) -> dict[str, str] | None:
        # The pattern's paths: a non-empty provider segment, then a slash.
        if path.startswith("/relay/") and path.find("/", 7) > 7:
            return {}
        return None


def build_app(settings: Settings, registry: ProviderRegistry | None = None) -> web.Application:
    registry = registry or ProviderRegistry.load(
        settings.PROVIDERS_FILE, settings.provider_base_urls
    )
    services = Services.build(settings, registry)
    cors = Cors(settings.allowed_origins)
    https_forwarded = bool(settings.TRUSTED_PROXIES)
    metrics = services.metrics
    in_flight = InFlight()
    access_log = AccessLog(
        enabled=settings.LOG_LEVEL in ("debug", "info"), text=settings.log_as_text
    )

    @web.middleware
    async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        sent_id = request.headers.get("x-request-id")
        rid = sent_id if sent_id and _SANE_REQUEST_ID.match(sent_id) else _new_request_id()
        request["rid"] = rid
        status = 500
        in_flight.enter()
        try:
            if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
                response: web.StreamResponse = _preflight(request, cors)
            else:
                response = await handler(request)
            status = response.status
            return response
        except ApiError as exc:
            status = exc.status
            if exc.hang_up:
                return await _answer_and_hang_up(request, exc.response())
            return exc.response()
        except web.HTTPException as exc:
            # aiohttp's own refusals (404, 405, 413 …) in our JSON shape.
            status = exc.status
            return json_response(
                {"error": _http_error_message(exc, request)}, exc.status, _keep_headers(exc)
            )
        except StorageUnavailable:
            status = 503
            return json_response(
                {"error": "The relay's database is unavailable; try again shortly."}, 503
            )
        except CustodyUnavailable:
            status = 503  # SPEC §11: a key in HSM custody, the HSM not answering
            return json_response(
                {"error": "The relay's key store (its HSM) does not answer right now; "
                          "try again shortly."}, 503, headers={"Retry-After": "5"},
            )  # fmt: skip
        except asyncio.CancelledError:
            status = 499  # the client went away; the upstream request is cancelled with us
            raise
        except Exception:
            access_logger.exception("unhandled error", extra={"fields": {"id": rid}})
            return json_response({"error": "Internal error in the relay."}, 500)
        finally:
            in_flight.leave()
            elapsed = time.perf_counter() - started
            route = _route_name(request)
            metrics.observe(route, request.method, status, elapsed, request.get("provider"))
            access_log.write(
                {
                    "id": rid,
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "provider": request.get("provider"),
                    "model": request.get("model"),
                    "stream_error": request.get("stream_error"),
                }
            )

    async def stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        rid = request.get("rid")
        if rid:
            headers["X-Relay-Request-Id"] = rid
        allowed = cors.allow_origin(request.headers.get("origin"))
        if allowed:
            headers["Access-Control-Allow-Origin"] = allowed
            headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if not cors.any and "Vary" not in headers:
            # With an origin list every answer depends on Origin (refusals too); a
            # preflight's own Vary (Origin, Access-Control-Request-Headers) is kept.
            headers["Vary"] = "Origin"
        for name, value in SECURITY_HEADERS:
            headers[name] = value
        if request.secure or (
            https_forwarded and request.headers.get("x-forwarded-proto") == "https"
        ):
            headers["Strict-Transport-Security"] = _HSTS
        headers.pop("Set-Cookie", None)

    app = web.Application(
        middlewares=[request_context], client_max_size=settings.REQUEST_BODY_LIMIT_BYTES
    )
    app[SERVICES] = services
    app[IN_FLIGHT] = in_flight
    app.on_response_prepare.append(stamp_headers)

    async def lifecycle(app: web.Application) -> object:
        await services.start()
        yield
        await services.stop()

    app.cleanup_ctx.append(lifecycle)  # type: ignore[arg-type]

    # The hot routes first: the router tries resources in registration order.
    relay = services.relay
    relay_paths = RelayResource()
    app.router.register_resource(relay_paths)
    relay_paths.add_route("POST", relay.provider_route)
    relay_paths.add_route("GET", relay.provider_route)
    app.router.add_route("POST", "/relay", relay.unified_route)
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, make_handler(ep))
    return app


async def _answer_and_hang_up(request: web.Request, response: web.Response) -> web.Response:
    # Sent now, then the connection closed (close() flushes what is buffered): aiohttp
    # would otherwise linger, waiting for the rest of a body that is not coming.
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _preflight(request: web.Request, cors: Cors) -> web.Response:
    origin = request.headers.get("origin")
    allowed = cors.allow_origin(origin)
    if allowed is None:
        raise ApiError(403, f"Origin {origin!r} is not allowed by this relay (ALLOWED_ORIGINS).")
    asked = request.headers.get("access-control-request-headers", "")
    if not _SANE_HEADER_LIST.match(asked):
        raise ApiError(400, "Malformed Access-Control-Request-Headers.")
    # Echo the requested headers: the SDKs send many (x-stainless-*, anthropic-*), and
    # none of them can carry anything the relay would forward unchecked.
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": asked or "content-type, x-relay-token",
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin, Access-Control-Request-Headers",
        },
    )


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def _http_error_message(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"Not found: {request.method} {request.path}. See GET /docs for the API."
    if exc.status == 405:
        return f"Method {request.method} is not allowed on {request.path}."
    if exc.status == 413:
        return "Request body is too large."
    return exc.reason or "Request refused."


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
