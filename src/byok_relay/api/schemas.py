"""Request and response bodies of the management API (also the OpenAPI source)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

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
    token: str = Field(description="The relay token; keep it like a password.")
    expires_at: int | None = Field(description="Expiry in ms since the epoch, or null.")


def _check_key(v: str) -> str:
    if not KEY_MIN <= len(v) <= KEY_MAX:
        raise ValueError(f"must be {KEY_MIN} to {KEY_MAX} characters long")
    if any(c.isspace() or _is_control(c) for c in v):
        raise ValueError("must not contain whitespace or control characters")
    return v


class StoreKeyRequest(_Body):
    key: StrictStr = Field(
        description="The provider API key (10 to 4096 characters).", json_schema_extra=_KEY_SCHEMA
    )
    base_url: StrictStr | None = Field(
        None, description="Upstream base URL, only for providers that take one."
    )

    _key = field_validator("key")(classmethod(lambda cls, v: _check_key(v)))


class RotateKeyRequest(_Body):
    key: StrictStr = Field(description="The new provider API key.", json_schema_extra=_KEY_SCHEMA)

    _key = field_validator("key")(classmethod(lambda cls, v: _check_key(v)))


class OkResponse(BaseModel):
    ok: bool


class StoreKeyResponse(OkResponse):
    provider: str


class DeleteResponse(OkResponse):
    deleted: bool


class KeyEntry(BaseModel):
    provider: str
    hint: str = Field(description="Last 4 characters of the key.")
    base_url: str | None = None
    created_at: int
    updated_at: int
    last_used_at: int | None


class KeyListResponse(BaseModel):
    providers: list[str]
    keys: list[KeyEntry]


class ErrorResponse(BaseModel):
    error: str


class HealthResponse(BaseModel):
    ok: bool
    version: str
    providers: list[str]
    checks: dict[str, str] | None = None


class VersionResponse(BaseModel):
    version: str
    commit: str
    build_time: str


class VerifyKeyResponse(BaseModel):
    ok: bool = Field(description="True when the provider accepted the stored key.")
    status: int = Field(description="The provider's HTTP status for the check.")


class RotateKeyResponse(BaseModel):
    ok: bool
    provider: str
    rotated: bool
