"""The OpenAPI document, generated from the endpoint declarations and pydantic models.

Field descriptions and examples come from the models (api/schemas.py); what the models
cannot say (parameters, non-JSON answers, example answers of routes that return plain
dicts, error examples, the relay routes) is added here, keyed by route.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from byok_relay import __version__
from byok_relay.api.endpoints import ENDPOINTS, Endpoint
from byok_relay.api.schemas import ErrorResponse, HealthResponse
from byok_relay.auth import MISSING_TOKEN, SCOPED_CANNOT_MANAGE

_REF = "#/components/schemas/{model}"

#: Endpoints with this tag serve files the relay's own pages load (the docs viewer):
#: routes, but not part of the API, so not described.
UNDOCUMENTED_TAG = "assets"

_STATUS_TEXT = {
    400: "Invalid input",
    401: "Missing or invalid credential: relay or scoped token (unknown, expired, revoked), "
    "sign-in JWT that failed verification, or APP_SECRET",
    403: "Not allowed: the message says which rule (scope, path, model, JWT_ONLY)",
    413: "Body too large",
    422: "Provider rejected the key",
    429: "Rate limited",
    502: "Provider unreachable",
    503: "Database (or an identity provider's keys) unavailable",
    504: "Provider timed out",
}

#: One real message per status (the relay's own wording), shown as the error example;
#: _ROUTE_ERRORS and _RELAY_ERRORS say it better where a route has its own reasons.
_ERROR_EXAMPLES = {
    400: "Request body must be valid JSON.",
    401: MISSING_TOKEN,
    403: SCOPED_CANNOT_MANAGE,
    413: "Request body is larger than the limit of 10485760 bytes.",
    422: "The provider rejected the new key (HTTP 401); the old key is kept.",
    429: "Too many requests from this address (100 per minute); retry in 12 s. "
    "The relay's operator sets this limit with RATE_LIMIT_GLOBAL.",
    502: 'Could not reach provider "openai".',
    503: "The relay's database is unavailable; try again shortly.",
    504: 'Provider "openai" did not answer in time.',
}

_APP_SECRET_401 = "Unauthorized: a valid Authorization: Bearer <APP_SECRET> header is required."
_UNKNOWN_PROVIDER = (
    'Unsupported provider "opnai". Did you mean "openai"? Supported: anthropic, google, openai, …'
)
_ROUTE_ERRORS: dict[tuple[str, str], dict[int, Any]] = {
    ("POST", "/users"): {
        400: "app_id is required",
        401: _APP_SECRET_401,
        403: "This relay accepts only your app's sign-in (JWT_ONLY=true): send the signed-in "
        "user's token (a JWT) as the credential instead of registering.",
        429: "Too many registrations from this address (10 per hour); retry in 3384 s. "
        "The relay's operator sets this limit with RATE_LIMIT_REGISTER.",
    },
    ("POST", "/keys/{provider}"): {400: "key must be 10 to 4096 characters long"},
    ("DELETE", "/keys/{provider}"): {400: _UNKNOWN_PROVIDER},
    ("POST", "/keys/{provider}/verify"): {400: _UNKNOWN_PROVIDER},
    ("POST", "/tokens"): {
        400: '"app.example" is not an origin: send scheme://host[:port] exactly as the '
        'browser sends it, e.g. "https://app.example"'
    },
    ("PUT", "/budget"): {
        400: "Set at least one cap: requests, tokens or providers (DELETE /budget removes it)."
    },
    ("GET", "/stats/{app_id}"): {
        401: _APP_SECRET_401,
        503: "This endpoint needs APP_SECRET to be configured on the relay.",
    },
    ("GET", "/metrics"): {401: "GET /metrics needs Authorization: Bearer <METRICS_TOKEN>."},
}
_RELAY_ERRORS = {
    403: 'Path "/v1/files" (POST) is not permitted for provider "openai": only inference and '
    "model-listing endpoints are relayed.",
}

_SECURITY_SCHEMES = {
    "relayToken": {
        "type": "apiKey",
        "in": "header",
        "name": "x-relay-token",
        "description": "The relay token from POST /users (or a scoped token from POST /tokens).",
    },
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A relay token, a scoped token, or the app's own sign-in JWT when the "
        "relay trusts its issuer (JWT_ISSUERS_FILE, docs/identity.md). On POST /users and "
        "GET /stats/{app_id}: the relay's APP_SECRET.",
    },
}

_DESCRIPTION = """\
Relay browser AI requests to providers with each user's own key.

