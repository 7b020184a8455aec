"""The OpenAPI document, generated from the endpoint declarations and pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from byok_relay import __version__
from byok_relay.api.endpoints import ENDPOINTS
from byok_relay.api.schemas import ErrorResponse

_REF = "#/components/schemas/{model}"

_STATUS_TEXT = {
    400: "Invalid input",
    401: "Missing, unknown, expired or revoked token, or a sign-in JWT that failed verification",
    403: "Path or model not allowed",
    413: "Body too large",
    422: "Provider rejected the key",
    429: "Rate limited",
    502: "Provider unreachable",
    503: "Database (or an identity provider's keys) unavailable",
    504: "Provider timed out",
}

_SECURITY_SCHEMES = {
    "relayToken": {"type": "apiKey", "in": "header", "name": "x-relay-token"},
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A relay token, a scoped token, or the app's own sign-in JWT when the "
        "relay trusts its issuer (JWT_ISSUERS_FILE, docs/identity.md).",
    },
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _error(status: int, components: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": _STATUS_TEXT.get(status, "Error"),
        "content": {"application/json": {"schema": _schema(ErrorResponse, components)}},
    }


def _relay_paths(components: dict[str, Any]) -> dict[str, Any]:
    errors = {str(s): _error(s, components) for s in (400, 401, 403, 413, 429, 502, 504)}
    any_body = {"content": {"*/*": {"schema": {}}}, "required": False}
    answer = {"description": "The provider's answer, passed through (JSON, SSE or binary)"}
    op = {
        "tags": ["relay"],
        "security": [{"relayToken": []}, {"bearer": []}],
        "responses": {"200": answer, **errors},
    }
    path_params = [
        {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    return {
        "/relay": {
            "post": {
                **op,
                "summary": "Unified route: the provider is chosen from `model`",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model"],
                                "properties": {"model": {"type": "string"}},
                                "additionalProperties": True,
                            }
                        }
                    },
                },
            }
        },
        "/relay/{provider}/{path}": {
            "post": {
                **op,
                "summary": "Forward to an allow-listed provider path",
                "parameters": path_params,
                "requestBody": any_body,
            },
            "get": {
                **op,
                "summary": "Forward a model-listing request",
                "parameters": path_params,
            },
        },
    }


def build_openapi() -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {
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
        params = [
            {"name": seg[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for seg in ep.path.split("/")
            if seg.startswith("{")
        ]
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(ep.body, components)}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if ep.response is not None:
            ok["content"] = {"application/json": {"schema": _schema(ep.response, components)}}
        op["responses"]["200"] = ok
        for status in ep.errors:
            op["responses"][str(status)] = _error(status, components)
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    paths.update(_relay_paths(components))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "byok-relay",
            "version": __version__,
            "description": "Relay browser AI requests to providers with each user's own key.",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }
