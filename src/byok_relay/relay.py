"""The hot path: credential → user → limits → key → upstream → stream back.

Order matters (SECURITY.md, "What runs before authentication"). Checks that read neither
the body nor the database (unknown provider, refused path, no credential) come first and
cost no rate-limit quota; then the per-IP limit and the token lookup (cached). Only then
is the body read and its model checked (ALLOWED_MODELS), so an unauthenticated request
never costs a body parse; a refused model costs no per-token quota. Last come the
per-token limit, the key (cached, decrypted once) and the upstream call. Bodies are
forwarded as received; only the unified route rewrites them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
from aiohttp import web

from byok_relay.admission import Admission, Ticket
from byok_relay.auth import MISSING_TOKEN
from byok_relay.bodies import read_body
from byok_relay.config import Settings
from byok_relay.crypto import SCOPED_TOKEN_PREFIX, TOKEN_PREFIX
from byok_relay.errors import ApiError
from byok_relay.metering import Meter, UsageChunkFilter
from byok_relay.providers import (
    ModelAllowlist,
    ModelRouter,
    Provider,
    ProviderRegistry,
    Unroutable,
)
from byok_relay.providers.paths import PathRefused, normalize_path
from byok_relay.ratelimit import ClientAddress
from byok_relay.request_model import (
    MAX_FORM_FIELDS,
    Unreadable,
    body_models,
    check_model_name,
    json_model,
    query_model,
)
from byok_relay.spend import SpendControl
from byok_relay.storage import RequestLogRow
from byok_relay.upstream import USER_AGENT, Upstream
from byok_relay.usage import UsageRecorder
from byok_relay.vault import KeyUnreadable, Vault

_RELAY_PREFIX = "/relay/"
# Query parameters that carry credentials are never forwarded (SPEC §2): these names
# (compared lower-case, '-' read as '_'), and any value that looks like a relay token.
_CREDENTIAL_PARAMS = frozenset(
    {
        "key", "api_key", "apikey", "access_token", "token", "auth", "auth_token",
        "authorization", "bearer", "id_token", "refresh_token", "session_token", "jwt",
        "secret", "client_secret", "password", "x_relay_token", "relay_token",
        "x_api_key", "x_goog_api_key", "xi_api_key", "openai_api_key", "anthropic_api_key",
    }
)  # fmt: skip
_TOKEN_VALUE_PREFIXES = (TOKEN_PREFIX, SCOPED_TOKEN_PREFIX)
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
_API_VERSIONS = ("/v1", "/v1beta")


def _missing_version_hint(provider: Provider, method: str, path: str) -> str:
    """An SDK base URL without its version segment (…/relay/openai instead of
    …/relay/openai/v1) sends /chat/completions: say what was meant."""
    for version in _API_VERSIONS:
        if provider.matcher.match(method, version + path) is not None:
            return (
                f' Did you mean "{version}{path}"? The base URL your client was given may '
                f"be missing its version (OpenAI SDKs: …/relay/{provider.name}/v1)."
            )
    return ""


@dataclass(frozen=True, slots=True)
class Call:
    """What a route decided to send: the provider, its path and the request's parts."""

    provider: Provider
    path: str
    params: list[tuple[str, str]]  # the query, credentials removed, as forwarded
    body: bytes
    model: str | None
    # The relay asked for stream usage the client did not: hide it again (SPEC §9).
    hide_usage: bool = False


class Relay:
    def __init__(
        self,
        settings: Settings,
        registry: ProviderRegistry,
        admission: Admission,
        vault: Vault,
        spend: SpendControl,
        usage: UsageRecorder,
        upstream: Upstream,
        client_address: ClientAddress,
    ) -> None:
        self.registry = registry
        self.router = ModelRouter(registry)
        self.allowlist = ModelAllowlist(settings.allowed_models)
        self.admission = admission
        self.vault = vault
        self.spend = spend
        self.usage = usage
        self.upstream = upstream
        self.client_address = client_address
        self.body_limit = settings.REQUEST_BODY_LIMIT_BYTES
        self.body_stall_s = settings.CLIENT_BODY_TIMEOUT_S
        self.supported = ", ".join(registry.names)

    # --- routes ------------------------------------------------------------------
    async def provider_route(self, request: web.Request) -> web.StreamResponse:
        """POST|GET /relay/{provider}/{path}: forward to an allow-listed provider path."""
        raw_path, _, query = request.raw_path.partition("?")
        name, _, tail = raw_path[len(_RELAY_PREFIX) :].partition("/")
        provider = self._provider(name)
        path, path_model = self._allowed_path(provider, request.method, "/" + tail)
        self._require_credential_shape(request)
        ticket = await self.admission.admit(request)
        params = _forwardable_query(query)
        body = await read_body(request, self.body_limit, self.body_stall_s)
        # Read strictly (as the provider reads it) whenever a model rule applies: the
        # relay's allowlist or the scoped token's models.
        scoped = ticket.who.scoped
        strict = self.allowlist.active or (scoped is not None and scoped.scope.models is not None)
        models = self._models(request, provider, path_model, params, body, strict)
        model = self._check_models(provider, models)
        hide_usage = False
        if (
            provider.spec.stream_usage_option
            and path.endswith("/chat/completions")
            and b'"stream"' in body
        ):
            with contextlib.suppress(orjson.JSONDecodeError):
                data = orjson.loads(body)
                if isinstance(data, dict) and _ask_for_stream_usage(data):
                    body, hide_usage = orjson.dumps(data), True
        await self.admission.authorize(ticket, provider.name, models)
        return await self._forward(
            request, ticket, Call(provider, path, params, body, model, hide_usage)
        )

    async def unified_route(self, request: web.Request) -> web.StreamResponse:
        """POST /relay {model, ...}: pick the provider from `model`."""
        self._require_credential_shape(request)
        ticket = await self.admission.admit(request)
        body = await read_body(request, self.body_limit, self.body_stall_s)
        try:
            # The model picks the route: read it strictly, whatever ALLOWED_MODELS says.
            model = json_model(body, "model", strict=True) if body else None
            data = orjson.loads(body.removeprefix(b"\xef\xbb\xbf")) if model else None
        except (Unreadable, orjson.JSONDecodeError) as exc:
            raise ApiError(
                400, f"Request body must be a JSON object with a model field: {exc}"
            ) from None
        if model is None or not isinstance(data, dict):
            raise ApiError(
                400,
                'model field is required: use "provider/model-name" (e.g. '
                '"anthropic/claude-3-5-haiku") or a recognised model name (e.g. "gpt-4o"). '
                "See GET /models for the routing table.",
            )
        try:
            route = self.router.resolve(model, data.get("stream") is True)
        except Unroutable as exc:
            raise ApiError(400, str(exc)) from None
        if route is None:
            raise ApiError(
                400,
                f'Cannot route model "{model}": use "provider/model-name" or a recognised '
                f"model name. Supported providers: {self.supported}. See GET /models.",
            )
        provider = route.provider
        path, path_model = self._allowed_path(provider, "POST", route.path)
        # What the provider will read: the model in the path when it carries one.
        self._check_model(provider.name, path_model or route.model)
        rewrite = False
        if path_model is not None:
            for field in provider.spec.unified_drop_fields:
                data.pop(field, None)
            rewrite = True
        elif route.model != model:
            data["model"] = route.model
            rewrite = True
        hide_usage = (
            provider.spec.stream_usage_option
            and path.endswith("/chat/completions")
            and _ask_for_stream_usage(data)
        )
        if rewrite or hide_usage:
            body = orjson.dumps(data)
        await self.admission.authorize(ticket, provider.name, [path_model or route.model])
        return await self._forward(
            request, ticket, Call(provider, path, [], body, route.model, hide_usage)
        )

    # --- admission -----------------------------------------------------------------
    def _provider(self, name: str) -> Provider:
        provider = self.registry.get(name)
        if provider is None:
            raise ApiError(400, self.registry.unknown(name))
        return provider

    def _allowed_path(self, provider: Provider, method: str, raw: str) -> tuple[str, str | None]:
        """Every route ends here: the normalised path if the allowlist permits it, and the
        model it names ({model} in the pattern)."""
        try:
            path = normalize_path(raw)
        except PathRefused as exc:
            raise ApiError(403, str(exc)) from None
        match = provider.matcher.match(method, path)
        if match is None:
            raise ApiError(
                403,
                f'Path "{path}" ({method}) is not permitted for provider '
                f'"{provider.name}": only inference and model-listing endpoints are relayed.'
                + _missing_version_hint(provider, method, path),
            )
        return path, match.model

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

    def _models(
        self,
        request: web.Request,
        provider: Provider,
        path_model: str | None,
        params: list[tuple[str, str]],
        body: bytes,
        strict: bool,
    ) -> list[str]:
        """Every model the provider could read in this request (path, query, body)."""
        spec = provider.spec
        models = [check_model_name(path_model)] if path_model is not None else []
        try:
            if spec.model_query is not None:
                model = query_model(params, spec.model_query, strict)
                if model is not None:
                    models.append(model)
            # aiohttp refuses a request with two Content-Type headers before it gets here.
            content_type = request.headers.get("content-type", "")
            models += body_models(content_type, body, spec.model_field, strict)
        except Unreadable as exc:
            raise ApiError(
                400,
                f"{exc} This relay checks the model of every request (ALLOWED_MODELS or the "
                "scoped token's models), so it must be able to read it unambiguously.",
            ) from None
        return models

    def _check_models(self, provider: Provider, models: list[str]) -> str | None:
        """Refuse any model outside ALLOWED_MODELS; the first one names the request."""
        for model in models:
            self._check_model(provider.name, model)
        return models[0] if models else None

    def _check_model(self, provider: str, model: str | None) -> None:
        if model is not None and not self.allowlist.allows(provider, model):
            raise ApiError(403, f'Model "{model}" is not allowed on this relay (see GET /models).')

    # --- forwarding ----------------------------------------------------------------
    async def _outbound(
        self, request: web.Request, ticket: Ticket, call: Call
    ) -> tuple[aiohttp.ClientSession, str, dict[str, str]]:
        """The session, URL and headers for the upstream request, the user's key in place."""
        provider, path = call.provider, call.path
        try:
            key = await self.vault.get(ticket.who.user_id, provider.name)
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
                extra={"code": "no_key", "provider": provider.name},
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
        session, url = self.upstream.target(provider, path, key.base_url or header_base)
        params = call.params
        for suffix, name, value in provider.spec.default_query:
            if path.endswith(suffix) and not any(k == name for k, _ in params):
                params = [*params, (name, value)]
        headers = {"user-agent": USER_AGENT}
        pass_headers = provider.pass_headers
        for name, value in request.headers.items():
            lname = name.lower()
            if lname in pass_headers:
                headers.setdefault(lname, value)  # the first, as the relay read it
        if call.body and "content-type" not in headers:
            headers["content-type"] = "application/json"
        url += self.upstream.authorize(provider, key.secret, headers, params)
        return session, url, headers

    async def _forward(
        self, request: web.Request, ticket: Ticket, call: Call
    ) -> web.StreamResponse:
        provider = call.provider
        principal = ticket.who
        request["provider"] = provider.name
        request["model"] = call.model
        reservation = ticket.reservation
        try:
            session, url, headers = await self._outbound(request, ticket, call)
        except BaseException:
            if reservation is not None:  # never went upstream: it does not count
                await self.spend.release(reservation)
            raise
        started = time.perf_counter()
        status = 502
        streamed = False
        meter = Meter()
        try:
            try:
                upstream = await self.upstream.send(
                    session, provider, request.method, url, call.body or None, headers
                )
            except ApiError as exc:
                status = exc.status
                raise
            status = upstream.status
            try:
                response, streamed = await self._respond(request, upstream, meter, call)
            finally:
                # Back to the pool when fully read; closed when not (client left, error).
                upstream.release()
            if response.status != status:
                status = response.status
            return response
        finally:
            scoped = principal.scoped
            input_tokens, output_tokens = meter.counts()
            self.usage.record(
                RequestLogRow(
                    user_id=principal.user_id,
                    app_id=principal.app_id,
                    provider=provider.name,
                    model=call.model,
                    status=status,
                    latency_ms=int((time.perf_counter() - started) * 1000),
                    streaming=streamed,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    created_at=int(time.time() * 1000),
                    token_id=scoped.id if scoped is not None else None,
                )
            )
            if reservation is not None:
                await self.spend.settle(reservation, (input_tokens or 0) + (output_tokens or 0))

    async def _respond(
        self, request: web.Request, upstream: aiohttp.ClientResponse, meter: Meter, call: Call
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
            try:
                data = await upstream.read()
            except (TimeoutError, aiohttp.ClientError):
                # Fewer bytes than its Content-Length, or none in time: nothing sent yet.
                raise ApiError(502, "The provider's answer was cut short; try again.") from None
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
        hidden = UsageChunkFilter(meter) if call.hide_usage and is_sse and readable else None
        try:
            async for chunk in upstream.content.iter_any():
                if hidden is not None:
                    # Usage the relay asked for: metered here, never shown to the client.
                    chunk = hidden.feed(chunk)
                    if chunk:
                        await response.write(chunk)
                    continue
                await response.write(chunk)
                if meter_sse is not None:
                    meter_sse(chunk)
            if hidden is not None and (rest := hidden.finish()):
                await response.write(rest)
        except (TimeoutError, aiohttp.ClientError):
            request["stream_error"] = True
            if is_sse:
                await response.write(_STREAM_ERROR_EVENT)
            elif request.transport is not None:
                # A truncated binary body must not look complete: drop the connection.
                request.transport.close()
                return response, True
        # Every byte of the answer is written: count it as complete even if the client,
        # having read the last event, hangs up before the end-of-stream marker.
        meter.complete = True
        await response.write_eof()
        return response, True


def _ask_for_stream_usage(data: dict[str, Any]) -> bool:
    """Add stream_options.include_usage to a streaming chat that did not ask for usage;
    True when added (the relay then removes the extra chunk again)."""
    if data.get("stream") is not True:
        return False
    options = data.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False  # the client asked: it sees the usage chunk, and so does the meter
    if options is not None and not isinstance(options, dict):
        return False  # not ours to repair: the provider answers it
    data["stream_options"] = {**(options or {}), "include_usage": True}
    return True


def _forwardable_query(query: str) -> list[tuple[str, str]]:
    """The query as forwarded (re-encoded from these pairs, so the provider reads exactly
    what the relay read), without anything that looks like a credential."""
    if not query:
        return []
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise ApiError(
            400, f"The query string has more than {MAX_FORM_FIELDS} parameters."
        ) from None
    return [
        (k, v)
        for k, v in pairs
        if k.strip().lower().replace("-", "_") not in _CREDENTIAL_PARAMS
        and not v.startswith(_TOKEN_VALUE_PREFIXES)
    ]