1. `POST /users` with your `app_id` returns a **relay token**. Send it on every other
   call as `x-relay-token: <token>` (or `Authorization: Bearer <token>`).
2. `POST /keys/{provider}` stores the user's own provider key, encrypted; it is never
   returned.
3. Call the provider through `/relay/{provider}/{path}` with the provider's own request
   body (the official SDKs work with the relay as their base URL), or `POST /relay`
   with `"model": "provider/model"`.
4. For a browser page, mint a **scoped token** (`POST /tokens`): limited providers,
   models, origins, lifetime and budget.

Every error is JSON `{"error": "..."}`, a sentence that says what to do. Times are
milliseconds since the epoch.
"""

#: Tags in reading order, with what they group.
_TAGS = [
    ("users", "Register a user (get a relay token) and erase one."),
    ("keys", "The user's provider keys: stored encrypted, never returned."),
    ("relay", "Calls to the providers, made with the user's stored key."),
    ("tokens", "Rotate or revoke the relay token; scoped tokens for browser pages."),
    ("budget", "Spend caps per hour, day or month."),
    ("stats", "Usage from the request log."),
    ("meta", "Health, version, the routing table, this description and its pages."),
    ("clients", "The browser client, the demo page and the coding-agent skill."),
]

_PATH_PARAMS = {
    "provider": ("A provider name, as listed by GET /models.", "openai"),
    "path": (
        "The provider's own path after its base URL, slashes included (e.g. v1/chat/completions).",
        "v1/chat/completions",
    ),
    "app_id": ("The app_id users registered with.", "my-app"),
    "id": ("The scoped token's id (from POST /tokens or GET /tokens).", "st_f6f80479fbfa4044ada7"),
}

_QUERY_PARAMS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/health"): [
        {
            "name": "deep",
            "in": "query",
            "required": False,
            "description": "1 (or true, yes): also check the database and the key custody.",
            "schema": {"type": "string", "enum": ["1", "true", "yes"]},
            "example": "1",
        }
    ],
}

#: Answers that are not JSON, by route: (media type, example or None).
_MEDIA: dict[tuple[str, str], tuple[str, str | None]] = {
    ("GET", "/"): ("text/html", None),
    ("GET", "/docs"): ("text/html", None),
    ("GET", "/demo"): ("text/html", None),
    ("GET", "/client.js"): ("text/javascript", "export class RelayClient { … }"),
    ("GET", "/metrics"): (
        "text/plain",
        'byok_relay_requests_total{route="/relay",method="POST",status="200"} 42.0',
    ),
    ("GET", "/skill"): ("text/markdown", "---\nname: byok-relay\ndescription: …\n---\n"),
    ("GET", "/llms.txt"): ("text/plain", "# byok-relay\n…"),
}

_T0, _T1 = 1767225600000, 1767312000000
_STATS = {
    "total": 128,
    "last_7d": 40,
    "last_30d": 128,
    "error_count": 3,
    "error_rate": 0.0234,
    "providers": {"openai": {"total": 100, "errors": 2}, "anthropic": {"total": 28, "errors": 1}},
    "top_models": [
        {"model": "gpt-4o-mini", "total": 90, "input_tokens": 36000, "output_tokens": 14400}
    ],
    "total_input_tokens": 51200,
    "total_output_tokens": 20480,
    "last_request": _T0,
}
_BUDGET = {
    "window": "day",
    "requests": 1000,
    "tokens": 200000,
    "providers": {"openai": {"tokens": 100000}},
}

#: Example answers of routes whose handlers return a plain dict (no response model), or
#: a model with more fields than it declares.
_OK_EXAMPLES: dict[tuple[str, str], Any] = {
    ("GET", "/models"): {
        "providers": ["anthropic", "google", "openai", "openai-compatible"],
        "providerPrefixes": ["anthropic", "openai", "google", "openai-compatible"],
        "patterns": [
            {"pattern": "claude-*", "provider": "anthropic", "path": None},
            {"pattern": "gpt-*", "provider": "openai", "path": None},
            {"pattern": "gemini-*", "provider": "google", "path": None},
        ],
        "allowed_models": None,
        "usage": 'POST /relay with { model: "provider/model-name", ...providerBody }',
        "examples": ['{ "model": "gpt-4o", "messages": [{"role":"user","content":"Hello"}] }'],
    },
    ("GET", "/openapi.json"): {"openapi": "3.1.0", "info": {"title": "byok-relay"}, "paths": {}},
    ("GET", "/stats"): _STATS,
    ("GET", "/stats/{app_id}"): {"app_id": "my-app", **_STATS, "user_count": 12},
    ("GET", "/budget"): {
        "budget": _BUDGET,
        "usage": {
            "window_start": _T0,
            "window_end": _T1,
            "requests": 17,
            "input_tokens": 5120,
            "output_tokens": 2048,
            "providers": {"openai": {"requests": 17, "input_tokens": 5120, "output_tokens": 2048}},
        },
    },
    ("DELETE", "/users"): {"ok": True, "deleted": True},
    ("POST", "/tokens/revoke"): {"ok": True, "revoked": True},
}

#: Request bodies worth more than one example (the first is what a viewer shows).
_BODY_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/keys/{provider}"): {
        "key": {"summary": "Any provider", "value": {"key": "sk-proj-your-own-openai-key"}},
        "openai-compatible": {
            "summary": "openai-compatible: your own upstream",
            "value": {"key": "sk-your-own-upstream-key", "base_url": "https://llm.example.com/v1"},
        },
    },
}

#: Routes whose success is not 200.
_OK_STATUS = {("POST", "/tokens"): "201"}

_CHAT_ANSWER = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}
_SSE_ANSWER = (
    'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"content":"!"}}]}\n\n'
    "data: [DONE]\n\n"
)
_HELLO = [{"role": "user", "content": "Hello"}]
_RELAY_EXAMPLES = {
    "openai": {
        "summary": "OpenAI (or any OpenAI-compatible provider)",
        "value": {"model": "openai/gpt-4o-mini", "messages": _HELLO, "stream": True},
    },
    "anthropic": {
        "summary": "Anthropic",
        "value": {"model": "anthropic/claude-3-5-haiku", "max_tokens": 256, "messages": _HELLO},
    },
    "google": {
        "summary": "Google Gemini",
        "value": {"model": "google/gemini-2.0-flash", "contents": [{"parts": [{"text": "Hello"}]}]},
    },
    "bare": {
        "summary": "A bare model name, routed by GET /models patterns",
        "value": {"model": "gpt-4o", "messages": _HELLO},
    },
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _error(
    status: int, components: dict[str, Any], own: dict[int, Any] | None = None
) -> dict[str, Any]:
    message = (own or {}).get(status, _ERROR_EXAMPLES.get(status))
    media: dict[str, Any] = {"schema": _schema(ErrorResponse, components)}
    if message is not None:
        media["example"] = {"error": message}
    return {
        "description": _STATUS_TEXT.get(status, "Error"),
        "content": {"application/json": media},
    }


def _health_503(components: dict[str, Any]) -> dict[str, Any]:
    """A failed deep check answers the health shape itself, with ok=false."""
    example = {
        "ok": False,
        "version": __version__,
        "providers": ["anthropic", "google", "openai"],
        "checks": {
            "database": "unavailable (ConnectionRefusedError)",
            "rate_limits": "memory",
            "key_custody": "local ok",
        },
    }
    schema = _schema(HealthResponse, components)
    return {
        "description": "A deep check failed (same shape, ok=false)",
        "content": {"application/json": {"schema": schema, "example": example}},
    }


def _path_params(path: str) -> list[dict[str, Any]]:
    params = []
    for seg in path.split("/"):
        if seg.startswith("{"):
            name = seg[1:-1]
            param: dict[str, Any] = {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            }
            if name in _PATH_PARAMS:
                param["description"], param["example"] = _PATH_PARAMS[name]
            params.append(param)
    return params


def _relay_paths(components: dict[str, Any]) -> dict[str, Any]:
    errors = {
        str(s): _error(s, components, _RELAY_ERRORS) for s in (400, 401, 403, 413, 429, 502, 504)
    }
    any_body = {
        "description": "The provider's own request body, as its API documents it.",
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "additionalProperties": True},
                "example": {"model": "gpt-4o-mini", "messages": _HELLO},
            },
            "*/*": {"schema": {}},
        },
    }
    answer = {
        "description": "The provider's answer, passed through (JSON, SSE or binary)",
        "content": {
            "application/json": {"schema": {}, "example": _CHAT_ANSWER},
            "text/event-stream": {"schema": {"type": "string"}, "example": _SSE_ANSWER},
        },
    }
    op = {
        "tags": ["relay"],
        "security": [{"relayToken": []}, {"bearer": []}],
        "responses": {"200": answer, **errors},
    }
    path_params = _path_params("/relay/{provider}/{path}")
    return {
        "/relay": {
            "post": {
                **op,
                "operationId": "relay_unified",
                "summary": "Unified route: the provider is chosen from `model`",
                "description": "`model` is `provider/model-name` (the prefix is removed "
                "before the call) or a bare name matched by the patterns of GET /models. "
                "The rest of the body is the provider's own format; `stream: true` answers "
                "Server-Sent Events.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model"],
                                "properties": {
                                    "model": {
                                        "type": "string",
                                        "description": "provider/model-name, or a bare "
                                        "model name routed by GET /models.",
                                        "examples": ["openai/gpt-4o-mini"],
                                    }
                                },
                                "additionalProperties": True,
                            },
                            "examples": _RELAY_EXAMPLES,
                        }
                    },
                },
            }
        },
        "/relay/{provider}/{path}": {
            "post": {
                **op,
                "operationId": "relay_provider_post",
                "summary": "Forward to an allow-listed provider path",
                "description": "Use the relay as the SDK's base URL: "
                "`<relay>/relay/openai/v1` for OpenAI, `<relay>/relay/anthropic` for "
                "Anthropic. The user's stored key replaces the credential. (A viewer's "
                '"Try it out" sends the slashes of `path` encoded, which the relay refuses: '
                "use POST /relay, an SDK or curl.)",
                "parameters": path_params,
                "requestBody": any_body,
            },
            "get": {
                **op,
                "operationId": "relay_provider_get",
                "summary": "Forward a model-listing request",
                "parameters": [
                    {**path_params[0]},
                    {**path_params[1], "example": "v1/models"},
                ],
            },
        },
    }


def _success(ep: Endpoint, components: dict[str, Any]) -> dict[str, Any]:
    key = (ep.method, ep.path)
    ok: dict[str, Any] = {"description": "OK"}
    if key in _MEDIA:
        media_type, example = _MEDIA[key]
        media: dict[str, Any] = {"schema": {"type": "string"}}
        if example is not None:
            media["example"] = example
        ok["content"] = {media_type: media}
    elif ep.response is not None or key in _OK_EXAMPLES:
        media = {"schema": _schema(ep.response, components) if ep.response else {}}
        if key in _OK_EXAMPLES:
            media["example"] = _OK_EXAMPLES[key]
        ok["content"] = {"application/json": media}
    return ok


def _tags(used: list[str]) -> list[dict[str, str]]:
    known = [{"name": n, "description": d} for n, d in _TAGS if n in used]
    return known + [{"name": n} for n in dict.fromkeys(used) if n not in dict(_TAGS)]


def build_openapi() -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    used_tags: list[str] = []
    documented = [ep for ep in ENDPOINTS if ep.tag != UNDOCUMENTED_TAG]
    names = [ep.handler.__name__ for ep in documented]
    for ep in documented:
        used_tags.append(ep.tag)
        op: dict[str, Any] = {
            # The handler's name (deep links: /docs#/keys/store_key), when it is unique.
            "operationId": ep.handler.__name__
            if names.count(ep.handler.__name__) == 1
            else f"{ep.method.lower()}_{ep.path}",
            "summary": ep.summary,
            "tags": [ep.tag],
            "responses": {},
        }
        if ep.description:
            op["description"] = ep.description
        if ep.auth == "token":
            op["security"] = [{"relayToken": []}, {"bearer": []}]
        elif ep.auth.startswith("app_secret"):
            op["security"] = [{"bearer": []}]
        params = _path_params(ep.path) + _QUERY_PARAMS.get((ep.method, ep.path), [])
        if params:
            op["parameters"] = params
        if ep.body is not None:
            body: dict[str, Any] = {"schema": _schema(ep.body, components)}
            if (ep.method, ep.path) in _BODY_EXAMPLES:
                body["examples"] = _BODY_EXAMPLES[(ep.method, ep.path)]
            op["requestBody"] = {"required": True, "content": {"application/json": body}}
        status = _OK_STATUS.get((ep.method, ep.path), "200")
        op["responses"][status] = _success(ep, components)
        own = _ROUTE_ERRORS.get((ep.method, ep.path))
        for code in ep.errors:
            if (ep.method, ep.path, code) == ("GET", "/health", 503):
                op["responses"]["503"] = _health_503(components)
            else:
                op["responses"][str(code)] = _error(code, components, own)
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    paths.update(_relay_paths(components))
    used_tags.append("relay")
    return {
        "openapi": "3.1.0",
        "info": {"title": "byok-relay", "version": __version__, "description": _DESCRIPTION},
        "tags": _tags(used_tags),
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }
