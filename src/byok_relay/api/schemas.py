"""Request and response bodies of the management API (also the OpenAPI source)."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

APP_ID_MAX = 128
KEY_MIN, KEY_MAX = 10, 4096


# Limits shown in the OpenAPI schema; the validators below enforce them with clear messages.
_KEY_SCHEMA: dict[str, Any] = {"minLength": KEY_MIN, "maxLength": KEY_MAX, "pattern": r"^\S+$"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


def _is_control(c: str) -> bool:
    return ord(c) < 32 or 127 <= ord(c) < 160


class RegisterRequest(_Body):
    app_id: StrictStr = Field(
        description="Your application's id (non-empty, at most 128 characters).",
        examples=["my-app"],
        json_schema_extra={"minLength": 1, "maxLength": APP_ID_MAX},
    )

    @field_validator("app_id")
    @classmethod
    def _app_id(cls, v: str) -> str:
        if not v.strip() or len(v) > APP_ID_MAX:
            raise ValueError(f"must be a non-empty string of at most {APP_ID_MAX} characters")
        if any(_is_control(c) for c in v):
            # NUL cannot even be stored in PostgreSQL text; none belongs in an app id.
            raise ValueError("must not contain control characters")
        return v


class TokenResponse(BaseModel):
    token: str = Field(
        description="The relay token; keep it like a password.",
        examples=["byok_rt_EXAMPLE-not-a-real-token-000000000000"],
    )
    expires_at: int | None = Field(
        description="Expiry in ms since the epoch, or null.", examples=[1767225600000]
    )


def _check_key(v: str) -> str:
    if not KEY_MIN <= len(v) <= KEY_MAX:
        raise ValueError(f"must be {KEY_MIN} to {KEY_MAX} characters long")
    if any(c.isspace() or _is_control(c) for c in v):
        raise ValueError("must not contain whitespace or control characters")
    return v


class StoreKeyRequest(_Body):
    key: StrictStr = Field(
        description="The provider API key (10 to 4096 characters).",
        examples=["sk-proj-your-own-openai-key"],
        json_schema_extra=_KEY_SCHEMA,
    )
    base_url: StrictStr | None = Field(
        None,
        description="Upstream base URL, only for providers that take one.",
        examples=["https://llm.example.com/v1"],
    )

    _key = field_validator("key")(classmethod(lambda cls, v: _check_key(v)))


class RotateKeyRequest(_Body):
    key: StrictStr = Field(
        description="The new provider API key.",
        examples=["sk-proj-your-new-openai-key"],
        json_schema_extra=_KEY_SCHEMA,
    )

    _key = field_validator("key")(classmethod(lambda cls, v: _check_key(v)))


# Times in examples: ms since the epoch (2026-01-01T00:00:00Z and a little later).
_T0, _T1 = 1767225600000, 1767229200000


class OkResponse(BaseModel):
    ok: bool = Field(examples=[True])


class StoreKeyResponse(OkResponse):
    provider: str = Field(examples=["openai"])


class DeleteResponse(OkResponse):
    deleted: bool = Field(examples=[True])


class KeyEntry(BaseModel):
    provider: str = Field(examples=["openai"])
    hint: str = Field(description="Last 4 characters of the key.", examples=["x9Qa"])
    base_url: str | None = Field(None, examples=[None])
    created_at: int = Field(examples=[_T0])
    updated_at: int = Field(examples=[_T0])
    last_used_at: int | None = Field(examples=[_T1])


class KeyListResponse(BaseModel):
    providers: list[str] = Field(examples=[["anthropic", "openai"]])
    keys: list[KeyEntry]


class ErrorResponse(BaseModel):
    error: str = Field(
        description="What went wrong and what to do about it, in one sentence.",
        examples=["Missing relay token: send it in the x-relay-token header."],
    )


class HealthResponse(BaseModel):
    ok: bool = Field(examples=[True])
    version: str = Field(examples=["0.1.0"])
    providers: list[str] = Field(examples=[["anthropic", "google", "openai"]])
    checks: dict[str, str] | None = Field(
        None,
        description="Only with ?deep=1.",
        examples=[{"database": "ok", "rate_limits": "memory", "key_custody": "local ok"}],
    )


class VersionResponse(BaseModel):
    version: str = Field(examples=["0.1.0"])
    commit: str = Field(examples=["26ad6b4"])
    build_time: str = Field(examples=["2026-01-01T00:00:00Z"])


class VerifyKeyResponse(BaseModel):
    ok: bool = Field(description="True when the provider accepted the stored key.", examples=[True])
    status: int = Field(description="The provider's HTTP status for the check.", examples=[200])


class RotateKeyResponse(BaseModel):
    ok: bool = Field(examples=[True])
    provider: str = Field(examples=["openai"])
    rotated: bool = Field(examples=[True])


# --- spend control (SPEC §9) ---------------------------------------------------------
LABEL_MAX = 128
_LIST_MAX = 64


class _StrictBody(BaseModel):
    """New bodies refuse unknown fields: a typo must not silently mean "no limit"."""

    model_config = ConfigDict(extra="forbid")


def _non_empty(v: list[str] | None, what: str) -> list[str] | None:
    if v is None:
        return None
    if not v:
        raise ValueError(f"must list at least one {what} (omit the field for no restriction)")
    if len(v) > _LIST_MAX:
        raise ValueError(f"may list at most {_LIST_MAX} entries")
    for item in v:
        if not item.strip() or len(item) > 256 or any(_is_control(c) for c in item):
            raise ValueError(f"entries must be non-empty {what}s of at most 256 characters")
    return v


def _check_origin(origin: str) -> str:
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(
            f'"{origin}" is not an origin: send scheme://host[:port] exactly as the '
            'browser sends it, e.g. "https://app.example"'
        )
    return origin.rstrip("/")


class TokenBudget(_StrictBody):
    requests: StrictInt | None = Field(
        None, ge=0, description="Relayed requests, ever.", examples=[50]
    )
    tokens: StrictInt | None = Field(
        None, ge=0, description="Input + output tokens, ever.", examples=[100000]
    )


class ScopedTokenRequest(_StrictBody):
    label: StrictStr | None = Field(
        None, description="Your name for it (at most 128 chars).", examples=["checkout page"]
    )
    providers: list[StrictStr] | None = Field(
        None, description="Provider names it may use.", examples=[["openai"]]
    )
    models: list[StrictStr] | None = Field(
        None,
        description='Model globs it may use ("gpt-4o*"), matched case-insensitively.',
        examples=[["gpt-4o*"]],
    )
    origins: list[StrictStr] | None = Field(
        None, description='Exact origins ("https://app.example"); a request without Origin '
        "is refused.", examples=[["https://app.example"]],
    )  # fmt: skip
    ips: list[StrictStr] | None = Field(
        None,
        description='CIDRs the client address must fall in ("203.0.113.0/24").',
        examples=[["203.0.113.0/24"]],
    )
    ttl_s: StrictInt = Field(
        3600, description="Lifetime in seconds (SCOPED_TOKEN_MAX_TTL_S).", examples=[900]
    )
    budget: TokenBudget | None = Field(
        None, description="Caps over the token's whole life.", examples=[{"requests": 50}]
    )

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > LABEL_MAX or any(_is_control(c) for c in v)):
            raise ValueError(f"must be at most {LABEL_MAX} characters, no control characters")
        return v

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: list[str] | None) -> list[str] | None:
        return _non_empty(v, "provider name")

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str] | None) -> list[str] | None:
        return _non_empty(v, "model pattern")

    @field_validator("origins")
    @classmethod
    def _origins(cls, v: list[str] | None) -> list[str] | None:
        v = _non_empty(v, "origin")
        return [_check_origin(o) for o in v] if v is not None else None

    @field_validator("ips")
    @classmethod
    def _ips(cls, v: list[str] | None) -> list[str] | None:
        v = _non_empty(v, "CIDR")
        if v is None:
            return None
        out = []
        for cidr in v:
            try:
                out.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
            except ValueError:
                raise ValueError(
                    f'"{cidr}" is not a CIDR: send an address or network such as '
                    '"203.0.113.7" or "203.0.113.0/24" (IPv4 prefix at most /32, IPv6 /128)'
                ) from None
        return out


_SCOPE_EXAMPLE = {
    "providers": ["openai"],
    "models": ["gpt-4o*"],
    "origins": ["https://app.example"],
    "budget": {"requests": 50},
}


class ScopedTokenUsage(BaseModel):
    requests: int = Field(examples=[3])
    input_tokens: int = Field(examples=[412])
    output_tokens: int = Field(examples=[1290])


class ScopedTokenResponse(BaseModel):
    token: str = Field(
        description="The scoped token (byok_st_…); shown only once.",
        examples=["byok_st_EXAMPLE-not-a-real-token-000000000000"],
    )
    id: str = Field(examples=["st_f6f80479fbfa4044ada7"])
    label: str | None = Field(examples=["checkout page"])
    scope: dict[str, Any] = Field(
        description="The restrictions, as minted (absent kinds are unrestricted).",
        examples=[_SCOPE_EXAMPLE],
    )
    expires_at: int = Field(examples=[_T1])


class ScopedTokenEntry(BaseModel):
    id: str = Field(examples=["st_f6f80479fbfa4044ada7"])
    label: str | None = Field(examples=["checkout page"])
    scope: dict[str, Any] = Field(examples=[_SCOPE_EXAMPLE])
    created_at: int = Field(examples=[_T0])
    expires_at: int = Field(examples=[_T1])
    last_used_at: int | None = Field(examples=[_T0 + 60000])
    usage: ScopedTokenUsage


class ScopedTokenList(BaseModel):
    tokens: list[ScopedTokenEntry]


class BudgetCaps(_StrictBody):
    requests: StrictInt | None = Field(
        None, ge=0, description="Requests in the window.", examples=[500]
    )
    tokens: StrictInt | None = Field(
        None, ge=0, description="Input + output tokens.", examples=[100000]
    )


class BudgetRequest(_StrictBody):
    window: Literal["hour", "day", "month"] = Field(
        description="UTC calendar period.", examples=["day"]
    )
    requests: StrictInt | None = Field(
        None, ge=0, description="Relayed requests per window.", examples=[1000]
    )
    tokens: StrictInt | None = Field(
        None, ge=0, description="Input + output tokens per window.", examples=[200000]
    )
    providers: dict[str, BudgetCaps] | None = Field(
        None,
        description="Caps per provider inside the same window.",
        examples=[{"openai": {"tokens": 100000}}],
    )


class BudgetResponse(BaseModel):
    budget: dict[str, Any] = Field(
        description="The budget as stored.",
        examples=[
            {
                "window": "day",
                "requests": 1000,
                "tokens": 200000,
                "providers": {"openai": {"tokens": 100000}},
            }
        ],
    )
