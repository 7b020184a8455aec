"""The hot path: credential → user → limits → key → upstream → stream back.

Order matters. Checks that need neither the database nor a provider (unknown provider,
refused path, malformed body, refused model) come first and cost no rate-limit quota;
then the per-IP limit, the token lookup (cached), the per-token limit, the key (cached,
decrypted once), and the upstream call. Bodies are forwarded as received; only the
unified route rewrites `model`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, urlencode

import aiohttp
import orjson
from aiohttp import web

from byok_relay.auth import MISSING_TOKEN, Authenticator, Principal
from byok_relay.bodies import read_body
from byok_relay.config import Settings
from byok_relay.errors import ApiError
from byok_relay.metering import Meter
from byok_relay.netguard import forbidden_cause
from byok_relay.providers import ModelAllowlist, ModelRouter, Provider, ProviderRegistry
from byok_relay.providers.paths import PathRefused, encode_path, normalize_path
from byok_relay.providers.routing import model_in_path
from byok_relay.ratelimit import ClientAddress, RateLimiter
from byok_relay.storage import RequestLogRow
from byok_relay.upstream import USER_AGENT, Upstream
from byok_relay.usage import UsageRecorder
from byok_relay.vault import KeyUnreadable, Vault

_RELAY_PREFIX = "/relay/"
# Query parameters that carry credentials are never forwarded (SPEC §2).
_CREDENTIAL_PARAMS = frozenset({"key", "api_key", "apikey", "access_token", "token"})
# Provider response headers worth passing back (plus the prefixes below).
_PASS_RESPONSE = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-disposition",
        "retry-after",
        "x-request-id",
        "request-id",
    }
)
_PASS_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "ratelimit-", "openai-")
# Responses up to this size with a known length are read whole and sent in one write.
_BUFFER_LIMIT = 256 * 1024
_STREAM_ERROR_EVENT = (
    b'event: error\ndata: {"error":{"type":"relay_error",'
    b'"message":"The connection to the provider was lost mid-stream."}}\n\n'
)


@dataclass(frozen=True, slots=True)
class Call:
    """What a route decided to send: the provider, its path and the request's parts."""

    provider: Provider
    path: str
    query: str
    body: bytes
    model: str | None


class Relay:
    def __init__(
        self,
        settings: Settings,
        registry: ProviderRegistry,
        auth: Authenticator,
        vault: Vault,
        limiter: RateLimiter,
        usage: UsageRecorder,
        upstream: Upstream,
    ) -> None:
        self.registry = registry
        self.router = ModelRouter(registry)
        self.allowlist = ModelAllowlist(settings.allowed_models)
        self.auth = auth
        self.vault = vault
        self.limiter = limiter
        self.usage = usage
        self.upstream = upstream
        self.client_address = ClientAddress(settings.TRUSTED_PROXIES)
        self.body_limit = settings.REQUEST_BODY_LIMIT_BYTES
        self.supported = ", ".join(registry.names)

    # --- routes ------------------------------------------------------------------
    async def provider_route(self, request: web.Request) -> web.StreamResponse:
        """POST|GET /relay/{provider}/{path}: forward to an allow-listed provider path."""
        raw_path, _, query = request.raw_path.partition("?")
        name, _, tail = raw_path[len(_RELAY_PREFIX) :].partition("/")
        provider = self._provider(name)
        try:
            path = normalize_path("/" + tail)
        except PathRefused as exc:
            raise ApiError(403, str(exc)) from None
        if not provider.matcher.allows(request.method, path):
            raise ApiError(
                403,
                f'Path "{path}" ({request.method}) is not permitted for provider '
                f'"{provider.name}": only inference and model-listing endpoints are relayed.',
            )
        self._require_credential_shape(request)
        body = await read_body(request, self.body_limit)
        model = _body_model(request, body, self.allowlist.active)
        if provider.name == "google":
            model = model_in_path(path) or model
        self._check_model(provider.name, model)
        principal = await self._admit(request)
        return await self._forward(request, principal, Call(provider, path, query, body, model))

    async def unified_route(self, request: web.Request) -> web.StreamResponse:
        """POST /relay {model, ...}: pick the provider from `model`."""
        self._require_credential_shape(request)
        body = await read_body(request, self.body_limit)
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            raise ApiError(400, "Request body must be valid JSON.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "Request body must be a JSON object with a model field.")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(
                400,
                'model field is required: use "provider/model-name" (e.g. '
                '"anthropic/claude-3-5-haiku") or a recognised model name (e.g. "gpt-4o"). '
                "See GET /models for the routing table.",
            )
        stream = data.get("stream") is True
        route = self.router.resolve(model, stream)
        if route is None:
            raise ApiError(
                400,
                f'Cannot route model "{model}": use "provider/model-name" or a recognised '
                f"model name. Supported providers: {self.supported}. See GET /models.",
            )
        self._check_model(route.provider.name, route.model)
        if route.provider.name == "google":
            # Gemini takes the model in the path and has no `model`/`stream` body fields.
            data.pop("model", None)
            data.pop("stream", None)
            body = orjson.dumps(data)
        elif route.model != model:
            data["model"] = route.model
            body = orjson.dumps(data)
        principal = await self._admit(request)
        return await self._forward(
            request, principal, Call(route.provider, route.path, "", body, route.model)
        )

    # --- admission -----------------------------------------------------------------
    def _provider(self, name: str) -> Provider:
        provider = self.registry.get(name)
        if provider is None:
            raise ApiError(400, f'Unsupported provider "{name}". Supported: {self.supported}.')
        return provider

    def _require_credential_shape(self, request: web.Request) -> None:
        # Cheap, storage-free: a request with no credential at all is refused here.
        headers = request.headers
        if not (
            "x-relay-token" in headers
            or "authorization" in headers
            or "x-api-key" in headers
            or "x-goog-api-key" in headers
        ):
            raise ApiError(401, MISSING_TOKEN)

    def _check_model(self, provider: str, model: str | None) -> None:
        if model is not None and not self.allowlist.allows(provider, model):
            raise ApiError(403, f'Model "{model}" is not allowed on this relay (see GET /models).')

    async def _admit(self, request: web.Request) -> Principal:
        await self.limiter.check("global", self.client_address(request))
        principal = await self.auth.authenticate(request.headers)
        await self.limiter.check("relay", principal.token_hash[:32])
        request["user_id"] = principal.user_id
        return principal

    # --- forwarding ----------------------------------------------------------------
    async def _outbound(
        self, request: web.Request, principal: Principal, call: Call
    ) -> tuple[aiohttp.ClientSession, str, dict[str, str]]:
        """The session, URL and headers for the upstream request, the user's key in place."""
        provider, path = call.provider, call.path
        try:
            key = await self.vault.get(principal.user_id, provider.name)
        except KeyUnreadable:
            raise ApiError(
                500,
                f'The stored key for "{provider.name}" cannot be decrypted with this relay\'s '
                f"secrets: store it again with POST /keys/{provider.name}.",
            ) from None
        if key is None:
            raise ApiError(
                400,
                f'No API key stored for provider "{provider.name}". '
                f"POST /keys/{provider.name} first.",
            )
        header_base = request.headers.get("x-relay-base-url")
        if (
            key.base_url
            and header_base
            and self.upstream.client_base(header_base) != self.upstream.client_base(key.base_url)
        ):
            # A key stored with its base_url is bound to it: a token holder must not be
            # able to send the stored key to a host of their choosing.
            raise ApiError(
                400,
                f'The stored "{provider.name}" key is bound to the base_url stored with it; '
                "drop x-relay-base-url, or store the key again with another base_url.",
            )
        session, url = self._target(provider, path, key.base_url or header_base)
        params = _forwardable_query(call.query)
        if provider.name == "google" and path.endswith(":streamGenerateContent"):
            if not any(k == "alt" for k, _ in params):
                params.append(("alt", "sse"))
        headers = {"user-agent": USER_AGENT}
        pass_headers = provider.pass_headers
        for name, value in request.headers.items():
            lname = name.lower()
            if lname in pass_headers:
                headers[lname] = value
        if call.body and "content-type" not in headers:
            headers["content-type"] = "application/json"
        _authorize(provider, key.secret, headers, params)
        if params:
            url += "?" + urlencode(params)
        return session, url, headers

    def _target(
        self, provider: Provider, path: str, raw_base: str | None
    ) -> tuple[aiohttp.ClientSession, str]:
        """The session and URL for `path`: operator upstreams on the trusted session,
        client-supplied ones (checked) on the guarded one."""
        assert self.upstream.trusted is not None and self.upstream.guarded is not None
        quoted = encode_path(path)
        if provider.base_url is not None:
            return self.upstream.trusted, provider.base_url + quoted
        if not raw_base:
            raise ApiError(
                400,
                f'Provider "{provider.name}" needs a base URL: store one with '
                f"POST /keys/{provider.name} {{key, base_url}} or send x-relay-base-url.",
            )
        return self.upstream.guarded, self.upstream.client_base(raw_base).join(quoted)

    async def probe(self, provider: Provider, secret: str, base_url: str | None) -> int:
        """GET the provider's verify_path with `secret`; its status says if the key works."""
        if provider.spec.verify_path is None:
            raise ApiError(
                400,
                f'Provider "{provider.name}" has no cheap endpoint to check a key with; '
                f"replace the key with POST /keys/{provider.name} instead.",
            )
        session, url = self._target(provider, provider.spec.verify_path, base_url)
        headers = {"user-agent": USER_AGENT}
        params: list[tuple[str, str]] = []
        _authorize(provider, secret, headers, params)
        if params:
            url += "?" + urlencode(params)
        try:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                return resp.status
        except aiohttp.ClientConnectorError as exc:
            forbidden = forbidden_cause(exc)
            if forbidden is not None:
                raise ApiError(400, str(forbidden)) from None
            raise ApiError(502, f'Could not reach provider "{provider.name}".') from None
        except (TimeoutError, aiohttp.ClientError):
            raise ApiError(502, f'Could not reach provider "{provider.name}".') from None

    async def _forward(
        self, request: web.Request, principal: Principal, call: Call
    ) -> web.StreamResponse:
        provider = call.provider
        request["provider"] = provider.name
        request["model"] = call.model
        session, url, headers = await self._outbound(request, principal, call)
        started = time.perf_counter()
        status = 502
        streamed = False
        meter = Meter()
        try:
            try:
                upstream = await session.request(
                    request.method,
                    url,
                    data=call.body or None,
                    headers=headers,
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError as exc:
                forbidden = forbidden_cause(exc)
                if forbidden is not None:
                    status = 400
                    raise ApiError(400, str(forbidden)) from None
                raise ApiError(502, f'Could not reach provider "{provider.name}".') from None
            except aiohttp.ConnectionTimeoutError:
                # No TCP connection at all: unreachable (502), not slow to answer (504).
                raise ApiError(502, f'Could not reach provider "{provider.name}".') from None
            except aiohttp.ServerTimeoutError:
                status = 504
                raise ApiError(504, f'Provider "{provider.name}" did not answer in time.') from None
            except (TimeoutError, aiohttp.ClientError):
                raise ApiError(502, f'Could not reach provider "{provider.name}".') from None
            status = upstream.status
            try:
                response, streamed = await self._respond(request, upstream, meter)
            finally:
                # Back to the pool when fully read; closed when not (client left, error).
                upstream.release()
            if response.status != status:
                status = response.status
            return response
        finally:
            self.usage.record(
                RequestLogRow(
                    user_id=principal.user_id,
                    app_id=principal.app_id,
                    provider=provider.name,
                    model=call.model,
                    status=status,
                    latency_ms=int((time.perf_counter() - started) * 1000),
                    streaming=streamed,
                    input_tokens=meter.input_tokens,
                    output_tokens=meter.output_tokens,
                    created_at=int(time.time() * 1000),
                )
            )

    async def _respond(
        self, request: web.Request, upstream: aiohttp.ClientResponse, meter: Meter
    ) -> tuple[web.StreamResponse, bool]:
        headers: dict[str, str] = {}
        for name, value in upstream.headers.items():
            lname = name.lower()
            if lname in _PASS_RESPONSE or lname.startswith(_PASS_RESPONSE_PREFIXES):
                headers[name] = value
        content_type = upstream.headers.get("content-type", "")
        is_sse = content_type.startswith("text/event-stream")
        length = upstream.content_length
        readable = "content-encoding" not in upstream.headers  # never decompressed here
        if not is_sse and length is not None and length <= _BUFFER_LIMIT:
            data = await upstream.read()
            if readable and "json" in content_type:
                meter.feed_json(data)
            return web.Response(body=data, status=upstream.status, headers=headers), False

        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if length is not None and not is_sse:
            response.content_length = length
        await response.prepare(request)
        meter_sse = meter.feed_sse if is_sse and readable else None
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                if meter_sse is not None:
                    meter_sse(chunk)
        except (TimeoutError, aiohttp.ClientError):
            request["stream_error"] = True
            if is_sse:
                await response.write(_STREAM_ERROR_EVENT)
            elif request.transport is not None:
                # A truncated binary body must not look complete: drop the connection.
                request.transport.close()
                return response, True
        await response.write_eof()
        return response, True


def _authorize(
    provider: Provider, secret: str, headers: dict[str, str], params: list[tuple[str, str]]
) -> None:
    """Provider headers and the user's credential, placed as the provider expects."""
    for name, value in provider.default_headers:
        headers.setdefault(name, value)
    for name, value in provider.fixed_headers:
        headers[name] = value
    if provider.auth_header:
        headers[provider.auth_header] = provider.auth_prefix + secret
    if provider.auth_query:
        params.append((provider.auth_query, secret))


_MULTIPART_MODEL = re.compile(
    rb'content-disposition:[ \t]*form-data;[ \t]*name="?model"?[^\r\n]*\r\n'
    rb"(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n",
    re.IGNORECASE,
)


def _body_model(request: web.Request, body: bytes, strict: bool) -> str | None:
    """The `model` of a request body, for the allowlist and the log.

    With `strict` (ALLOWED_MODELS set) the relay fails closed: a body that looks like
    JSON but cannot be read is refused rather than forwarded with an unchecked model.
    """
    if not body:
        return None
    ctype = request.content_type
    if ctype.startswith("multipart/form-data"):
        if not strict:
            return None
        m = _MULTIPART_MODEL.search(body)
        return m.group(1).decode("utf-8", "replace") if m else None
    if ctype == "application/x-www-form-urlencoded":
        if not strict:
            return None
        values = parse_qs(body.decode("utf-8", "replace")).get("model")
        if values:
            return values[0]
        # No form field: a JSON body mislabelled as a form is still read below.
    # A JSON object sent without a JSON content type is still read: providers parse it
    # (and an unlabelled body goes upstream as application/json), so ALLOWED_MODELS must.
    head = body[:64].lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
    if not (ctype.endswith("json") or head[:1] == b"{"):
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses a BOM or a lone surrogate escape that lenient parsers (and so
        # possibly the provider) accept: read those with the standard library.
        try:
            data = json.loads(body)
        except ValueError:
            if strict:
                raise ApiError(
                    400,
                    "Request body is not valid JSON; this relay checks the model "
                    "(ALLOWED_MODELS), so it must be able to read the body.",
                ) from None
            return None  # the provider answers malformed bodies in its own words
    if not isinstance(data, dict):
        return None
    model = data.get("model")
    return model if isinstance(model, str) else None


def _forwardable_query(query: str) -> list[tuple[str, str]]:
    if not query:
        return []
    return [
        (k, v)
        for k, v in parse_qsl(query, keep_blank_values=True)
        if k.lower() not in _CREDENTIAL_PARAMS
    ]
